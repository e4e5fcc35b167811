"""The background work of rate limits: leasing tokens from the host's buckets, off the request path.

A request never waits for the store. When a share (see `bucket.py`) runs low, the step asks the
process's one `Leaser` for a lease and carries on; the leaser's task wakes, takes every share that
asked since (across all the rate limits of the process), and settles them with ONE `store.draw`:
on the host store, one LMDB write transaction for the whole batch (6 µs for one key, 3 µs more a
key; `bench/ratelimit.py`). It then waits `GAP_S` before the next batch, so a busy worker writes to
the store at most 1/GAP_S times a second. A share left owing when the host bucket was empty is
leased for again when its next token is due, without waiting for a request: its debt is repaid as
tokens come, where a small bucket left alone would let them overflow. With nothing asked and
nothing owed, the task sleeps.

A store that fails (full, say) is replaced by a bucket private to the process until it answers
again, logged once: each worker then limits alone, so the host admits up to `server.workers` times
the limit rather than refusing everything.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time

from ..store import MemoryStore
from .bucket import settle, want

log = logging.getLogger("gatewayd.ratelimit")

# the shortest time between two batches of leases
GAP_S = 0.001


class Leaser:
    """Leases for the rate limits (`Limiter`s) attached to it; one per process (`LEASER`)."""

    def __init__(self, gap: float = GAP_S, clock=time.time):
        self.gap = gap
        self.clock = clock
        self.queue: list = []  # (share, limiter) that asked, in order
        self.owing: list = []  # heap of (when its next token is due, n, share, limiter) for shares left owing
        self.limiters: set = set()
        self.failing = False  # the store failed: leases come from `fallback`
        self.fallback = MemoryStore(clock=clock)
        self._order = itertools.count()
        self._wake: asyncio.Future | None = None  # set while the task sleeps for want of work
        self._task: asyncio.Task | None = None

    def ask(self, share, limiter) -> None:
        """Lease tokens for `share` soon (called from request steps: appends, and wakes the task)."""
        share.pending = True
        self.queue.append((share, limiter))
        if self._wake is not None:
            self._rouse()

    def attach(self, limiter) -> None:
        """Serve `limiter` from the running event loop (its `start()`)."""
        self.limiters.add(limiter)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="gatewayd-ratelimit-leases")

    def detach(self, limiter) -> None:
        """Stop serving `limiter` (its `close()`); the task ends with the last one."""
        self.limiters.discard(limiter)
        if not self.limiters:
            self._rouse()

    def _rouse(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.limiters:
            due = self.due(self.clock())
            if not self.queue:
                self._wake = loop.create_future()
                timer = None if due is None else loop.call_later(due, self._rouse)
                await self._wake
                if timer is not None:
                    timer.cancel()
                continue
            try:
                await self.lease()
            except Exception:  # a bug: log it, and keep the other leases going
                log.exception("leasing rate-limit tokens failed")
            await asyncio.sleep(self.gap)

    async def lease(self) -> None:
        """Settle every share that asked: here from the host store, at once (`flush`); the cluster's
        leaser (gatewayd/cluster/buckets.py) asks Redis instead."""
        self.flush(self.clock())

    def due(self, now: float) -> float | None:
        """Ask again for the owing shares whose next token is due by `now`; the seconds until the
        next one is (None: none is owing)."""
        owing = self.owing
        while owing and owing[0][0] <= now:
            when, _, share, limiter = heapq.heappop(owing)
            if not share.pending and share.credit < 0 and not limiter.closed:
                share.asked = when
                self.ask(share, limiter)
        return owing[0][0] - now if owing else None

    def flush(self, now: float) -> int:
        """Settle every share that asked, in one draw per store; returns how many."""
        batch = self.take()
        self.draw_from_stores(batch, now)
        return len(batch)

    def draw_from_stores(self, batch: list, now: float) -> None:
        """Settle (share, limiter) pairs from their limiters' stores, one draw per store."""
        by_store: dict = {}
        for entry in batch:
            store = entry[1].store
            by_store.setdefault(id(store), (store, []))[1].append(entry)
        for store, entries in by_store.values():
            asks, items = self.items(entries, now)
            self.apply(entries, asks, self._draw(store, items), now)

    def take(self) -> list:
        """The (share, limiter) that asked since the last batch, but those of closed limiters."""
        batch, self.queue = self.queue, []
        return [entry for entry in batch if not entry[1].closed]

    @staticmethod
    def items(entries: list, now: float) -> tuple[list[int], list[tuple[bytes, int, float, float]]]:
        """The tokens each share asks for, and the `draw` items that ask them."""
        asks = [want(share, limiter.budget, now) for share, limiter in entries]
        items = [
            (share.key, asked, limiter.budget.rate, limiter.budget.host_capacity)
            for (share, limiter), asked in zip(entries, asks)
        ]  # fmt: skip
        return asks, items

    def apply(self, entries: list, asks: list[int], answers: list[tuple[int, float]], now: float) -> None:
        """Give each share its answer; a share left owing is leased for again when its next token is due."""
        for (share, limiter), asked, (granted, left) in zip(entries, asks, answers):
            settle(share, limiter.budget, asked, granted, left, now)
            if share.credit < 0 and granted < asked:
                heapq.heappush(self.owing, (share.dry_until, next(self._order), share, limiter))

    def _draw(self, store, items) -> list[tuple[int, float]]:
        if not self.failing:
            try:
                return store.draw(items)
            except Exception as exc:  # noqa: BLE001 - whatever fails, the limits must go on
                self.failing = True
                log.error(
                    "the host store refused rate-limit leases (%s); each worker limits alone until it answers", exc
                )
                return self.fallback.draw(items)
        try:
            answers = store.draw(items)
        except Exception:  # noqa: BLE001 - still failing
            return self.fallback.draw(items)
        self.failing = False
        log.warning("the host store answers rate-limit leases again")
        return answers


LEASER = Leaser()
