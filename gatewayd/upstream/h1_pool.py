"""The pooled HTTP/1.1 connections of one upstream pool (pool.Pool), to each of its targets.

Connections are kept alive and reused newest first, per target; at most `max_connections` are open
at once over all targets, busy and idle together. A request that finds none idle for its target
opens one if the bound allows, else closes an idle one of another target to make room, else waits
(in arrival order) for one to come back or close: a wait bounded like the response, as the request
has not been answered either. An idle connection that the upstream closes leaves the pool as soon
as its loop hears of it; one idle for longer than IDLE_S is closed rather than reused.

A request sent on a reused connection that the upstream had closed in the meantime (no byte of an
answer, then the close) is sent once more on a fresh connection when it may be (`replayable`: no
body and an idempotent method), as the upstream never saw it. `https://` targets are spoken to
over TLS, verified against the system's certificate authorities (OpenSSL's defaults, which
`SSL_CERT_FILE` and `SSL_CERT_DIR` can point elsewhere).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlsplit

from .errors import Closed, ConnectTimeout, ResponseTimeout, Unreachable
from .h1_connection import DONE, IDLE, H1Connection

IDLE_S = 60.0  # an idle connection older than this is closed, not reused


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A target as the client reaches it."""

    url: str  # as configured, for the log
    host: str
    port: int
    authority: bytes  # the Host header's value
    tls: bool


