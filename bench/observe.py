"""What observing costs, in process: the record call on the request path, whole requests with and
without it, the gateway's own 404 and 405 next to a `respond` route, and the fold (off the request
path) per request and per block.

    python bench/observe.py [--calls 200000] [--rounds 21]

Prints medians over rounds, in this thread's CPU time (so that other processes on a shared machine
skew it less than wall-clock time would); the fold's slices too (one block of rows each: what the
serving loop waits for between two requests, when nothing else takes the core). The record call is `Observer.record(exchange)`, as `Table.handle`
makes it once per request; the whole-request figures run `Table.handle` with a do-nothing ASGI `send`,
on a table compiled with recording and on one compiled with `observability.record: false`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from time import perf_counter_ns, thread_time_ns

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.config.load import load_bytes
from gatewayd.dispatch.compile import compile_table
from gatewayd.dispatch.exchange import Exchange
from gatewayd.observe import Observer
from gatewayd.observe.recorder import BLOCK
from gatewayd.runtime.status import RuntimeStatus
from gatewayd.store import MemoryStore

CONFIG = b"""
version: 1
observability: {record: %s}
routes:
  - name: hello
    match: {path: /hello, methods: [GET]}
    respond: {body: "hi"}
  - name: other
    match: {path: /other}
    respond: {body: "other"}
"""


def _scope(path: str = "/hello", method: str = "GET") -> dict:
    return {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
        "http_version": "1.1", "scheme": "http", "client": ("127.0.0.1", 40000),
        "headers": [(b"host", b"localhost"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    }  # fmt: skip


def _exchanges(n: int) -> list[Exchange]:
    scope = _scope()
    out = []
    for i in range(n):
        ex = Exchange(scope, None, None, perf_counter_ns(), b"%020d" % i, True)
        ex.route_name, ex.status, ex.t_start, ex.sent = ("hello", "other")[i % 2], 200, ex.t0 + 50_000 + i, 2
        out.append(ex)
    return out


def bench_record(calls: int, rounds: int) -> float:
    observer = Observer(MemoryStore(), RuntimeStatus())
    record = observer.record
    exchanges = _exchanges(BLOCK)
    per_round = []
    batches = max(1, calls // BLOCK // rounds)
    for _ in range(rounds):
        spent = 0
        for _ in range(batches):
            t = thread_time_ns()
            for ex in exchanges:
                record(ex)
            spent += thread_time_ns() - t
            observer.recorder.take()  # not timed: the fold's job
        per_round.append(spent / (batches * BLOCK))
    loop_only = []
    for _ in range(rounds):
        t = thread_time_ns()
        for ex in exchanges:
            pass
        loop_only.append((thread_time_ns() - t) / BLOCK)
    return statistics.median(per_round) - statistics.median(loop_only)


def bench_handle(calls: int, rounds: int) -> dict[str, float]:
    """ns per request of Table.handle: (path, method) -> table -> median over rounds."""
    tables = {}
    with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
        for on in (True, False):
            config = load_bytes(CONFIG % (b"true" if on else b"false"), f.name)
            observer = Observer(MemoryStore(), RuntimeStatus())
            observer.configure(config.observability)
            tables[on] = (compile_table(config, {}, RuntimeStatus(), observer), observer)
    cases = {"respond": _scope(), "404": _scope("/nowhere/at/all"), "405": _scope("/hello", "POST")}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run(table, scope, n: int) -> float:
        handle = table.handle
        t = thread_time_ns()
        for _ in range(n):
            await handle(scope, receive, send)
        return (thread_time_ns() - t) / n

    async def main():
        out = {}
        n = 2000
        for name, scope in cases.items():
            on, off = [], []
            for _ in range(rounds):
                off.append(await run(tables[False][0], scope, n))
                on.append(await run(tables[True][0], scope, n))
                tables[True][1].fold()
            out[name] = (statistics.median(on), statistics.median(off))
        return out

    return asyncio.run(main())


def bench_fold(rounds: int) -> tuple[float, float, float]:
    """(ns per request; median and longest slice in ms of this thread's CPU time): one slice folds one block."""
    observer = Observer(MemoryStore(), RuntimeStatus())
    exchanges = _exchanges(BLOCK)
    observer.fold()  # numpy's first calls are slower
    per, slices = [], []
    for _ in range(rounds):
        for _ in range(3):
            for ex in exchanges:
                observer.record(ex)
        t = w = thread_time_ns()
        for _ in observer._fold_steps():
            slices.append((thread_time_ns() - w) / 1e6)
            w = thread_time_ns()
        per.append((thread_time_ns() - t) / (3 * BLOCK))
    return statistics.median(per), statistics.median(slices), max(slices)


def bench_publish(rounds: int) -> float:
    """ms of one publish (snapshot, JSON, zlib, store), with two routes' figures."""
    observer = Observer(MemoryStore(), RuntimeStatus())
    for ex in _exchanges(BLOCK):
        observer.record(ex)
    observer.fold()
    out = []
    for _ in range(rounds):
        t = thread_time_ns()
        observer.publish()
        out.append((thread_time_ns() - t) / 1e6)
    return statistics.median(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args()
    record = bench_record(args.calls, args.rounds)
    handle = bench_handle(args.calls, args.rounds)
    fold, slice_ms, longest = bench_fold(min(args.rounds, 11))
    publish = bench_publish(min(args.rounds, 11))
    print(f"record call (request path):            {record:7.0f} ns per call (median of {args.rounds} rounds)")
    for name, (on, off) in handle.items():
        print(f"Table.handle, {name:<8} recorded / not: {on:7.0f} / {off:5.0f} ns per request (difference {on - off:+.0f} ns)")
    print(f"fold (off the request path):           {fold:7.0f} ns per request; a slice (one block of {BLOCK} rows) "
          f"{slice_ms:.2f} ms, longest {longest:.2f} ms")
    print(f"publish (once a second):               {publish:7.2f} ms")


if __name__ == "__main__":
    main()
