"""A store private to one process: for a single worker, and the reference the others are tested against."""

from __future__ import annotations

import time

from .base import take_tokens


class MemoryStore:
    def __init__(self, clock=time.monotonic):
        self._data: dict[bytes, tuple[bytes, float | None]] = {}
        self._clock = clock

    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        self._data[key] = (value, None if ttl is None else self._clock() + ttl)

    def _live(self, key: bytes) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        return value

    def get(self, key: bytes) -> bytes | None:
        return self._live(key)

    def take(self, key: bytes) -> bytes | None:
        value = self._live(key)
        if value is not None:
            del self._data[key]
        return value

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        keys = sorted(k for k in self._data if k.startswith(prefix))
        return [(k, v) for k in keys if (v := self._live(k)) is not None]

    def draw(self, items) -> list[tuple[int, float]]:
        now = self._clock()
        data = self._data
        out = []
        for key, want, rate, capacity in items:
            granted, left, state, ttl = take_tokens(self._live(key), now, want, rate, capacity)
            if state is None:
                data.pop(key, None)
            else:
                data[key] = (state, now + ttl)
            out.append((granted, left))
        return out

    def close(self) -> None:
        self._data.clear()
