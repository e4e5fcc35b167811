"""A worker's cache: its L1, the host's L2 (None when the worker serves alone), the cluster's tier
in Redis (None without a `cluster` section), the flights, the leases that let one process fetch a
key at a time, and purges, which reach every worker of the host (and of the cluster).

A purge is applied to this worker's L1 and to the L2 at once, and written to the host store under
`cache-purge/`; every worker reads those records every `PURGE_POLL` seconds and applies the ones of
other workers to its own L1. The admin listener answers a purge after `PURGE_SETTLE` seconds, by
which time every worker has applied it. With a cluster, the purge is also deleted from Redis and
published there to every worker of every gateway (gatewayd/cluster/cache.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import marshal
import os
import time

from .flights import Flights
from .l1 import L1
from .l2 import L2

log = logging.getLogger("gatewayd.cache")

PASSES_MAX = 10_000
PURGE_POLL = 0.02
PURGE_SETTLE = 0.08
_PURGES = b"cache-purge/"
_PURGE_TTL = 30.0


class Passes(dict):
    """Keys whose last response could not be stored, with when that stops mattering; bounded: when
    full, the oldest half is forgotten."""

    def __setitem__(self, key, until) -> None:
        if len(self) >= PASSES_MAX and key not in self:
            for old in list(self)[: PASSES_MAX // 2]:
                del self[old]
        super().__setitem__(key, until)


class Tiers:
    def __init__(self, l1_max: int, l2: L2 | None, store):
        self.l1 = L1(l1_max)
        self.l2 = l2
        self.store = store  # the host store: purge records and refresh leases
        self.cluster = None  # the cluster's tier in Redis (gatewayd.cluster.cache), when gateways share one
        self.flights = Flights()
        self.passes = Passes()  # keys whose last response could not be shared -> until when (wall clock)
        self._seen = b"%s%020d" % (_PURGES, time.time_ns())
        self._me = b"-%d" % os.getpid()
        self._poller: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()  # background refreshes, held until done

    @property
    def shared(self) -> bool:
        """Whether other processes share what this one stores (the host's workers, or a cluster)."""
        return self.l2 is not None or self.cluster is not None

    def start(self) -> None:
        if self.l2 is not None and self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        if self.cluster is not None:
            self.cluster.subscribe(self._purge_here)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.cluster is not None:
            self.cluster.close()
        if self.l2 is not None:
            self.l2.close()

    async def lease(self, kind: bytes, key: bytes, seconds: float) -> bool:
        """Whether this worker may fetch (`kind` b"fetch") or refresh (b"refresh") `key` now: one
        worker of the host (of the cluster, with one) holds it at a time, for `seconds` at most or
        until `release`. On a host: a token bucket of one token in the host store."""
        if self.cluster is not None:
            return await self.cluster.lease(kind, key, seconds)
        if self.l2 is None:
            return True
        try:
            return self.store.draw([(_lease_key(kind, key), 1, 1.0 / seconds, 1.0)])[0][0] == 1
        except Exception:  # a full or failing store must not stop the fetch
            return True

    def release(self, kind: bytes, key: bytes, seconds: float) -> None:
        if self.cluster is not None:
            return self.cluster.release(kind, key)
        if self.l2 is not None:
            try:
                self.store.draw([(_lease_key(kind, key), -1, 1.0 / seconds, 1.0)])
            except Exception:
                pass  # it comes back by itself after `seconds`

    # --- purges -------------------------------------------------------------------------------

    async def purge(self, kind: str, arg: bytes) -> int:
        """Purge by "url", "prefix" or "tag" here, in the L2 and in the cluster's tier, and tell the
        host's other workers (and, through Redis, the other gateways); how many stored responses went."""
        removed = self._purge_here(kind, arg)
        if self.cluster is not None:
            removed = max(removed, await self.cluster.purge(kind, arg))
        if self.l2 is not None:
            try:
                self.store.put(b"%s%020d%s" % (_PURGES, time.time_ns(), self._me), marshal.dumps((kind, arg)), _PURGE_TTL)
            except Exception as exc:
                log.warning("cache purge not recorded for the other workers: %s", exc)
        return removed

    def _purge_here(self, kind: str, arg: bytes) -> int:
        """Purge this worker's L1 and the host's L2."""
        removed = self._purge_l1(kind, arg)
        if self.l2 is not None:
            if kind == "tag":
                removed = max(removed, self.l2.purge_tag(arg))
            else:
                removed = max(removed, self.l2.purge_url(arg, prefix=kind == "prefix"))
        return removed

    def _purge_l1(self, kind: str, arg: bytes) -> int:
        if kind == "url":
            return self.l1.drop_url(arg)
        if kind == "prefix":
            return self.l1.drop(lambda node, entry: not node.url.startswith(arg))
        return self.l1.drop(lambda node, entry: entry is None or arg not in entry.tags)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(PURGE_POLL)
            try:
                records = self.store.scan(_PURGES)
            except Exception:
                continue
            for key, value in records:
                if key <= self._seen:
                    continue
                self._seen = key
                if not key.endswith(self._me):
                    kind, arg = marshal.loads(value)
                    self._purge_l1(kind, arg)


def _lease_key(kind: bytes, key: bytes) -> bytes:
    return b"cache-lease/%s/%s" % (kind, hashlib.blake2b(key, digest_size=16).digest())
