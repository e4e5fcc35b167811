"""What observing costs: the record call on the request path, a whole request with and without it,
and the once-a-second fold per request (off the request path).

    python bench/observe.py [--calls 2000000] [--rounds 21]

Prints the median over rounds of ns per call, in this thread's CPU time (so that other processes on
a shared machine skew it less than wall-clock time would). The record call is `Observer.record(exchange)`, as
`Table.handle` makes it once per request; the whole-request figures run `Table.handle` on a
`respond` route with a do-nothing ASGI `send`, once with a recorder and once with recording off.
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
from gatewayd.runtime.status import RuntimeStatus
from gatewayd.store import MemoryStore

CONFIG = b"""
version: 1
routes:
  - name: hello
    match: {path: /hello}
    respond: {body: "hi"}
"""
BATCH = 10_000


def _scope() -> dict:
    return {
        "type": "http", "method": "GET", "path": "/hello", "raw_path": b"/hello", "query_string": b"",
        "http_version": "1.1", "scheme": "http", "client": ("127.0.0.1", 40000),
        "headers": [(b"host", b"localhost"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    }  # fmt: skip


def bench_record(calls: int, rounds: int) -> float:
    observer = Observer(MemoryStore(), RuntimeStatus())
    record = observer.record
    scope = _scope()
    exchanges = []
    for i in range(BATCH):
        ex = Exchange(scope, None, None, perf_counter_ns(), b"%020d" % i, True)
        ex.route_name, ex.status, ex.t_start, ex.sent = "hello", 200, ex.t0 + 50_000, 2
        exchanges.append(ex)
    per_round = []
    for _ in range(rounds):
        spent = 0
        for _ in range(max(1, calls // BATCH // rounds)):
            t = thread_time_ns()
            for ex in exchanges:
                record(ex)
            spent += thread_time_ns() - t
            observer._pending.clear()  # not timed: the fold's job
        per_round.append(spent / (max(1, calls // BATCH // rounds) * BATCH))
    loop_only = []
    for _ in range(rounds):
        t = thread_time_ns()
        for ex in exchanges:
            pass
        loop_only.append((thread_time_ns() - t) / BATCH)
    return statistics.median(per_round) - statistics.median(loop_only)


def bench_handle(calls: int, rounds: int) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
        config = load_bytes(CONFIG, f.name)
    observer = Observer(MemoryStore(), RuntimeStatus())
    with_record = compile_table(config, {}, RuntimeStatus(), observer)
    without = compile_table(config, {}, RuntimeStatus(), None)
    scope = _scope()

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    async def run(table, n: int) -> float:
        handle = table.handle
        t = thread_time_ns()
        for _ in range(n):
            await handle(scope, receive, send)
        return (thread_time_ns() - t) / n

    async def main():
        on, off = [], []
        n = 2500  # recorded exchanges alive at once: what a worker at 10,000 requests/s holds between folds
        for _ in range(rounds):
            off.append(await run(without, n))
            on.append(await run(with_record, n))
            observer._pending.clear()
        return statistics.median(on), statistics.median(off)

    return asyncio.run(main())


def bench_fold(rounds: int) -> float:
    observer = Observer(MemoryStore(), RuntimeStatus())
    scope = _scope()
    per = []
    for r in range(rounds):
        for i in range(BATCH):
            ex = Exchange(scope, None, None, perf_counter_ns(), b"%020d" % i, True)
            ex.route_name, ex.status, ex.t_start, ex.sent = ("hello", "other")[i % 2], 200, ex.t0 + 50_000 + i, 2
            observer.record(ex)
        t = thread_time_ns()
        observer.fold()
        per.append((thread_time_ns() - t) / BATCH)
    return statistics.median(per)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2_000_000)
    p.add_argument("--rounds", type=int, default=21)
    args = p.parse_args()
    record = bench_record(args.calls, args.rounds)
    on, off = bench_handle(args.calls, args.rounds)
    fold = bench_fold(min(args.rounds, 11))
    print(f"record call (request path):           {record:7.0f} ns per call (median of {args.rounds} rounds)")
    print(f"Table.handle, respond route, recorded: {on:7.0f} ns per request")
    print(f"Table.handle, respond route, not:      {off:7.0f} ns per request (difference {on - off:+.0f} ns)")
    print(f"fold (off the request path):           {fold:7.0f} ns per request")


if __name__ == "__main__":
    main()
