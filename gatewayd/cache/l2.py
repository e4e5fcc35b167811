"""The host-wide tier: stored responses shared by the host's workers, in an LMDB file of its own.

A response one worker fetched is a hit for the others. Keys start with the URL (path and query,
cut to fit LMDB's key limit) so that a purge by URL or by path prefix is one ordered scan; after
it, a hash of the whole key (namespace, host, key fields) names a URL's record, which lists the
request fields its responses vary on, and a hash of the variant names each stored response.
Surrogate keys (tags) index the records under `t/`. Every entry expires (when it could no longer
be used even stale); when the tier is full, the entries that expire soonest make room.

The tier implements the `get`/`put`/`take`/`scan` of a `HostStore` (gatewayd.store), so a store
on another engine (Redis, for a cluster) can take its place.
"""

from __future__ import annotations

import hashlib
import logging
import marshal

from ..store import LMDBStore, StoreFull
from .entry import Entry

log = logging.getLogger("gatewayd.cache")

FILE_NAME = "cache-l2.lmdb"
URL_BYTES = 384  # of the URL in a key: LMDB's keys hold 511 bytes
KEEP_VALIDATABLE = 600.0  # seconds a stale response with a validator is kept for revalidation


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=12).digest()


def _url_part(url: bytes) -> bytes:
    return b"c/" + url[:URL_BYTES] + b"\x00"


def variant_id(selected: tuple, consumer: str | None) -> bytes:
    return _h(marshal.dumps((selected, consumer)))


def expires_in(entry: Entry, now: float) -> float:
    """Seconds the shared tier keeps `entry`: while it is fresh or may be served stale or revalidated."""
    keep = max(entry.swr, entry.sie, KEEP_VALIDATABLE if entry.etag or entry.last_modified else 0.0)
    return max(1.0, entry.stale_at + keep - now)


class L2:
    def __init__(self, store):
        self.store = store  # LMDBStore, or any store with get/put/take/scan

    @classmethod
    def open(cls, state_dir: str, max_bytes: int) -> L2:
        return cls(LMDBStore(state_dir, map_size=max_bytes * 3, file_name=FILE_NAME))

    def lookup(self, key: bytes, url: bytes, select) -> tuple[tuple, Entry] | None:
        """The stored response for `key` whose variant `select(vary)` names: (vary, entry) or None.
        `select(vary) -> [(selected, consumer), ...]` in the order to try."""
        base = _url_part(url) + _h(key)
        record = self.store.get(base)
        if record is None:
            return None
        vary = marshal.loads(record)[0]
        for selected, consumer in select(vary):
            data = self.store.get(base + b"/" + variant_id(selected, consumer))
            if data is not None and (entry := Entry.loads(data)) is not None:
                return selected, entry
        return None

    def put(self, key: bytes, selected: tuple, entry: Entry, now: float) -> None:
        base = _url_part(entry.url) + _h(key)
        ttl = expires_in(entry, now)
        name = base + b"/" + variant_id(selected, entry.consumer)
        record = marshal.dumps((entry.vary, entry.url))
        try:
            self._put(base, record, ttl)
            self._put(name, entry.dumps(), ttl)
            for tag in entry.tags:
                self._put(b"t/" + tag[:200] + b"\x00" + name, b"", ttl)
        except (StoreFull, ValueError) as exc:
            log.debug("shared cache tier: not stored: %s", exc)

    def _put(self, key: bytes, value: bytes, ttl: float) -> None:
        try:
            self.store.put(key, value, ttl)
        except StoreFull:
            self.store.evict(len(key) * 2 + len(value) + 64)
            self.store.put(key, value, ttl)

    def purge_url(self, url: bytes, prefix: bool = False) -> int:
        """Delete the stored responses of `url` (every host, every variant), or of every URL it starts."""
        scan = (b"c/" + url[:URL_BYTES]) if prefix else _url_part(url)
        removed = 0
        for name, value in self.store.scan(scan):
            entry = Entry.loads(value)
            stored_url = entry.url if entry is not None else _record_url(value)
            if stored_url is None or (stored_url.startswith(url) if prefix else stored_url == url):
                self.store.take(name)
                removed += entry is not None
        return removed

    def purge_tag(self, tag: bytes) -> int:
        removed = 0
        index = b"t/" + tag[:200] + b"\x00"
        for name, _ in self.store.scan(index):
            self.store.take(name)
            removed += self.store.take(name[len(index) :]) is not None
        return removed

    def close(self) -> None:
        self.store.close()


def _record_url(value: bytes) -> bytes | None:
    """The URL a key's record names (None when it cannot be read)."""
    try:
        return marshal.loads(value)[1]
    except (EOFError, ValueError, TypeError, IndexError):
        return None
