"""Requests in flight to the origin, by cache key: concurrent misses for one key share one fetch.

The first request for a key leads: it registers a future, fetches, and resolves the future with the
stored entry (or None when the response could not be shared). Followers wait on the future, within
the route's timeout, then use the entry if it fits their request.
"""

from __future__ import annotations

import asyncio


class Flights:
    def __init__(self):
        self._running: dict[bytes, asyncio.Future] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self._running

    def get(self, key: bytes) -> asyncio.Future | None:
        return self._running.get(key)

    def lead(self, key: bytes) -> asyncio.Future:
        future = self._running[key] = asyncio.get_running_loop().create_future()
        return future

    def land(self, key: bytes, future: asyncio.Future, entry) -> None:
        if self._running.get(key) is future:
            del self._running[key]
        if not future.done():
            future.set_result(entry)