def endpoint(url: str) -> Endpoint:
    """`http(s)://host[:port]` (the schema's `target_url`) as an Endpoint."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    return Endpoint(url, parts.hostname, parts.port or (443 if tls else 80), parts.netloc.encode("idna"), tls)


@cache
def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class H1Pool:
    __slots__ = ("limit", "connect_timeout", "open", "idle", "waiting", "waiters", "closing")

    def __init__(self, limit: int, connect_timeout: float):
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.open = 0  # connections open or opening, busy or idle
        self.idle: dict[str, list[H1Connection]] = {}  # per target URL, oldest first
        self.waiting: dict[str, deque[asyncio.Future]] = {}  # per target URL: requests that take the next one back
        self.waiters: deque[asyncio.Future] = deque()  # requests waiting for the bound to allow one more
        self.closing = False

    async def request(
        self, ep: Endpoint, head: bytes, head_only: bool, body, chunked: bool, timeout: float, replayable: bool
    ) -> H1Connection:
        """Send a request (`head`, then the async iterable `body` unless None) to `ep` and return
        the connection once the response head is in. Raises an UpstreamError, or what `body` raised.
        The caller hands the connection back with `put` whatever happens next."""
        conn = self.take(ep)
        if conn is None:
            conn = await self.obtain(ep, timeout)
        replayed = False
        while True:
            try:
                await self._send(conn, head, head_only, body, chunked, timeout)
                return conn
            except Closed as exc:
                self.put(conn)
                if replayed or not (exc.stale and replayable):
                    raise
            except BaseException:
                self.put(conn)
                raise
            replayed = True  # the upstream had closed the idle connection: once more, on a fresh one
            conn = await self.obtain(ep, timeout, fresh=True)

    @staticmethod
    def _send(conn: H1Connection, head, head_only, body, chunked, timeout) -> asyncio.Future:
        """Start the exchange on `conn`; the future of its response head."""
        if body is None:
            return conn.send(head, head_only, timeout)
        answered = conn.send(head, head_only, None)
        conn.uploading = asyncio.get_running_loop().create_task(conn.upload(body, chunked, timeout))
        return answered

    def take(self, ep: Endpoint) -> H1Connection | None:
        """An idle connection to `ep`, if there is one young enough."""
        idle = self.idle.get(ep.url)
        if not idle:
            return None
        conn = idle.pop()
        if conn.loop.time() - conn.idle_since < IDLE_S:
            return conn
        idle.append(conn)  # it and every one older: closed
        for old in idle[:]:
            old.close()
        return None

    async def obtain(self, ep: Endpoint, wait: float, fresh: bool = False) -> H1Connection:
        """A connection to `ep` when none is idle: a new one if the bound allows, raced (as hyper
        does) against one that another request puts back meanwhile, which the request takes
        instead, the new one joining the idle ones when it is up (so that a slow connect, such as
        a SYN dropped by a full accept queue, delays no request while others come free). At the
        bound, it waits for one to come back or for room. `fresh`: a new connection only. Waits
        at most `wait` seconds, and a connect at most `timeouts.connect`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        connecting = None
        while True:
            if connecting is None and (self.open < self.limit or self._evict(ep)):
                self.open += 1
                connecting = loop.create_task(self._connect(ep, loop))
            waits = set()
            handed = slot = None
            if not fresh:
                handed = loop.create_future()
                self.waiting.setdefault(ep.url, deque()).append(handed)
                waits.add(handed)
            if connecting is not None:
                waits.add(connecting)
            else:
                slot = loop.create_future()
                self.waiters.append(slot)
                waits.add(slot)
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            except BaseException as exc:  # out of time, or cancelled
                if handed is not None and handed.done() and not handed.cancelled():
                    self._keep(handed.result())  # handed over just as this request gave up: to the next
                if connecting is not None:
                    connecting.add_done_callback(self._adopt)
                if isinstance(exc, TimeoutError):
                    raise ResponseTimeout(f"no connection free within {wait:g}s") from None
                raise
            finally:
                if handed is not None and not handed.done():
                    handed.cancel()
                if slot is not None and not slot.done():
                    slot.cancel()
            if handed is not None and handed.done() and not handed.cancelled():
                if connecting is not None:
                    connecting.add_done_callback(self._adopt)
                return handed.result()
            if connecting is not None and connecting.done():
                return connecting.result()  # or its ConnectTimeout, Unreachable
            # room came free: round again

    async def _connect(self, ep: Endpoint, loop) -> H1Connection:
        """A new connection to `ep`, counted in `open` by the caller."""
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: H1Connection(self, ep.url, loop), ep.host, ep.port,
                    ssl=_tls_context() if ep.tls else None, server_hostname=ep.host if ep.tls else None,
                )  # fmt: skip
        except BaseException as exc:
            self.open -= 1
            self._wake()
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(f"no connection within {self.connect_timeout:g}s") from None
            if isinstance(exc, (OSError, ssl.SSLError)):
                raise Unreachable(exc.strerror or str(exc)) from None
            raise
        return conn

    def _adopt(self, connecting: asyncio.Task) -> None:
        """A connection opened for a request that got another one: it joins the idle ones."""
        if connecting.cancelled() or connecting.exception() is not None:
            return
        self._keep(connecting.result())

    def put(self, conn: H1Connection) -> None:
        """A connection back from a request: kept for the next one if its exchange ended cleanly, else closed."""
        uploading = conn.uploading
        if uploading is not None:
            conn.uploading = None
            if not uploading.done():  # the upstream answered before it had the whole request
                uploading.cancel()
                conn.reusable = False
        if conn.closed:
            return
        if not conn.reusable or conn.state != DONE:
            conn.close()
            return
        conn.state = IDLE
        self._keep(conn)

    def _keep(self, conn: H1Connection) -> None:
        """An open connection with no request: to a request waiting for one to its target, else idle."""
        if self.closing:
            conn.close()
            return
        waiting = self.waiting.get(conn.key)
        while waiting:
            handed = waiting.popleft()
            if not handed.done():
                handed.set_result(conn)
                return
        now = conn.idle_since = conn.loop.time()
        idle = self.idle.get(conn.key)
        if idle is None:
            idle = self.idle[conn.key] = []
        elif idle and now - idle[0].idle_since >= IDLE_S:
            idle[0].close()  # the oldest, idle too long (it leaves `idle` through `gone`)
        idle.append(conn)
        self._wake()

    def gone(self, conn: H1Connection) -> None:
        """From the connection: it is closed (by either side)."""
        self.open -= 1
        idle = self.idle.get(conn.key)
        if idle and conn.state == IDLE:
            try:
                idle.remove(conn)
            except ValueError:
                pass
        self._wake()

    def close(self) -> None:
        """No new requests will come: close the idle connections now, the busy ones when they are put back."""
        self.closing = True
        for idle in list(self.idle.values()):
            for conn in idle[:]:
                conn.close()

    def _evict(self, ep: Endpoint) -> bool:
        """Close an idle connection to another target than `ep`, if there is one, to make room."""
        for key, idle in self.idle.items():
            if key != ep.url and idle:
                idle[0].close()
                return True
        return False

    def _wake(self) -> None:
        """Room for one more connection, or an idle one to evict: the first request waiting at the bound looks again."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
