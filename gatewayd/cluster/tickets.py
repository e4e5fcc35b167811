"""QUIC session tickets kept in Redis, so that a ticket is used once across every gateway of a cluster.

`server/quic/tickets.py`'s `TicketStore` takes a ticket with `take`, an atomic get-and-delete; here
that is Redis's `GETDEL`, so of several gateways (or one client's replayed first flight sent to
several) one gets the ticket and the others a full handshake, whose early data is never read.

aioquic asks for the ticket synchronously, inside the handshake, so `take` cannot await: it blocks
the event loop for one round trip to Redis (about 0.1 ms on a local network), never longer than
`BLOCKING_WAIT_S` (5 ms) or `cluster.redis.timeout`, whichever is less. Redis down, or slower than
that: no ticket, so a full handshake without 0-RTT, which costs the client one round trip and risks
nothing (a GETDEL that Redis ran after the wait gave up loses that ticket: the same). A local cache of the tickets this gateway issued was not chosen: a ticket taken here while
another gateway took it from Redis (or the reverse) would be used twice, which is what this module
prevents. Issuing a ticket (`put`) awaits nothing: the write is a task of its own, bounded by the timeout.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import TimeoutError as RedisTimeoutError

from .buckets import KEY_PREFIX
from .link import FAILURES, RedisLink, Unavailable

log = logging.getLogger("gatewayd.quic")


class SharedTickets:
    """The part of a `HostStore` that `TicketStore` uses (`put`, `take`), on Redis."""

    def __init__(self, link: RedisLink):
        self.link = link
        self._tasks: set[asyncio.Task] = set()
        link.on_change(self._changed)

    def _changed(self, up: bool) -> None:
        """Redis is back: connect the blocking client again ahead of the next handshake."""
        if up:
            self._spawn(self.connect())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        self._spawn(self._put(KEY_PREFIX + key, value, ttl))

    async def _put(self, key: bytes, value: bytes, ttl: float | None) -> None:
        px = None if ttl is None else max(1, int(ttl * 1000))
        try:
            await self.link.call(lambda client: client.set(key, value, px=px))
        except Unavailable:
            log.debug("redis is down: a QUIC session ticket was not kept (its client will not resume)")

    async def connect(self) -> None:
        """Make the blocking client and its connection ahead of the first handshake, in a thread
        (connecting, and finding a Redis Cluster's nodes, may take longer than a `take` may wait)."""
        try:
            await asyncio.to_thread(lambda: self.link.blocking().ping())
        except FAILURES:
            pass  # made again at the first `take`

    def take(self, key: bytes) -> bytes | None:
        if not self.link.up:
            return None
        try:
            return self.link.blocking().getdel(KEY_PREFIX + key)
        except RedisTimeoutError:  # slower than this wait, maybe not than `timeout`: no ticket, the link stays up
            return None
        except FAILURES as exc:
            self.link.failed(exc)
            return None
