"""HTTP/3 listeners (`server.quic`): QUIC on UDP, on our event loop, beside the TCP engine.

Hypercorn can serve QUIC alone (`serve()` with only `quic_bind` set), but its `QuicProtocol` creates
every aioquic `QuicConnection` without session-ticket callbacks, so it never resumes a session nor
accepts 0-RTT, and creates every `H3Protocol` itself, both in the middle of the two methods that make
up the class (a subclass would copy them whole, and `UDPServer.run` hard-codes the class anyway). So
this module does that class's small job itself (route each datagram to its connection by connection
id, run each connection's timer, hand its events to HTTP/3) with the host store's tickets and
`EarlyDataH3` wired in. Hypercorn still turns HTTP/3 into ASGI calls of the one `GatewayApp` that
the TCP engine serves too.

With several workers, the connection ids a worker issues start with its index, and the kernel steers
each datagram to the worker its id names (`steering.py`), so that a restarted worker does not take
over the others' connections.

aioquic has no `max_early_data` setting: a server that issues tickets accepts 0-RTT with them (the
ticket's `max_early_data_size` is the 0xffffffff that QUIC requires). So `early_data: off` issues no
tickets, and `safe_methods` relies on the dispatch to refuse what must not run from early data.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from dataclasses import dataclass
from functools import partial

from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    ProtocolNegotiated,
)
from aioquic.quic.packet import (
    PACKET_TYPE_INITIAL,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.worker_context import WorkerContext

from ...config.model import QuicConfig, ServerConfig
from ...dispatch import exchange
from ...store import HostStore
from ..hypercorn_engine import GatewayConfig
from ..sockets import bind
from . import eager
from .cids import WorkerConnection
from .early_data import EarlyDataH3
from .steering import Steering
from .tickets import TicketStore
from .udp import enlarge_buffers

log = logging.getLogger("gatewayd.quic")

BACKLOG_DATAGRAMS = 256  # per connection, waiting while its events' handler waits; beyond that they are dropped, as UDP may be
SMALLEST_INITIAL = 1200  # bytes: a client's first datagram is padded to at least this (RFC 9000 section 14.1)
DRAIN_POLL_S = 0.05


def alt_svc(quic: QuicConfig) -> bytes:
    """The `Alt-Svc` value advertising these listeners: `h3=":8443"; ma=86400`."""
    ports = dict.fromkeys(listen.port for listen in quic.listen)
    return ", ".join(f'h3=":{port}"; ma={int(quic.alt_svc_max_age)}' for port in ports).encode()


async def serve(
    app, store: HostStore, server: ServerConfig, stop: asyncio.Event, steering: Steering | None = None
) -> None:  # fmt: skip
    """Serve HTTP/3 on `server.quic.listen` until `stop` is set; then refuse new connections and
    requests, wait up to `server.shutdown_timeout` for the requests in flight, and close every connection.
    `store` keeps the session tickets: the host store, or Redis for gateways that share them
    (`gatewayd.cluster.tickets.SharedTickets`, which has the `put` and `take` that tickets use).
    `steering`: a supervisor's worker's, to steer datagrams by connection id."""
    quic, shutdown_timeout = server.quic, server.shutdown_timeout
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every connection at INFO
    loop = asyncio.get_running_loop()
    quic_config = QuicConfiguration(alpn_protocols=H3_ALPN, is_client=False)
    quic_config.load_cert_chain(server.tls.cert, server.tls.key)
    tickets = TicketStore(store) if quic.early_data != "off" else None
    hconfig = GatewayConfig()
    context = WorkerContext(None)
    sockets: list[socket.socket] = []
    try:
        for listen in quic.listen:
            sock = bind(listen, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sockets.append(sock)
            if steering is not None:
                steering.join(listen, sock)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    endpoints: list[QuicEndpoint] = []
    try:
        async with TaskGroup(loop) as task_group:
            for sock in sockets:
                endpoint = QuicEndpoint(
                    ASGIWrapper(app), hconfig, context, task_group, quic_config, tickets,
                    server.limits.max_concurrent_streams, steering.cid_prefix if steering else b"",
                )  # fmt: skip
                await loop.create_datagram_endpoint(lambda e=endpoint: e, sock=sock)
                endpoints.append(endpoint)
            exchange.STANDING_HEADERS[:] = [(b"alt-svc", alt_svc(quic))]
            log.info(
                "HTTP/3 on %s (UDP), early data: %s",
                ", ".join(f"https://{listen}" for listen in quic.listen),
                quic.early_data,
            )
            await stop.wait()
            exchange.STANDING_HEADERS.clear()
            await context.terminated.set()  # no new connections, no new requests
            deadline = loop.time() + shutdown_timeout
            while any(e.busy for e in endpoints) and loop.time() < deadline:
                await asyncio.sleep(DRAIN_POLL_S)
            for endpoint in endpoints:
                endpoint.close()
            raise _Stopped  # leaving the task group this way cancels what is still running
    except* _Stopped:
        pass
    finally:
        for endpoint in endpoints:
            endpoint.transport.close()
        for sock in sockets[len(endpoints) :]:  # never handed to a transport
            sock.close()


class _Stopped(Exception):
    pass


@dataclass(eq=False, slots=True)
class _Connection:
    quic: QuicConnection
    cids: set[bytes]
    # while the handler of its events waits (in a task, see `eager`): the datagrams that arrive
    # meanwhile, handled after it, in order
    backlog: deque | None = None
    h3: EarlyDataH3 | None = None
    timer: asyncio.TimerHandle | None = None
    timer_at: float | None = None
    due: bool = False  # in its endpoint's list of connections to transmit for
    closed: bool = False


class QuicEndpoint(asyncio.DatagramProtocol):
    """One UDP socket and the QUIC connections it carries."""

    def __init__(
        self, app, hconfig, context, task_group, quic_config: QuicConfiguration, tickets: TicketStore | None,
        max_streams: int, cid_prefix: bytes,
    ):  # fmt: skip
        self.max_streams = max_streams  # concurrent request streams a client may open (server.limits)
        self.cid_prefix = cid_prefix  # the start of every connection id issued here (cids.py)
        self.app = app
        self.hconfig = hconfig
        self.context = context
        self.task_group = task_group
        self.quic_config = quic_config
        self.tickets = tickets
        self.loop = asyncio.get_running_loop()
        self.connections: dict[bytes, _Connection] = {}  # by each of its connection ids
        self.due: list[_Connection] = []  # connections with something to send, flushed once per loop iteration
        self.transport: asyncio.DatagramTransport | None = None
        self.server: tuple[str, int] | None = None
        self.state: dict = {}

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server = transport.get_extra_info("sockname")[:2]
        enlarge_buffers(transport.get_extra_info("socket"))

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self._datagram(data, addr)
        except Exception:
            log.exception("QUIC datagram from %s could not be handled", addr)

    @property
    def busy(self) -> bool:
        """Whether any request is still in flight."""
        return any(c.h3 is not None and c.h3.streams for c in self.connections.values())

    def _datagram(self, data: bytes, addr) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self.quic_config.connection_id_length)
        except ValueError:
            return
        versions = self.quic_config.supported_versions
        if header.version is not None and header.version not in versions:
            packet = encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid, supported_versions=versions
            )
            self.transport.sendto(packet, addr)
            return
        conn = self.connections.get(header.destination_cid)
        if conn is None:
            if (
                header.packet_type != PACKET_TYPE_INITIAL
                or len(data) < SMALLEST_INITIAL
                or self.context.terminated.is_set()
            ):
                return
            conn = self._accept(header.destination_cid)
        if conn.backlog is not None:
            if len(conn.backlog) < BACKLOG_DATAGRAMS:
                conn.backlog.append((data, addr))
            return
        conn.quic.receive_datagram(data, addr, now=self.loop.time())
        self._handle_events(conn, addr)

    def _accept(self, original_cid: bytes) -> _Connection:
        quic = WorkerConnection(
            cid_prefix=self.cid_prefix,
            configuration=self.quic_config,
            original_destination_connection_id=original_cid,
            session_ticket_fetcher=self.tickets.take if self.tickets else None,
            session_ticket_handler=self.tickets.add if self.tickets else None,
        )
        # aioquic has no setting for this: it advertises 128 and grants one more stream as each ends,
        # so the initial grant is the connection's limit on concurrent request streams
        quic._local_max_streams_bidi.value = quic._local_max_streams_bidi.sent = self.max_streams
        conn = _Connection(quic, {original_cid, quic.host_cid})
        for cid in conn.cids:
            self.connections[cid] = conn
        return conn

    def _handle_events(self, conn: _Connection, client) -> None:
        """Handle the connection's events now; if that has to wait, finish in a task, and keep the
        connection's datagrams until then."""
        coro = self._events(conn, client)
        done, waiting = eager.start(coro)
        if not done:
            conn.backlog = deque()
            self.task_group.spawn(self._events_later, conn, coro, waiting)

    async def _events(self, conn: _Connection, client) -> None:
        while (event := conn.quic.next_event()) is not None:
            if isinstance(event, ProtocolNegotiated):
                conn.h3 = EarlyDataH3(
                    self.app, self.hconfig, self.context, self.task_group, self.state,
                    client, self.server, conn.quic, partial(self._send, conn),
                )  # fmt: skip
            elif isinstance(event, ConnectionIdIssued):
                conn.cids.add(event.connection_id)
                self.connections[event.connection_id] = conn
            elif isinstance(event, ConnectionIdRetired):
                conn.cids.discard(event.connection_id)
                self.connections.pop(event.connection_id, None)
            elif isinstance(event, ConnectionTerminated):
                self._forget(conn)
            if conn.h3 is not None:
                await conn.h3.handle(event)
        self._transmit_soon(conn)

    async def _events_later(self, conn: _Connection, coro, waiting) -> None:
        """The rest of `_handle_events`, then the datagrams that arrived meanwhile, in order."""
        try:
            await eager.finish(coro, waiting)
            while conn.backlog:
                data, addr = conn.backlog.popleft()
                conn.quic.receive_datagram(data, addr, now=self.loop.time())
                await self._events(conn, addr)
        except Exception:
            log.exception("QUIC connection's events could not be handled")
        finally:
            conn.backlog = None

    async def _send(self, conn: _Connection) -> None:
        self._transmit_soon(conn)

    def _transmit_soon(self, conn: _Connection) -> None:
        """Transmit for `conn` once the datagrams and responses of this loop iteration are in.

        Hypercorn asks to send after each HEADERS and DATA frame and each stream's end, and each
        datagram received asks too: sending then would cost a packet (encryption, a system call, an
        acknowledgement back) per frame. One `datagrams_to_send` per iteration puts the responses of
        all the streams answered in it, and the acknowledgements, into as few packets as they fill."""
        if conn.due:
            return
        conn.due = True
        self.due.append(conn)
        if len(self.due) == 1:
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        due, self.due = self.due, []
        for conn in due:
            conn.due = False
            self._transmit(conn)

    def _transmit(self, conn: _Connection) -> None:
        """Send what the connection has to send, and set its timer to the time it asks for."""
        for data, addr in conn.quic.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data, addr)
        at = None if conn.closed else conn.quic.get_timer()
        if at == conn.timer_at:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        conn.timer = None if at is None else self.loop.call_at(at, self._on_timer, conn)
        conn.timer_at = at

    def _on_timer(self, conn: _Connection) -> None:
        conn.timer = conn.timer_at = None
        if conn.closed:
            return
        conn.quic.handle_timer(now=self.loop.time())
        self._transmit(conn)
        if conn.backlog is None:  # else the handler waiting takes the timer's events with the rest
            try:
                self._handle_events(conn, None)
            except Exception:
                log.exception("QUIC connection timer failed")

    def _forget(self, conn: _Connection) -> None:
        conn.closed = True
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = conn.timer_at = None
        for cid in conn.cids:
            self.connections.pop(cid, None)
        conn.cids.clear()

    def close(self) -> None:
        """Close every connection (HTTP/3's graceful `H3_NO_ERROR`), now."""
        for conn in set(self.connections.values()):
            conn.quic.close(error_code=ErrorCode.H3_NO_ERROR)
            self._transmit(conn)
            self._forget(conn)
