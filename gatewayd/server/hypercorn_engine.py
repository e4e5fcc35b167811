"""Serve TCP listeners with Hypercorn, for a pure-Python stack (`server.engine: hypercorn`).

Hypercorn speaks HTTP/1.1 and h2c on every listener; `server.http` applies to Granian only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from ssl import SSLError

import h11
import h2.errors
import h2.events
import h2.exceptions
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from ..config.model import Listen, ServerConfig
from ..dispatch.exchange import JSON_TYPE, STANDING_HEADERS, Cut, error_body, http_date, new_request_id
from ..dispatch.refusals import refused_head
from .h1_strict import StrictConnection
from .sockets import BACKLOG, bind, fastopen_wanted

log = logging.getLogger("gatewayd")


def _not_a_cut(record: logging.LogRecord) -> bool:
    """A response cut off on purpose (dispatch.exchange.Cut) was logged by whoever cut it: Hypercorn
    ends it as broken, and its traceback would say nothing more."""
    return not (record.exc_info and isinstance(record.exc_info[1], Cut))


class GatewayConfig(HypercornConfig):
    """Hypercorn's config as gatewayd runs it, over TCP and HTTP/3 alike: no access log (gatewayd.observe
    keeps its own), errors to gatewayd's log, and no Date or Server header of its own, which it would
    add beside any the app sends: the gateway sends Date itself (see `Exchange.start`), so that a
    `headers` policy can set or remove both."""

    accesslog = None
    errorlog = logging.getLogger("gatewayd.hypercorn")
    errorlog.addFilter(_not_a_cut)
    include_date_header = False
    include_server_header = False
    header_read_timeout: float = 30.0  # read by _TCPServer
    max_header_bytes: int  # server.limits, set by serve(); read by _H11Protocol


class _H11Protocol(H11Protocol):
    """Hypercorn's HTTP/1.1, reading requests as strictly as Granian does (`h1_strict.py`), and
    answering a request it refuses itself (a head larger than `h11_max_incomplete_size`: 431;
    malformed: 400; an unsupported Transfer-Encoding: 501) with the gateway's JSON error, a request
    id and a Date, where Hypercorn sends an empty body."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.connection = StrictConnection(h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size)

    async def _send_error_response(self, status_code: int) -> None:
        reject = refused_head(status_code, self.config.max_header_bytes)
        request_id = new_request_id()
        body = error_body(reject.error, reject.message, request_id)
        headers = [
            JSON_TYPE, (b"content-length", b"%d" % len(body)), (b"connection", b"close"),
            (b"x-request-id", request_id), (b"date", http_date()), *STANDING_HEADERS,
        ]  # fmt: skip
        await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


UNREAD_BODY_LIMIT = 65_535  # bytes of an answered stream's body taken and dropped before it is reset


