"""Host store benchmark: put/get/take/scan latency of the candidate host-wide stores.

Run by hand (``python bench/store.py``), not in CI. Candidates: the LMDB store that gatewayd
ships, SQLite in WAL mode (the same semantics, written here for the comparison) and the
in-process `MemoryStore` as the floor (in the two-process rows each process has its own).

Each round runs every candidate in turn (rotated between rounds, so that drift on a shared
machine hurts none in particular), once with one process and once with two processes working
on the same store at the same time, each in a fresh interpreter on a fresh store, with the
garbage collector off. In each phase a process does `--ops` operations, timed one by one
(timer overhead included: it is in the floor too), the phases starting together in all
processes:

- put: a 256-byte session ticket with a 60 s ttl under a key of its own;
- get: each of those tickets again;
- scan: the 8 latency histograms (1 KiB each) under `latency/`, among those tickets, `--ops`/50
  times (`MemoryStore` looks at every key to scan, so it is no floor for this one);
- take: each of the tickets, so every take finds its key.

A line under the table gives the floor of a shared-memory table written in Python: the
`flock` lock and unlock around each of its operations, without the operation.

The table gives the median and the 99th percentile per operation in nanoseconds, over the
samples of every round and process.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.store import LMDBStore, MemoryStore
from gatewayd.store.host import DEFAULT_MAP_SIZE

OPS = ("put", "get", "scan", "take")
TICKET = os.urandom(256)
HISTOGRAM = os.urandom(1024)
HISTOGRAMS = 8


class SQLiteStore:
    """The `HostStore` semantics over SQLite in WAL mode, tuned for speed over durability."""

    PURGE_PER_PUT = 8

    def __init__(self, directory: str, clock=time.time):
        self._db = sqlite3.connect(os.path.join(directory, "store.sqlite"), isolation_level=None, timeout=10)
        self._clock = clock
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA mmap_size={DEFAULT_MAP_SIZE}")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL,"
                         " expires INTEGER NOT NULL) WITHOUT ROWID")
        self._db.execute("CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires > 0")

    def _now(self) -> int:
        return int(self._clock() * 1e9)

    def put(self, key: bytes, value: bytes, ttl: float | None = None) -> None:
        now = self._now()
        expires = 0 if ttl is None else now + int(ttl * 1e9)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM kv WHERE key IN (SELECT key FROM kv WHERE expires > 0 AND expires <= ?"
                   " ORDER BY expires LIMIT ?)", (now, self.PURGE_PER_PUT))
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, expires))
        db.execute("COMMIT")

    def get(self, key: bytes) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ? AND (expires = 0 OR expires > ?)",
                               (key, self._now())).fetchone()
        return None if row is None else row[0]

    def take(self, key: bytes) -> bytes | None:
        rows = self._db.execute("DELETE FROM kv WHERE key = ? RETURNING value, expires", (key,)).fetchall()
        if not rows or 0 < rows[0][1] <= self._now():
            return None
        return rows[0][0]

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        # Every bench prefix ends in "/", so incrementing its last byte bounds the range.
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        return self._db.execute("SELECT key, value FROM kv WHERE key >= ? AND key < ? AND (expires = 0 OR expires > ?)"
                                " ORDER BY key", (prefix, end, self._now())).fetchall()

    def close(self) -> None:
        self._db.close()


CANDIDATES = {
    "MemoryStore (in-process floor)": lambda directory: MemoryStore(),
    "LMDB (gatewayd's LMDBStore)": lambda directory: LMDBStore(directory, map_size=DEFAULT_MAP_SIZE),
    "SQLite WAL": SQLiteStore,
}


def worker(candidate: str, directory: str, index: int, ops: int, barrier, results) -> None:
    store = CANDIDATES[candidate](directory)
    keys = [b"tickets/%d/%08d" % (index, i) for i in range(ops)]
    for h in range(HISTOGRAMS):
        store.put(b"latency/%d" % h, HISTOGRAM)
    clock = time.perf_counter_ns
    samples = {}
    gc.disable()
    for op in OPS:
        times = []
        barrier.wait()
        if op == "put":
            for key in keys:
                t = clock()
                store.put(key, TICKET, 60)
                times.append(clock() - t)
        elif op == "get":
            for key in keys:
                t = clock()
                value = store.get(key)
                times.append(clock() - t)
                assert value == TICKET
        elif op == "take":
            for key in keys:
                t = clock()
                value = store.take(key)
                times.append(clock() - t)
                assert value == TICKET
        else:
            for _ in range(ops // 50):
                t = clock()
                found = store.scan(b"latency/")
                times.append(clock() - t)
                assert len(found) == HISTOGRAMS
        samples[op] = times
    gc.enable()
    store.close()
    results.put(samples)


def run(ctx, candidate: str, processes: int, ops: int) -> dict[str, list[int]]:
    with tempfile.TemporaryDirectory(prefix="store-bench-") as directory:
        CANDIDATES[candidate](directory).close()  # create the files before the workers race to
        barrier = ctx.Barrier(processes)
        results = ctx.Queue()
        workers = [ctx.Process(target=worker, args=(candidate, directory, i, ops, barrier, results))
                   for i in range(processes)]
        for w in workers:
            w.start()
        gathered = [results.get(timeout=300) for _ in workers]
        for w in workers:
            w.join(timeout=60)
            if w.exitcode != 0:
                raise SystemExit(f"{candidate}: a worker failed with exit code {w.exitcode}")
    return {op: [t for samples in gathered for t in samples[op]] for op in OPS}


def flock_floor(ops: int) -> list[int]:
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        clock = time.perf_counter_ns
        times = []
        for _ in range(ops):
            t = clock()
            fcntl.flock(fd, fcntl.LOCK_EX)
            fcntl.flock(fd, fcntl.LOCK_UN)
            times.append(clock() - t)
    return times


def percentile(sorted_samples: list[int], p: float) -> int:
    return sorted_samples[min(len(sorted_samples) - 1, int(p * len(sorted_samples)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000, help="operations per phase and process (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every candidate (default 3)")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    names = list(CANDIDATES)
    pooled = {(name, procs): {op: [] for op in OPS} for name in names for procs in (1, 2)}
    floor = []
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for procs in (1, 2):
                for op, samples in run(ctx, name, procs, args.ops).items():
                    pooled[name, procs][op].extend(samples)
        floor.extend(flock_floor(args.ops))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} rounds x {args.ops} ops per phase and process; ns per op, median / p99\n")
    print("| store | processes | " + " | ".join(OPS) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in OPS) + " |")
    for (name, procs), by_op in pooled.items():
        cells = []
        for op in OPS:
            s = sorted(by_op[op])
            cells.append(f"{statistics.median(s):,.0f} / {percentile(s, 0.99):,}")
        print(f"| {name} | {procs} | " + " | ".join(cells) + " |")
    floor.sort()
    print(f"\nShared-memory table in Python, floor per operation (flock lock + unlock, 1 process):"
          f" {statistics.median(floor):,.0f} / {percentile(floor, 0.99):,} ns")


if __name__ == "__main__":
    main()
