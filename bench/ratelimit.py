"""What the `rate_limit` policy costs and how exactly it limits.

    python bench/ratelimit.py [--rounds 15] [--seconds 10] [--engine granian] [--skip-load]

1. The compiled step for a warm key holding credit, per key kind, and a whole `Table.handle` of a
   `respond` route with and without the policy: ns per call, median over rounds, this thread's CPU
   time (as `bench/observe.py`).
2. Leasing against the alternative of a synchronous store draw per request, on the host store
   (LMDB): the leased step is (1) and leases cost one `draw` per batch, off the request path; the
   alternative pays a write transaction on every request, alone and with a second process drawing
   from the same bucket at the same time (the host's other worker).
3. Accuracy: gatewayd with 2 workers, one limit keyed by route, a paced overload of 3.6 times the
   limit for `--seconds` from h2load (h2c, 16 connections): admitted against limit×T + burst.
4. On a fake clock (the tests' simulation, `tests/test_rate_limit_decisions.py`): a compliant client's
   requests refused, and what a steady overload admits, with the debt a worker may take trusting
   its belief of the host bucket (gatewayd's) or only a slice (the first design).
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from time import perf_counter_ns, thread_time_ns

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the fake-clock simulation of several workers

from gatewayd.config.load import load_bytes
from gatewayd.dispatch.compile import compile_table
from gatewayd.dispatch.exchange import Exchange
from gatewayd.policies import CompileContext
from gatewayd.policies.bucket import Budget
from gatewayd.policies.rate_limit import compile_policy
from gatewayd.runtime.kept import Generation
from gatewayd.runtime.status import RuntimeStatus
from gatewayd.store import LMDBStore, MemoryStore

BATCH = 10_000
LIMIT, BURST = 200, 50  # the load test's policy
CLIENTS, RATE_PER_CLIENT = 16, 45  # 720 requests a second: 3.6 times the limit
SCOPE = {
    "type": "http", "method": "GET", "path": "/hello", "raw_path": b"/hello", "query_string": b"",
    "http_version": "1.1", "scheme": "http", "client": ("127.0.0.1", 40000),
    "headers": [(b"host", b"localhost"), (b"user-agent", b"bench"), (b"accept", b"*/*"), (b"x-tenant", b"acme")],
}  # fmt: skip
FAST = {"limit": 10_000_000, "per": "1s", "burst": 1000}  # a warm key keeps credit between two rounds


def cpu_ns_per_call(call, rounds: int, calls: int, between=None) -> float:
    """Median over rounds of thread CPU ns per `call()`, less the loop's own cost."""
    per, empty = [], []
    for _ in range(rounds):
        t = thread_time_ns()
        for _ in range(calls):
            call()
        per.append((thread_time_ns() - t) / calls)
        t = thread_time_ns()
        for _ in range(calls):
            pass
        empty.append((thread_time_ns() - t) / calls)
        if between:
            between()
    return statistics.median(per) - statistics.median(empty)


def bench_steps(rounds: int) -> dict[str, float]:
    from gatewayd.policies.lease import LEASER

    out = {}
    for key in ("client_ip", "route", "header:X-Tenant", ["consumer", "header:X-Tenant"]):
        ctx = CompileContext(store=MemoryStore(), kept=Generation({}))
        ((_, step),) = compile_policy({**FAST, "key": key}, ctx, "bench").steps
        ex = Exchange(SCOPE, None, None, 0, b"r", False)
        ex.route_name, ex.consumer = "hello", "acme"
        now = time.time()

        def call(step=step, ex=ex, now=now):
            ex.extra = None
            step(ex, now)

        call()
        LEASER.flush(now)
        out[f"step, key {key}"] = cpu_ns_per_call(call, rounds, BATCH, lambda now=now: LEASER.flush(now))
    # a refusal: the key's bucket is empty and known to be until its next token
    ctx = CompileContext(store=MemoryStore(), kept=Generation({}))
    ((_, step),) = compile_policy({"limit": 1, "per": "1h", "key": "route"}, ctx, "bench-dry").steps
    ex = Exchange(SCOPE, None, None, 0, b"r", False)
    ex.route_name = "hello"
    now = time.time()
    for _ in range(3):
        step(ex, now)
        LEASER.flush(now)
    out["step, refused (dry key)"] = cpu_ns_per_call(lambda: step(ex, now), rounds, BATCH)
    return out