class _H2Protocol(H2Protocol):
    """Hypercorn's HTTP/2, plus two things it lacks.

    A stream whose response the app left unfinished (it raised once the response had started, as the
    proxy does with `Cut`) is reset, as Granian does, where Hypercorn would leave it open and its
    client waiting until the connection ends.

    DATA for a stream already answered (a 413 before the whole upload came) is acknowledged and
    dropped, where Hypercorn fails on it and loses the whole connection. Past UNREAD_BODY_LIMIT the
    stream is reset with NO_ERROR, which asks the client to stop sending (RFC 9113 section 8.1).
    Below it, a client that reads its response only once it has sent the whole body (httpx does)
    still gets that response."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unread: dict[int, int] = {}  # answered stream -> bytes of its body dropped so far

    async def _handle_events(self, events) -> None:
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self._drop(event)
            else:
                if isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    self.unread.pop(event.stream_id, None)
                await super()._handle_events((event,))
        await self._flush()

    def _drop(self, event: h2.events.DataReceived) -> None:
        stream_id = event.stream_id
        unread = self.unread.get(stream_id, 0) + event.flow_controlled_length
        try:
            self.connection.acknowledge_received_data(event.flow_controlled_length, stream_id)
            if unread > UNREAD_BODY_LIMIT:
                self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)
                unread = None
        except h2.exceptions.ProtocolError:  # the stream is over already
            unread = None
        if unread is None:
            self.unread.pop(stream_id, None)
        else:
            self.unread[stream_id] = unread

    async def stream_send(self, event) -> None:
        if isinstance(event, StreamClosed):
            buffer = self.stream_buffers.get(event.stream_id)
            if buffer is not None and not buffer._complete:  # (`complete` also waits for the buffer to drain)
                try:
                    self.connection.reset_stream(event.stream_id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
                except h2.exceptions.ProtocolError:
                    pass  # the stream or the connection is over already
                else:
                    await self._flush()
                await buffer.close()
        await super().stream_send(event)


class _TCPServer(TCPServer):
    """Hypercorn's connection handler plus a deadline for an HTTP/1.1 request's head, from its first
    byte (for a connection's first request, from its start: a client that connects and sends
    nothing is closed after `header_read_timeout`): Hypercorn itself only has the keep-alive timer,
    which runs from the end of the previous response (or the connection's start) until the head is
    complete. Idle connections are left to that timer; HTTP/2 connections are not affected."""

    _head_deadline: float | None = None  # loop time by which the request head being read must be complete
    _waiting_for_head = True  # Hypercorn reports Updated(idle=True) between requests, idle=False once a head is in

    async def protocol_send(self, event) -> None:
        if isinstance(event, Updated):
            self._waiting_for_head = event.idle
            self._head_deadline = None
        await super().protocol_send(event)

    async def _read_data(self) -> None:  # Hypercorn's loop, with the deadline applied to each read
        if isinstance(self.protocol.protocol, H11Protocol):
            self._head_deadline = self.loop.time() + self.config.header_read_timeout
        while not self.reader.at_eof():
            timeout = self.config.read_timeout
            if self._head_deadline is not None:
                timeout = max(0.0, self._head_deadline - self.loop.time())
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV), timeout)
            except (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError, SSLError):
                break
            if data and self._waiting_for_head and self._head_deadline is None and isinstance(self.protocol.protocol, H11Protocol):
                self._head_deadline = self.loop.time() + self.config.header_read_timeout
            await self.protocol.handle(RawData(data))
        # nothing more will be read: close now. (Hypercorn would keep the socket until the keep-alive
        # timer ran out, as that timer is a task of the connection's task group.)
        await self.idle_task.stop()
        await self.protocol.handle(Closed())


DRAIN_LIMIT_S = 60.0  # longest a finished request's unread body is consumed
DRAIN_QUIET_S = 2.0  # ... and it stops once nothing has come for this long
_drains: set[asyncio.Task] = set()


def _draining(app):
    """The ASGI app, plus: when it answers a request whose body it has not read to the end (a 413 for
    an oversized upload, a 404 to a POST), what Hypercorn still delivers of that body is taken and
    dropped in the background, from the response's last message on. Otherwise Hypercorn's reader
    blocks on the full per-request queue, and so does the response's end, which puts
    `http.disconnect` on that queue: the connection (on HTTP/2, every stream of it) hangs until
    shutdown. Bounded: Hypercorn closes an HTTP/1.1 connection whose request was not read to the end,
    and ends the stream on HTTP/2."""

    async def drain(receive) -> None:
        try:
            async with asyncio.timeout(DRAIN_LIMIT_S):
                while True:
                    message = await asyncio.wait_for(receive(), DRAIN_QUIET_S)
                    if message["type"] == "http.request" and not message.get("more_body"):
                        return  # the whole body is in (at once for a request without one)
                    # after `http.disconnect`, go on: the reader may still have data queued behind it
        except TimeoutError:
            pass  # nothing came for DRAIN_QUIET_S: the connection or stream is over

    async def wrapped(scope, receive, send) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        read_all = draining = False

        def start_draining() -> None:
            nonlocal draining
            if not read_all and not draining:
                draining = True
                task = asyncio.ensure_future(drain(receive))
                _drains.add(task)  # a reference, or the task could be collected mid-way
                task.add_done_callback(_drains.discard)

        async def tracking_receive():
            nonlocal read_all
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                read_all = True
            return message

        async def draining_send(message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                start_draining()
            await send(message)

        try:
            await app(scope, tracking_receive, draining_send)
        finally:
            start_draining()  # also when the app failed (Hypercorn then answers 500) or sent no body

    return wrapped


async def serve(
    app, listeners: tuple[Listen, ...], server: ServerConfig, stop: asyncio.Event
) -> None:  # fmt: skip
    """Serve until `stop` is set. Hypercorn then closes its listeners, lets each connection finish
    the request it is serving (idle keep-alive connections close), and waits up to
    `graceful_timeout` for them before returning."""
    tls = server.tls
    fastopen = fastopen_wanted(server)
    config = GatewayConfig()
    # Hypercorn's own `workers` shares one socket between its processes; our workers each bind
    # their own with SO_REUSEPORT (so the kernel spreads connections) and hand it over as fd://N
    fds: list[int] = []
    try:
        for listen in (*listeners, *(tls.listen if tls else ())):
            fds.append(bind(listen, fastopen=fastopen).detach())  # Hypercorn owns and closes the fd
    except OSError:
        for fd in fds:
            os.close(fd)
        raise
    binds = [f"fd://{fd}" for fd in fds]
    if tls:  # with a certificate, Hypercorn serves `bind` with TLS and `insecure_bind` without
        config.certfile, config.keyfile = tls.cert, tls.key  # its TLS: 1.2 at least, ALPN h2 and http/1.1
        config.bind, config.insecure_bind = binds[len(listeners) :], binds[: len(listeners)]
    else:
        config.bind = binds
    limits = server.limits
    config.backlog = BACKLOG
    config.max_header_bytes = limits.max_header_bytes
    config.h11_max_incomplete_size = limits.engine_header_bytes
    config.h2_max_header_list_size = limits.engine_header_bytes
    config.h2_max_concurrent_streams = limits.max_concurrent_streams
    config.header_read_timeout = limits.header_read_timeout
    config.ssl_handshake_timeout = limits.header_read_timeout
    if limits.keep_alive_timeout > 0:
        config.keep_alive_timeout = limits.keep_alive_timeout
    else:  # no keep-alive: `Connection: close` on every response; the timer then bounds the wait for the first request
        config.keep_alive_max_requests = 1
        config.keep_alive_timeout = limits.header_read_timeout
    hypercorn.asyncio.run.TCPServer = _TCPServer  # what Hypercorn's accept callback instantiates
    hypercorn.protocol.H11Protocol = _H11Protocol  # what its protocol wrapper instantiates for HTTP/1.1
    hypercorn.protocol.H2Protocol = _H2Protocol  # ... and for HTTP/2
    config.graceful_timeout = server.shutdown_timeout
    await hypercorn_serve(_draining(app), config, shutdown_trigger=stop.wait, mode="asgi")


