"""The host-wide store: one LMDB environment, memory-mapped by every worker of a gatewayd instance.

Chosen by `bench/store.py` on the reference 2-core machine, shared with other work (medians over
5 rounds, one process): take 15 µs vs 50 µs for SQLite in WAL mode, put 12 vs 54 µs, get 3.3 vs
12.5 µs, a scan of 8 entries 15 vs 79 µs. With two processes at once LMDB's p99 stays under
0.25 ms, SQLite's reaches 4 to 14 ms (its checkpoints). A shared-memory table in Python was not
built: `flock` alone costs it 2 µs per operation, and it would have to place values of up to
64 KiB, keep keys in order for `scan` and survive a worker dying mid-write, as LMDB does in C.

Layout: database `kv` maps a key to an 8-byte big-endian expiry (wall-clock nanoseconds, 0 for
never) and the value; database `expiry` indexes the entries that have one by expiry then key, so
that each `put` purges a few of the oldest expired entries cheaply; database `meta` counts the
bytes stored, which `put` keeps under a `HEADROOM`th of the map so that deleting (which takes free
pages too) always can. The wall clock, because an entry may outlive the process that wrote it.
Writers take LMDB's one write lock, which makes `take` atomic across processes, and `draw` too: it
settles a whole batch of token buckets (rate limits) in one write transaction; readers never wait. Nothing is flushed to disk: the contents are disposable (after a machine crash the folder
should be emptied rather than trusted), and a folder on tmpfs spares the disk the write-back.
"""

from __future__ import annotations

import os
import struct
import time

import lmdb

from .base import StoreFull, take_tokens

FILE_NAME = "host-store.lmdb"
MAX_KEY_BYTES = 511 - 8  # LMDB's key limit, less the expiry prefix of the index
HEADROOM = 3  # the map is this many times the bytes stored: its pages are seldom full, and deleting takes free ones
PURGE_PER_PUT = 8  # expired entries purged by each put: more than one, so purging outpaces expiry
PURGE_BATCH = 64  # expired entries purged per transaction when the store is full
_U64 = struct.Struct(">Q")
_NEVER = bytes(_U64.size)


def _footprint(key: bytes, record: bytes) -> int:
    """The bytes that an entry counts for: its key twice (the index has it too), its record, headers."""
    return 2 * len(key) + len(record) + 16