HANDLE_CONFIG = """
version: 1
policies:
  limited: {{rate_limit: {spec}}}
routes:
  - {{name: plain, match: {{path: /plain}}, respond: {{body: "hi"}}}}
  - {{name: hello, match: {{path: /hello}}, policies: [limited], respond: {{body: "hi"}}}}
"""


def bench_handle(rounds: int) -> tuple[float, float]:
    """`Table.handle` of a respond route, with and without the policy, its coroutine run to its end
    without an event loop (nothing in it waits)."""
    from gatewayd.policies.lease import LEASER

    spec = "{limit: 10000000, per: 1s, burst: 1000, key: route}"
    with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
        config = load_bytes(HANDLE_CONFIG.format(spec=spec).encode(), f.name)
    handle = compile_table(config, {}, RuntimeStatus(), None, MemoryStore(), Generation({})).handle
    plain = {**SCOPE, "path": "/plain", "raw_path": b"/plain"}

    async def nothing(message=None):
        return {"type": "http.request", "body": b"", "more_body": False}

    def request(scope):
        try:
            handle(scope, nothing, nothing).send(None)
        except StopIteration:
            return
        raise RuntimeError("the request waited")

    request(SCOPE)
    flush = lambda: LEASER.flush(time.time())
    on = cpu_ns_per_call(lambda: request(SCOPE), rounds, 2500, flush)
    return on, cpu_ns_per_call(lambda: request(plain), rounds, 2500)


def _sync_step(store, budget: Budget):
    """The alternative: no leases, every request draws its token from the host bucket."""
    keys: dict = {}

    def step(ex, now):
        value = ex.route_name
        key = keys.get(value)
        if key is None:
            key = keys[value] = b"ratelimit/bench/sync/%s" % value.encode()
        granted, _ = store.draw([(key, 1, budget.rate, budget.host_capacity)])[0]
        return None if granted else 429

    return step


def _hammer(directory: str, seconds: float, ready) -> None:
    store = LMDBStore(directory, map_size=64 << 20)
    budget = Budget.of(10_000_000, 1.0, 1000)
    ready.set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        store.draw([(b"ratelimit/bench/sync/hello", 1, budget.rate, budget.host_capacity)])
    store.close()


def bench_alternative(rounds: int) -> dict[str, float]:
    out = {}
    budget = Budget.of(10_000_000, 1.0, 1000)
    with tempfile.TemporaryDirectory() as d:
        store = LMDBStore(d, map_size=64 << 20)
        step = _sync_step(store, budget)
        ex = Exchange(SCOPE, None, None, 0, b"r", False)
        ex.route_name = "hello"
        now = time.time()
        out["sync draw per request, LMDB, alone"] = cpu_wall_ns(lambda: step(ex, now), rounds, 2000)
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        other = ctx.Process(target=_hammer, args=(d, rounds * 0.5 + 5, ready))
        other.start()
        ready.wait(30)
        time.sleep(0.2)
        out["sync draw per request, LMDB, with a second process drawing"] = cpu_wall_ns(
            lambda: step(ex, now), rounds, 2000
        )
        other.join(60)
        items = [(b"ratelimit/bench/batch/%d" % i, 10, budget.rate, budget.host_capacity) for i in range(64)]
        out["one lease batch of 1 key (LMDB draw)"] = cpu_wall_ns(lambda: store.draw(items[:1]), rounds, 2000)
        out["one lease batch of 64 keys (LMDB draw)"] = cpu_wall_ns(lambda: store.draw(items), rounds, 200)
        store.close()
    return out


def cpu_wall_ns(call, rounds: int, calls: int) -> float:
    """Median over rounds of wall-clock ns per call (a store's lock waits are not CPU time)."""
    per = []
    for _ in range(rounds):
        t = perf_counter_ns()
        for _ in range(calls):
            call()
        per.append((perf_counter_ns() - t) / calls)
    return statistics.median(per)


