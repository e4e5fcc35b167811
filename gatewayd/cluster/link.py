"""One process's connection to Redis: a client over a bounded pool, every call bounded by `timeout`,
and whether Redis answers (`up` or `down`, and since when), for the rate limits, the QUIC tickets,
the latency sketches and anything else that shares state across gateways.

Redis is taken to be up until a call fails or outlasts `timeout`; it is then down, and calls fail
at once, without waiting on the network, until a background probe gets a PING answered within
`timeout`. The probe tries again after `BACKOFF_S`, doubling up to `MAX_BACKOFF_S`. Callers decide
what to do instead (a rate limit's `on_error`); nothing here raises anything but `Unavailable`.

The client is redis-py's asyncio client (`redis.asyncio`): the project's own, maintained with
Redis, with TLS (`rediss://`), Redis Cluster and Sentinel, and hiredis's parser when installed;
`clients.py` makes the one of each `mode`. Its own retries are off, since the link decides when to
try again; `pubsub()` gives others a channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.exceptions import RedisClusterException, RedisError

from .clients import close, close_blocking, make_blocking, make_client

log = logging.getLogger("gatewayd.cluster")

BACKOFF_S = 0.05  # the first probe after a failure
MAX_BACKOFF_S = 2.0  # the longest wait between two probes
FIRST_CONTACT_S = 2.0  # what `connect` allows the first contact, off the request path
BLOCKING_WAIT_S = 0.005  # the longest a blocking call (`blocking()`) holds its thread


# what a call may raise when Redis is gone or slow: the link's own timeout, a socket error, redis-py's
# errors (a Redis Cluster it cannot reach raises one that is not a RedisError)
FAILURES = (TimeoutError, OSError, RedisError, RedisClusterException)


class Unavailable(Exception):
    """Redis is down, or did not answer within the timeout."""


@dataclass(frozen=True, slots=True)
class Transition:
    up: bool
    since: float
    backoff: float  # seconds until the next probe (while down)


def after_call(up: bool, since: float, backoff: float, ok: bool, now: float) -> Transition:
    """The link's state after a call or a probe that succeeded (`ok`) or failed at `now`: the whole table.

    up, ok: stays up | up, failed: down since now, probe after BACKOFF_S |
    down, ok: up since now | down, failed: stays down, the next probe waits twice as long (at most MAX_BACKOFF_S).
    """
    if ok:
        return Transition(True, since if up else now, BACKOFF_S)
    if up:
        return Transition(False, now, BACKOFF_S)
    return Transition(False, since, min(MAX_BACKOFF_S, backoff * 2))


class RedisLink:
    """Made from `cluster.redis`; `start()` on the serving loop, `close()` when the process stops."""

    def __init__(self, url: str, timeout: float, pool: int, mode: str = "single", sentinels: tuple[str, ...] = (), clock=time.time):
        self.url = url
        self.timeout = timeout
        self.pool = pool
        self.mode = mode
        self.sentinels = sentinels
        self.clock = clock
        self.up = True
        self.since = clock()
        self.backoff = BACKOFF_S
        self.client = None
        self._probe: asyncio.Task | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._blocking = None

    def start(self) -> None:
        """Make the client (on the running loop: its pool's locks belong to it)."""
        if self.client is None:
            self.client = make_client(self.url, self.timeout, self.pool, self.mode, self.sentinels)

    async def connect(self) -> None:
        """Reach Redis once ahead of the first call, allowing it `FIRST_CONTACT_S` (a Redis Cluster's
        client first learns which node serves which slot); a failure is left to the first call."""
        try:
            async with asyncio.timeout(max(self.timeout, FIRST_CONTACT_S)):
                if self.mode == "cluster":
                    await self.client.initialize()
                await self.client.ping()
        except FAILURES:
            pass

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(up)` at each change of state."""
        self._listeners.append(listener)

    async def call(self, make: Callable[[object], Awaitable]):
        """`await make(client)` within `timeout`; raises `Unavailable` at once while Redis is down."""
        if not self.up or self.client is None:
            raise Unavailable("redis is down")
        try:
            async with asyncio.timeout(self.timeout):
                return await make(self.client)
        except FAILURES as exc:
            self.failed(exc)
            raise Unavailable(str(exc) or type(exc).__name__) from None

    def failed(self, exc: BaseException) -> None:
        """A call failed or timed out: Redis is down until a probe (started here) finds it back."""
        if self.up:
            log.error("redis at %s failed (%s): down; deciding without it", self.safe_url, _reason(exc))
        self._apply(after_call(self.up, self.since, self.backoff, False, self.clock()))
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._reconnect(), name="gatewayd-redis-probe")

    def _apply(self, t: Transition) -> None:
        changed = t.up != self.up
        self.up, self.since, self.backoff = t.up, t.since, t.backoff
        if changed:
            for listener in self._listeners:
                listener(t.up)

    async def _reconnect(self) -> None:
        """Probe with backoff until Redis answers. Its connections are made anew first: pooled ones
        to a Redis that went away would each fail once more after it is back."""
        old, self.client = self.client, make_client(self.url, self.timeout, self.pool, self.mode, self.sentinels)
        if self._blocking is not None:
            blocking, self._blocking = self._blocking, None
            close_blocking(blocking)
        await close(old)
        while not self.up:
            await asyncio.sleep(self.backoff)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except FAILURES:
                self._apply(after_call(False, self.since, self.backoff, False, self.clock()))
                continue
            self._apply(after_call(False, self.since, self.backoff, True, self.clock()))
            log.warning("redis at %s answers again: up", self.safe_url)

    def blocking(self):
        """A redis-py client that blocks the calling thread for at most `min(timeout, BLOCKING_WAIT_S)`
        per command: for callers that cannot await (aioquic asks for a session ticket inside a
        handshake). Made at first use; it holds one connection."""
        if self._blocking is None:
            self._blocking = make_blocking(self.url, min(self.timeout, BLOCKING_WAIT_S), self.mode, self.sentinels)
        return self._blocking

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and /health."""
        scheme, sep, rest = self.url.partition("://")
        userinfo, at, host = rest.rpartition("@")
        return f"{scheme}{sep}{userinfo.partition(':')[0] + ':***@' if at else ''}{host}"

    def health(self) -> dict:
        return {"redis": "up" if self.up else "down", "since": round(self.since, 3)}

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._blocking is not None:
            close_blocking(self._blocking)
        if self.client is not None:
            client, self.client = self.client, None
            await close(client)


def _reason(exc: BaseException) -> str:
    return "no answer within the timeout" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