class LMDBStore:
    """`HostStore` over an LMDB environment in `directory`; open one per process, after it has started.

    `put` raises `StoreFull` when the entries would take more than a `HEADROOM`th of `map_size`.
    """

    def __init__(self, directory: str, *, map_size: int, clock=time.time, file_name: str = FILE_NAME):
        self._env = lmdb.open(
            os.path.join(directory, file_name), map_size=map_size, subdir=False, max_dbs=3,
            sync=False, metasync=False, writemap=True, readahead=False,
        )
        self._kv = self._env.open_db(b"kv")
        self._expiry = self._env.open_db(b"expiry")
        self._meta = self._env.open_db(b"meta")
        self._capacity = map_size // HEADROOM
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock() * 1e9)

    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        if not 0 < len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"a key must have 1 to {MAX_KEY_BYTES} bytes, not {len(key)}")
        now = self._now()
        record = (_NEVER if ttl is None else _U64.pack(max(1, now + int(ttl * 1e9)))) + value
        try:
            self._write(key, record, now)
        except (StoreFull, lmdb.MapFullError):
            try:
                self._purge_all(now)
                self._write(key, record, now)
            except lmdb.MapFullError:
                raise StoreFull(f"no room in the host store's map for {len(key) + len(value)} bytes") from None

    def _write(self, key: bytes, record: bytes, now: int) -> None:
        with self._env.begin(write=True) as txn:
            used = self._used(txn) - self._purge(txn, now, PURGE_PER_PUT)[1]
            self._commit_used(txn, self._replace(txn, key, record, used))

    def _replace(self, txn, key: bytes, record: bytes | None, used: int) -> int:
        """Set `key` to `record` (None: delete it) with its index entry; the bytes used after."""
        if record is None:
            old = txn.pop(key, db=self._kv)
        else:
            old = txn.replace(key, record, db=self._kv)
            used += _footprint(key, record)
            if not record.startswith(_NEVER):
                txn.put(record[:_U64.size] + key, b"", db=self._expiry)
        if old is not None:
            used -= _footprint(key, old)
            if not old.startswith(_NEVER) and (record is None or old[:_U64.size] != record[:_U64.size]):
                txn.delete(old[:_U64.size] + key, db=self._expiry)
        return used

    def _commit_used(self, txn, used: int) -> None:
        """Record the bytes used, or abort the transaction (by raising StoreFull) when they are too many."""
        if used > self._capacity:
            raise StoreFull(f"the host store holds up to {self._capacity} bytes, this write makes {used}")
        txn.put(b"used", _U64.pack(used), db=self._meta)

    def draw(self, items) -> list[tuple[int, float]]:
        """All the buckets in one write transaction: the cost of one `put` (~15 µs) for a whole batch."""
        for key, *_ in items:
            if not 0 < len(key) <= MAX_KEY_BYTES:
                raise ValueError(f"a key must have 1 to {MAX_KEY_BYTES} bytes, not {len(key)}")
        try:
            return self._draw(items)
        except (StoreFull, lmdb.MapFullError):
            try:
                self._purge_all(self._now())
                return self._draw(items)
            except lmdb.MapFullError:
                raise StoreFull(f"no room in the host store's map for {len(items)} token buckets") from None

    def _draw(self, items) -> list[tuple[int, float]]:
        out = []
        with self._env.begin(write=True) as txn:
            now = self._now()  # read holding the write lock, so that the processes' stamps never go back
            seconds = now / 1e9
            used = self._used(txn) - self._purge(txn, now, PURGE_PER_PUT)[1]
            for key, want, rate, capacity in items:
                state = self._value(txn.get(key, db=self._kv), now)
                granted, left, state, ttl = take_tokens(state, seconds, want, rate, capacity)
                record = None if state is None else _U64.pack(max(1, now + int(ttl * 1e9))) + state
                used = self._replace(txn, key, record, used)
                out.append((granted, left))
            self._commit_used(txn, used)
        return out

    def evict(self, nbytes: int) -> int:
        """Free at least `nbytes` by deleting the entries that expire soonest, expired or not (for a
        cache, whose entries all expire); the bytes freed."""
        freed = 0
        while freed < nbytes:
            with self._env.begin(write=True) as txn:
                purged, batch = self._purge(txn, 1 << 64, PURGE_BATCH)
                txn.put(b"used", _U64.pack(self._used(txn) - batch), db=self._meta)
            freed += batch
            if purged < PURGE_BATCH:  # nothing left that expires
                break
        return freed

    def _used(self, txn) -> int:
        used = txn.get(b"used", db=self._meta)
        return 0 if used is None else _U64.unpack(used)[0]

    def _purge(self, txn, now: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` expired entries, oldest first; return how many, and the bytes they freed."""
        cursor = txn.cursor(self._expiry)
        freed = purged = 0
        while purged < limit and cursor.first():
            index_key = cursor.key()
            if _U64.unpack_from(index_key)[0] > now:
                break
            key = index_key[_U64.size:]
            freed += _footprint(key, txn.pop(key, db=self._kv))
            cursor.delete()
            purged += 1
        return purged, freed

    def _purge_all(self, now: int) -> None:
        """Purge every expired entry, a batch per transaction (deleting takes free pages too), then
        commit one more transaction, noting when the store was full: LMDB reuses the pages that
        transaction N freed from transaction N + 2 on."""
        while True:
            with self._env.begin(write=True) as txn:
                purged, freed = self._purge(txn, now, PURGE_BATCH)
                txn.put(b"used", _U64.pack(self._used(txn) - freed), db=self._meta)
                if purged < PURGE_BATCH:
                    break
        with self._env.begin(write=True) as txn:
            txn.put(b"last-full", _U64.pack(now), db=self._meta)

    def _value(self, record: bytes | None, now: int) -> bytes | None:
        if record is None:
            return None
        expires = _U64.unpack_from(record)[0]
        if expires and expires <= now:
            return None
        return record[_U64.size:]

    def get(self, key: bytes) -> bytes | None:
        if not 0 < len(key) <= MAX_KEY_BYTES:
            return None
        with self._env.begin(db=self._kv) as txn:
            return self._value(txn.get(key), self._now())

    def take(self, key: bytes) -> bytes | None:
        if not 0 < len(key) <= MAX_KEY_BYTES:
            return None
        with self._env.begin(write=True, db=self._kv) as txn:
            record = txn.pop(key)
            if record is not None:
                if not record.startswith(_NEVER):
                    txn.delete(record[:_U64.size] + key, db=self._expiry)
                txn.put(b"used", _U64.pack(self._used(txn) - _footprint(key, record)), db=self._meta)
        return self._value(record, self._now())

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        now = self._now()
        found = []
        with self._env.begin(db=self._kv) as txn:
            cursor = txn.cursor()
            if cursor.set_range(prefix):
                for key, record in cursor:
                    if not key.startswith(prefix):
                        break
                    if (value := self._value(record, now)) is not None:
                        found.append((key, value))
        return found

    def close(self) -> None:
        self._env.close()
