"""Connection ids that name the worker holding the connection, for the kernel to steer by (steering.py).

aioquic draws every connection id a server issues from `os.urandom`, with no setting for it: the first
one in `QuicConnection.__init__`, the later ones (sent in NEW_CONNECTION_ID frames) in
`_replenish_connection_ids`. `WorkerConnection` overwrites the start of each with the worker's prefix
(its index, one byte) as soon as it is drawn, before it is ever sent; the rest stays aioquic's random
bytes (7 of the 8). The index is in the clear, as in QUIC-LB's plaintext scheme: an observer can tell
which worker holds a connection, which links a client's ids across a change of address only as far
as one value in `server.workers` goes.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection


class WorkerConnection(QuicConnection):
    """A server's QuicConnection whose connection ids start with `cid_prefix` (none: aioquic's own ids)."""

    def __init__(self, *, cid_prefix: bytes, **kwargs):
        self._cid_prefix = cid_prefix
        super().__init__(**kwargs)
        first = self._host_cids[0]
        first.cid = self.host_cid = self._local_initial_source_connection_id = self._marked(first.cid)

    def _replenish_connection_ids(self) -> None:
        drawn = len(self._host_cids)
        super()._replenish_connection_ids()
        for connection_id in self._host_cids[drawn:]:
            connection_id.cid = self._marked(connection_id.cid)

    def _marked(self, cid: bytes) -> bytes:
        return self._cid_prefix + cid[len(self._cid_prefix) :]
