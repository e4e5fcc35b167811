"""Which HTTP/3 requests arrived in 0-RTT early data, told to the app in the ASGI scope.

Neither Hypercorn nor aioquic tells the app. What aioquic does give is its events, in the order it
processed the packets: until the client's Finished (reported as `HandshakeCompleted`), the only stream
data a server can receive is 0-RTT. So a request whose HEADERS frame arrived before
`HandshakeCompleted` was sent in early data, which anyone who captured the client's first flight can
replay. A request completed after it comes from a client that proved it holds the connection's keys:
a replayed first flight never gets that far.

`EarlyDataH3` makes the requests of the first kind reach the app with
`scope["extensions"][EARLY_DATA]` set; the dispatch answers `425 Too Early` to their unsafe methods,
and the proxy forwards the others with `Early-Data: 1`.
"""

from __future__ import annotations

from aioquic.h3.connection import ErrorCode
from aioquic.quic.events import HandshakeCompleted, QuicEvent
from hypercorn.protocol.h3 import H3Protocol

from ...dispatch.exchange import EARLY_DATA


class EarlyDataH3(H3Protocol):
    """Hypercorn's HTTP/3 protocol for one connection, marking the requests that came before the handshake.

    Hypercorn gives each new request stream the protocol's `app`; until the handshake completes,
    that is a wrapper that flags the request's scope as early data.

    Also, body data for a stream already answered (a 413 before the upload ended) or never taken
    (during shutdown) is dropped, and the client asked to stop sending it (STOP_SENDING with
    H3_NO_ERROR, RFC 9114 section 4.1.1), where Hypercorn looked the stream up, failed and logged
    a traceback for each such datagram.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._after_handshake = self.app
        self.app = _MarkEarly(self.app)
        self.streams = _Streams(self.connection._quic)

    async def handle(self, quic_event: QuicEvent) -> None:
        if isinstance(quic_event, HandshakeCompleted):
            self.app = self._after_handshake
        await super().handle(quic_event)


class _MarkEarly:
    """An app in Hypercorn's calling convention (`scope, receive, send, sync_spawn, call_soon`)."""

    __slots__ = ("app",)

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, *rest) -> None:
        scope["extensions"][EARLY_DATA] = True
        await self.app(scope, *rest)


class _Streams(dict):
    """Hypercorn's streams by id; a stream it no longer (or never) had takes its events as `_gone`."""

    def __init__(self, quic) -> None:
        super().__init__()
        self.quic = quic
        self.stopped: set[int] = set()  # streams already asked to stop sending

    def __missing__(self, stream_id: int) -> _Gone:
        return _Gone(self, stream_id)


class _Gone:
    """What takes the events of a stream that has no request any more: a STOP_SENDING, once."""

    __slots__ = ("streams", "stream_id")

    def __init__(self, streams: _Streams, stream_id: int) -> None:
        self.streams, self.stream_id = streams, stream_id

    async def handle(self, event) -> None:
        stopped = self.streams.stopped
        if self.stream_id not in stopped:
            stopped.add(self.stream_id)
            try:
                self.streams.quic.stop_stream(self.stream_id, ErrorCode.H3_NO_ERROR)
            except ValueError:  # not a stream the client sends on, or one aioquic has forgotten
                pass
