"""The interface every store implements.

Calls are synchronous: they are made from places that cannot await (aioquic asks for a session
ticket in the middle of a TLS handshake), so an implementation must answer in microseconds.
Keys and values are bytes; a key's first path segment (`tickets/`, `latency/`) names its user.

Besides a key-value map, a store holds token buckets for the rate limits of the host's workers:
`draw` takes tokens from several buckets in one atomic operation. Its arithmetic is `take_tokens`,
below, the same in every store and in Redis (`gatewayd/cluster/buckets.py` runs it as a Lua script); the bucket's state
is its value, `BUCKET`, which expires once the bucket would be full again: an absent bucket is full.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Protocol

# a token bucket's state as a store value: the tokens it held, and when (the store's clock, seconds)
BUCKET = struct.Struct(">dd")


class StoreFull(Exception):
    """`put` found no room for the entry, even after purging the expired ones; nothing was written."""


class HostStore(Protocol):
    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        """Set `key`; with `ttl` (seconds) the entry disappears after that long.

        A store of fixed size raises `StoreFull` when the entry does not fit.
        """

    def get(self, key: bytes) -> bytes | None:
        """The live value of `key`, or None."""

    def take(self, key: bytes) -> bytes | None:
        """Get and delete `key` atomically: of several processes taking one key, one gets it."""

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every live (key, value) whose key starts with `prefix`, in key order."""

    def draw(self, items: Sequence[tuple[bytes, int, float, float]]) -> list[tuple[int, float]]:
        """For each (key, want, rate per second, capacity): take up to `want` whole tokens from the
        token bucket at `key` (a negative `want` gives tokens back), as `take_tokens` says, at the
        store's clock; all of them in one atomic operation. Returns (granted, tokens left) per item.

        A store of fixed size raises `StoreFull` (and grants nothing) when the buckets do not fit.
        """

    def close(self) -> None:
        """Release the store's resources (the data stays for the other processes)."""


def take_tokens(
    state: bytes | None, now: float, want: int, rate: float, capacity: float
) -> tuple[int, float, bytes | None, float]:  # fmt: skip
    """One bucket's answer to a request for `want` tokens at `now`: (granted, tokens left, its new
    state or None when it is full, seconds until it is full).

    The bucket holds up to `capacity` tokens and gains `rate` a second; `state` None is a full
    bucket (it starts full, and an expired entry is one that refilled). Only whole tokens are
    granted, as many as it holds up to `want`; a negative `want` puts tokens back, up to its capacity.
    A clock that went back counts as no time passed.
    """
    if state is None:
        level = capacity
    else:
        tokens, stamp = BUCKET.unpack(state)
        level = min(capacity, tokens + max(0.0, now - stamp) * rate)
    if want < 0:
        granted = want
        level = min(capacity, level - want)
    else:
        granted = min(want, int(level))
        level -= granted
    if level >= capacity:
        return granted, level, None, 0.0
    return granted, level, BUCKET.pack(level, now), (capacity - level) / rate
