"""Serve TCP listeners with Granian's embedded server, on the caller's event loop.

Granian, in the project's design measurements, answers a trivial app at 0.34-0.38 of nginx's rate
against Hypercorn's 0.03-0.06,
so it is the default engine. Its embedded server runs as tasks of our loop, which lets one process
own the config, reloads and upstream pools for all its listeners.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings, HTTP2Settings
from granian.net import SocketSpec
from granian.server.embed import Server

from ..config.model import Limits, Listen, ServerConfig, TLSConfig
from .sockets import BACKLOG, connection_limit, fastopen_wanted, set_fastopen
from .watchdog import Limits as WatchdogLimits
from .watchdog import Tracker, Watchdog

log = logging.getLogger("gatewayd")

_HTTP = {"auto": HTTPModes.auto, "1": HTTPModes.http1, "2": HTTPModes.http2}


class _Server(Server):
    """Granian's embedded server; with `fastopen`, it binds its listening socket itself (Granian's
    own ListenerSpec, so with the same options) to set TCP_FASTOPEN on it, and hands it to its worker."""

    def __init__(self, *args, fastopen: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fastopen = fastopen

    def _init_shared_socket(self):
        if not self.fastopen:
            return super()._init_shared_socket()
        holder = SocketSpec(self.bind_addr, self.bind_port, self.backlog).build()
        set_fastopen(holder.get_fd())
        self._ssp, self._shd, self._sfd = None, holder, holder.get_fd()


def http_settings(limits: Limits) -> tuple[HTTP1Settings, HTTP2Settings]:
    """`server.limits` as Granian's settings. Granian's only timer for an HTTP/1.1 connection is hyper's
    header read timeout, which runs from the end of a response (hyper counts waiting for the next
    request as reading its head): set to the longer of `header_read_timeout` and `keep_alive_timeout`,
    it is a backstop, and the watchdog (watchdog.py) applies each where it belongs. `keep_alive_timeout`
    turns HTTP/1.1 keep-alive off at 0s and is the HTTP/2 keep-alive ping interval."""
    keep_alive_ms = round(limits.keep_alive_timeout * 1000)
    h1 = HTTP1Settings(
        header_read_timeout=max(1, round(max(limits.header_read_timeout, limits.keep_alive_timeout) * 1000)),
        keep_alive=keep_alive_ms > 0,
        # also its read buffer: kept at Granian's default at least, as smaller ones slow uploads down
        max_buffer_size=max(HTTP1Settings.max_buffer_size, limits.engine_header_bytes),
    )
    h2 = HTTP2Settings(
        keep_alive_interval=keep_alive_ms or None,
        max_concurrent_streams=limits.max_concurrent_streams,
        max_headers_size=limits.engine_header_bytes,
    )
    return h1, h2


def _tls_options(tls: TLSConfig | None) -> dict:
    if tls is None:
        return {}
    return {"ssl_cert": Path(tls.cert), "ssl_key": Path(tls.key), "ssl_protocol_min": SSLProtocols.tls12}


async def serve(
    app, listeners: tuple[Listen, ...], server: ServerConfig, stop: asyncio.Event
) -> None:  # fmt: skip
    """Serve until `stop` is set, then stop accepting and wait up to `server.shutdown_timeout` seconds for the
    requests in flight: Granian's `Server.stop()` closes the listener and idle keep-alive connections
    at once, and its `serve()` returns when the last in-flight response is sent (it has no time limit
    of its own, so the limit is applied here)."""
    logging.getLogger("_granian").setLevel(logging.WARNING)
    logging.getLogger("granian").setLevel(logging.WARNING)
    tls = server.tls
    fastopen = fastopen_wanted(server)
    h1, h2 = http_settings(server.limits)
    binds = [(listen, None) for listen in listeners] + [(listen, tls) for listen in (tls.listen if tls else ())]
    tracker = Tracker()
    app = tracker.wrap(app)
    limits = server.limits
    ports = {listen.port for listen, _ in binds}
    watchdog = Watchdog(tracker, ports, WatchdogLimits(limits.header_read_timeout, limits.keep_alive_timeout))
    per_worker = connection_limit()
    servers = [
        _Server(
            app,
            address=listen.host,
            port=listen.port,
            interface=Interfaces.ASGINL,  # our app has no lifespan work; skip Granian's lifespan round trip
            http=_HTTP[server.http],
            websockets=False,
            http1_settings=h1,
            http2_settings=h2,
            log_enabled=False,
            backlog=BACKLOG,
            # connections one listener holds at once (a semaphore in Granian's accept loop): its
            # default is the backlog, 128, and an idle connection keeps its place until it closes
            backpressure=per_worker,
            fastopen=fastopen,
            **_tls_options(listen_tls),
        )
        for listen, listen_tls in binds
    ]
    # each Server binds its own socket with SO_REUSEPORT (Granian's ListenerSpec on Linux), so the
    # workers of one host can all listen on the same addresses
    tasks = {asyncio.create_task(s.serve()): listen for s, (listen, _) in zip(servers, binds)}
    watching = asyncio.create_task(watchdog.run(stop))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.stop()
    _, pending = await asyncio.wait(tasks, timeout=server.shutdown_timeout)
    if pending:
        log.warning("requests still in flight after %gs; closing them", server.shutdown_timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    stopper.cancel()
    stop.set()  # the watchdog's too, when a listener ended on its own
    await watching
    for t in done:
        if t is not stopper and t.exception():
            raise _listen_error(t.exception(), tasks[t])


def _listen_error(exc: BaseException, listen: Listen) -> BaseException:
    """Granian reports a failed bind as a RuntimeError whose first line ends in `(os error N)`,
    followed by a Rust backtrace: make it an OSError naming the address."""
    first = str(exc).split("\n", 1)[0]
    if isinstance(exc, RuntimeError) and "(os error" in first:
        return OSError(f"cannot listen on {listen}: {first}")
    return exc