def run_load(engine: str, seconds: int) -> tuple[int, int, float]:
    from gatewayd_server import find_command
    from procs import Proc, free_ports, wait_http_ok

    port = free_ports(1)[0]
    config = f"""version: 1
server:
  listen: ["127.0.0.1:{port}"]
  engine: {engine}
  workers: 2
policies:
  shared: {{rate_limit: {{limit: {LIMIT}, per: 1s, burst: {BURST}, key: route}}}}
routes:
  - {{name: limited, match: {{path: /limited}}, policies: [shared], respond: {{json: {{ok: true}}}}}}
"""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gateway.yaml"
        path.write_text(config)
        (Path(d) / "logs").mkdir()
        proc = Proc("gatewayd", [find_command(None), "--config", str(path)], Path(d) / "logs" / "gatewayd.log")
        try:
            wait_http_ok(proc, port, "/health")
            time.sleep(1.0)  # both workers up
            total = CLIENTS * RATE_PER_CLIENT * seconds
            out = subprocess.run(
                ["h2load", "-c", str(CLIENTS), "-m", "1", "--rps", str(RATE_PER_CLIENT), "-n", str(total), f"http://127.0.0.1:{port}/limited"],
                capture_output=True, text=True, timeout=seconds * 6, check=False,
            ).stdout  # fmt: skip
        finally:
            proc.stop()
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx", out)
    took = re.search(r"finished in ([\d.]+)(m?s)", out)
    if not codes or not took:
        raise SystemExit(f"h2load failed:\n{out}")
    return int(codes.group(1)), int(codes.group(3)), float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)


def simulate() -> list[tuple]:
    from test_rate_limit_decisions import Host, ideal

    rows = []
    rnd = random.Random(1)
    for limit, per, burst in [(10, 1, 5), (100, 1, 10), (5, 60, 5), (1000, 1, 100)]:
        rate, capacity = Fraction(limit, per), max(burst, 1)
        times, t = [], 1_000_000.0
        while len(times) < 1000:  # bursts up to the bucket, spaced as the limit allows
            n = rnd.randint(1, capacity)
            for _ in range(n):
                times.append(t)
                t += rnd.random() * 2e-4
            t += float(n / rate) * (1 + rnd.random() * 0.3) + 4e-3
        assert all(ideal(times, rate, capacity))
        for workers in (1, 2):
            for trust in (True, False):
                host = Host(
                    {"limit": limit, "per": f"{per}s", "burst": burst}, workers, lambda: rnd.uniform(1e-4, 2e-3), trust
                )
                refused = sum(not host.request(rnd.randrange(workers), t) for t in times)
                over = Host(
                    {"limit": limit, "per": f"{per}s", "burst": burst}, workers, lambda: rnd.uniform(1e-4, 2e-3), trust
                )
                n = 6000 if limit >= 100 else 600
                admitted = sum(
                    over.request(rnd.randrange(workers), 1_000_000.0 + i / (3 * float(rate))) for i in range(n)
                )
                expected = float(rate) * (n - 1) / (3 * float(rate)) + capacity
                rows.append((f"{limit}/{per}s burst {burst}", workers, trust, refused, len(times), admitted, expected))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--engine", default="granian", choices=("granian", "hypercorn"))
    p.add_argument("--skip-load", action="store_true", help="no gatewayd and h2load run")
    args = p.parse_args()
    print("## Cost on the request path (thread CPU ns per call, median)\n")
    for name, ns in bench_steps(args.rounds).items():
        print(f"- {name}: {ns:.0f} ns")
    on, off = bench_handle(args.rounds)
    print(f"- Table.handle of a respond route: {on:.0f} ns with the policy, {off:.0f} ns without ({on - off:+.0f} ns)")
    print("\n## Leases against a synchronous draw per request (wall-clock ns per call, median)\n")
    for name, ns in bench_alternative(args.rounds).items():
        print(f"- {name}: {ns:.0f} ns")
    if not args.skip_load:
        ok, refused, seconds = run_load(args.engine, args.seconds)
        expected = LIMIT * seconds + BURST
        print(
            f"\n## Accuracy, 2 workers ({args.engine}), {(ok + refused) / seconds:.0f} requests/s for {seconds:.2f} s\n"
        )
        print(
            f"- admitted {ok}, expected {expected:.0f} (limit {LIMIT}/s × T + burst {BURST}): {100 * (ok - expected) / expected:+.2f}%"
        )
    print("\n## Fake clock: compliant bursty client, and a steady 3x overload\n")
    print("| policy | workers | debt | compliant refused | overload admitted | limit×T + burst |")
    print("| --- | --: | --- | --: | --: | --: |")
    for policy, workers, trust, refused, sent, admitted, expected in simulate():
        debt = "belief" if trust else "a slice"
        print(f"| {policy} | {workers} | {debt} | {refused} of {sent} | {admitted} | {expected:.0f} |")


if __name__ == "__main__":
    main()
