"""Two gateways sharing one Redis against one gateway alone: throughput, Server-Timing, limit
accuracy, and what it costs while Redis is down.

    python bench/cluster.py [--rounds 3] [--seconds 4] [--samples 500] [--engine granian]

Every gatewayd here has `workers: 1`. Setups, measured side by side in each round (the order
rotates):

- `alone`: one gateway, no `cluster` section (its rate limits lease from its host store);
- `cluster`: one of two gateways sharing a redis-server (leases from Redis);
- `redis down`: the same gateway after Redis was killed (`fail_open`: the host store again).

1. Throughput: wrk, 50 connections for `--seconds`, on a route whose rate limit is far above the
   load (every request admitted: what leasing costs), against one gateway; and against both
   gateways of the cluster at once (25 connections each), summed.
2. Server-Timing (`total;dur`, ms with 3 decimals, so 1 µs steps): `--samples` sequential
   requests to each gateway, one to each in turn, on the admitted route and on a route over its
   limit (429): the median, and the interquartile mean, which tells differences below 1 µs.
3. Accuracy: h2load paced at 3.6 times a limit of 200/s (burst 50) for `--seconds` × 2, against
   the one gateway alone, and against the two gateways of the cluster at once (half the load each):
   admitted against limit × T + burst; with Redis down, each gateway limits alone (`fail_open`).
   Then the faults: how soon /health says down after Redis is killed, up after it answers again.
4. The Redis clients: µs per lease script call (one key, and 32 keys) from redis-py's asyncio
   client, with and without hiredis's parser, and from coredis; and a blocking GETDEL from
   redis-py (what a 0-RTT ticket costs a handshake).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import wrk  # noqa: E402
from gatewayd_server import find_command, start  # noqa: E402
from procs import free_ports  # noqa: E402
from redisproc import RedisServer  # noqa: E402

LIMIT, BURST = 200, 50
CLIENTS, RATE_PER_CLIENT = 16, 45  # 720 requests a second: 3.6 times the limit

CONFIG = """version: 1
server:
  listen: ["127.0.0.1:{port}"]
  engine: {engine}
  workers: 1
{cluster}policies:
  open: {{rate_limit: {{limit: 10000000, per: 1s, burst: 1000, key: route}}}}
  tight: {{rate_limit: {{limit: 1, per: 1h, burst: 1, key: route}}}}
  shared: {{rate_limit: {{limit: {limit}, per: 1s, burst: {burst}, key: route}}}}
routes:
  - {{name: open, match: {{path: /open}}, policies: [open], respond: {{json: {{ok: true}}}}}}
  - {{name: tight, match: {{path: /tight}}, policies: [tight], respond: {{json: {{ok: true}}}}}}
  - {{name: shared, match: {{path: /shared}}, policies: [shared], respond: {{json: {{ok: true}}}}}}
"""
CLUSTER = """cluster:
  redis: {{url: "{url}", timeout: 250ms}}
  on_error: fail_open
"""


def gateway(command: str, engine: str, directory: Path, redis_url: str | None):
    port = free_ports(1)[0]
    cluster = CLUSTER.format(url=redis_url) if redis_url else ""
    text = CONFIG.format(port=port, engine=engine, cluster=cluster, limit=LIMIT, burst=BURST)
    return start(command, text, port, 1, directory), port


def server_timing(ports: dict[str, int], path: str, samples: int) -> dict[str, tuple[float, float]]:
    """(median, interquartile mean) of `total;dur` (ms) of `samples` sequential requests to each
    gateway, one request to each in turn on kept-alive connections, so that whatever else the
    machine does weighs on all alike. The header has 1 µs steps: the interquartile mean tells
    differences below that."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=5) for name, port in ports.items()}
    durs: dict[str, list[float]] = {name: [] for name in ports}
    for _ in range(samples):
        for name, conn in conns.items():
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            durs[name].append(float(re.search(r"total;dur=([\d.]+)", r.getheader("server-timing")).group(1)))
    for conn in conns.values():
        conn.close()
    out = {}
    for name, values in durs.items():
        values.sort()
        middle = values[len(values) // 4 : len(values) - len(values) // 4]
        out[name] = statistics.median(values), statistics.fmean(middle)
    return out


def wrk_rps(ports: list[int], seconds: float) -> float:
    """Requests a second of wrk against each port at once (50 connections in all), summed."""
    each = 50 // len(ports)
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        runs = list(pool.map(lambda p: wrk.run(f"http://127.0.0.1:{p}/open", each, 1, seconds, {}), ports))
    return sum(r.rps for r in runs)


def h2load(port: int, clients: int, seconds: int) -> tuple[int, int, float]:
    total = clients * RATE_PER_CLIENT * seconds
    out = subprocess.run(
        ["h2load", "-c", str(clients), "-m", "1", "--rps", str(RATE_PER_CLIENT), "-n", str(total),
         f"http://127.0.0.1:{port}/shared"],
        capture_output=True, text=True, timeout=seconds * 6, check=False,
    ).stdout  # fmt: skip
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx", out)
    took = re.search(r"finished in ([\d.]+)(m?s)", out)
    if not codes or not took:
        raise SystemExit(f"h2load failed:\n{out}")
    return int(codes.group(1)), int(codes.group(3)), float(took.group(1)) / (1000 if took.group(2) == "ms" else 1)


def accuracy(ports: list[int], seconds: int) -> tuple[int, float, float]:
    """(admitted, expected, offered per second) of the paced overload spread over `ports`, at once."""
    with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
        runs = list(pool.map(lambda p: h2load(p, CLIENTS // len(ports), seconds), ports))
    took = max(r[2] for r in runs)  # h2load's own time, from its first request to its last answer
    ok = sum(r[0] for r in runs)
    return ok, LIMIT * took + BURST, sum(r[0] + r[1] for r in runs) / took


HANDLE = """
version: 1
{cluster}policies:
  open: {{rate_limit: {{limit: 10000000, per: 1s, burst: 1000, key: route{on_error}}}}}
  tight: {{rate_limit: {{limit: 1, per: 1h, burst: 1, key: route{on_error}}}}}
routes:
  - {{name: open, match: {{path: /open}}, policies: [open], respond: {{body: "hi"}}}}
  - {{name: tight, match: {{path: /tight}}, policies: [tight], respond: {{body: "hi"}}}}
"""


def request_path(rounds: int) -> dict[str, float]:
    """Thread CPU ns of `Table.handle` (as bench/ratelimit.py measures it) of an admitted and a
    refused request, alone and in a cluster (the request path reads no Redis: leases are settled
    between rounds from the host store, as they are off the request path)."""
    from ratelimit import SCOPE, cpu_ns_per_call

    from gatewayd.cluster import Cluster
    from gatewayd.config.load import load_bytes
    from gatewayd.dispatch.compile import compile_table
    from gatewayd.runtime.kept import Generation
    from gatewayd.runtime.status import RuntimeStatus
    from gatewayd.store import MemoryStore

    async def nothing(message=None):
        return {"type": "http.request", "body": b"", "more_body": False}

    out = {}
    variants = {"alone": ("", ""), "cluster, fail_open": (CLUSTER, ""), "cluster, fail_closed": (CLUSTER, ", on_error: fail_closed")}
    for name, (cluster, on_error) in variants.items():
        text = HANDLE.format(cluster=cluster.format(url="redis://127.0.0.1:1/0"), on_error=on_error)
        with tempfile.NamedTemporaryFile(suffix=".yaml") as f:
            config = load_bytes(text.encode(), f.name)
        member = Cluster(config.cluster, None, "bench") if config.cluster else None
        table = compile_table(config, {}, RuntimeStatus(), None, MemoryStore(), Generation({}), member)
        handle = table.handle

        def request(scope, handle=handle):
            try:
                handle(scope, nothing, nothing).send(None)
            except StopIteration:
                return
            raise RuntimeError("the request waited")

        from gatewayd.policies.lease import LEASER

        leaser = member.leaser if member else LEASER
        settle = lambda leaser=leaser: leaser.draw_from_stores(leaser.take(), time.time())  # noqa: E731
        for path in ("open", "tight"):
            scope = {**SCOPE, "path": f"/{path}", "raw_path": f"/{path}".encode()}
            for _ in range(3):
                request(scope)
                settle()
            out[f"{'admitted' if path == 'open' else '429'}, {name}"] = cpu_ns_per_call(
                lambda scope=scope: request(scope), rounds, 2500, settle
            )
    return out


def fault_times(redis: RedisServer, port: int) -> dict[str, float]:
    """Seconds from a kill of Redis to the gateway's /health saying down, while requests come (each
    worker finds out at its next call), and from Redis answering again to /health saying up (the
    probe's backoff, 2 s at most, after a long outage); and the slowest request meanwhile."""
    out = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def state() -> str:
        t = time.perf_counter()
        conn.request("GET", "/shared")
        conn.getresponse().read()
        out["slowest request, s"] = max(out.get("slowest request, s", 0.0), time.perf_counter() - t)
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())["cluster"]["redis"]

    redis.start()
    deadline = time.monotonic() + 10
    while state() != "up" and time.monotonic() < deadline:
        time.sleep(0.01)
    t = time.monotonic()
    redis.kill()
    while state() != "down" and time.monotonic() < deadline + 10:
        time.sleep(0.001)
    out["kill to down, s"] = time.monotonic() - t
    time.sleep(5)  # a long outage: the probe waits its longest between tries
    redis.start()
    t = time.monotonic()
    while state() != "up" and time.monotonic() < deadline + 30:
        time.sleep(0.01)
    out["answering again to up, s"] = time.monotonic() - t
    conn.close()
    return out


def clients(url: str, rounds: int) -> dict[str, float]:
    """µs per call (median of rounds of 300 sequential calls) of each client on `url`, the clients
    taking turns within each round."""
    import coredis
    import redis
    import redis.asyncio
    from redis.utils import HIREDIS_AVAILABLE

    from gatewayd.cluster.buckets import DRAW, bucket_key

    one = [bucket_key(b"bench/one")], [1, "1000000.0", "1000.0"]
    many = [bucket_key(b"bench/%d" % i) for i in range(32)], [x for _ in range(32) for x in (1, "1000000.0", "1000.0")]

    async def run() -> dict[str, float]:
        per: dict[str, list[float]] = {}
        plain = redis.asyncio.Redis.from_url(url)
        async with coredis.Redis.from_url(url) as other:  # coredis 6 runs its pool inside the block
            scripts = {
                "redis-py asyncio" + (" + hiredis" if HIREDIS_AVAILABLE else ""): plain.register_script(DRAW),
                "coredis": other.register_script(DRAW),
            }
            for _ in range(rounds):  # the clients in turn, each round: the machine's mood weighs on both
                for name, script in scripts.items():
                    for label, (keys, args) in (("1 key", one), ("32 keys", many)):
                        t = time.perf_counter()
                        for _ in range(300):
                            await script(keys=keys, args=args)
                        per.setdefault(f"{name}, {label}", []).append((time.perf_counter() - t) / 300 * 1e6)
        await plain.aclose()
        return {name: statistics.median(values) for name, values in per.items()}

    out = asyncio.run(run())
    blocking = redis.Redis.from_url(url, max_connections=1)
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(300):
            blocking.getdel(b"gatewayd/tickets/none")
        per.append((time.perf_counter() - t) / 300 * 1e6)
    out["redis-py blocking GETDEL (a ticket)"] = statistics.median(per)
    blocking.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--engine", default="granian", choices=("granian", "hypercorn"))
    args = p.parse_args()
    command = find_command(None)
    print(f"Load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        redis = RedisServer(d / "redis").start()
        procs = []
        try:
            alone, alone_port = gateway(command, args.engine, d / "alone", None)
            one, one_port = gateway(command, args.engine, d / "one", redis.url)
            two, two_port = gateway(command, args.engine, d / "two", redis.url)
            procs = [alone, one, two]
            rows: dict[str, list] = {}

            def add(name: str, value) -> None:
                rows.setdefault(name, []).append(value)

            for r in range(args.rounds):
                order = [("alone", alone_port), ("cluster", one_port)]
                for name, port in order[r % 2 :] + order[: r % 2]:
                    add(f"req/s, one gateway ({name})", wrk_rps([port], args.seconds))
                add("req/s, both gateways of the cluster", wrk_rps([one_port, two_port], args.seconds))
                for path, what in (("/open", "admitted"), ("/tight", "429")):
                    for name, (median, iqm) in server_timing(dict(order), path, args.samples).items():
                        add(f"Server-Timing ms, {what} ({name}): median", median)
                        add(f"Server-Timing ms, {what} ({name}): interquartile mean", iqm)
            acc = {
                "alone": accuracy([alone_port], args.seconds * 2),
                "cluster of two": accuracy([one_port, two_port], args.seconds * 2),
            }
            t_kill = time.monotonic()
            redis.kill()
            for r in range(args.rounds):
                add("req/s, one gateway (redis down)", wrk_rps([one_port], args.seconds))
                for path, what in (("/open", "admitted"), ("/tight", "429")):
                    pair = {"alone": alone_port, "cluster, redis down": one_port}
                    for name, (median, iqm) in server_timing(pair, path, args.samples).items():
                        add(f"Server-Timing ms, {what}, Redis down ({name}): median", median)
                        add(f"Server-Timing ms, {what}, Redis down ({name}): interquartile mean", iqm)
            acc["cluster of two, redis down"] = accuracy([one_port, two_port], args.seconds * 2)
            down_s = time.monotonic() - t_kill
            faults = fault_times(redis, one_port)
            log = (d / "one" / "gatewayd.log").read_text(errors="replace")
        finally:
            for proc in procs:
                proc.stop()
            redis.kill()
        redis = RedisServer(d / "redis-clients").start()
        try:
            client_figures = clients(redis.url, args.rounds)
        finally:
            redis.stop()
    print("## The request path in-process (thread CPU ns per Table.handle, median)\n")
    for name, ns in request_path(max(15, args.rounds)).items():
        print(f"- {name}: {ns:.0f} ns")
    print(f"\n## Throughput and Server-Timing ({args.engine}, workers: 1 each; medians over {args.rounds} rounds)\n")
    print("| measure | median | rounds |")
    print("| --- | --: | --- |")
    for name, values in rows.items():
        fmt = "{:.0f}" if name.startswith("req/s") else "{:.4f}"
        print(f"| {name} | {fmt.format(statistics.median(values))} | {', '.join(fmt.format(v) for v in values)} |")
    print(f"\n## Accuracy: limit {LIMIT}/s, burst {BURST}, paced overload of 3.6x for {args.seconds * 2} s\n")
    print("| setup | offered req/s | admitted | limit × T + burst | error |")
    print("| --- | --: | --: | --: | --: |")
    for name, (ok, expected, offered) in acc.items():
        print(f"| {name} | {offered:.0f} | {ok} | {expected:.0f} | {100 * (ok - expected) / expected:+.2f}% |")
    print("\n## Redis clients (µs per call, median over rounds of 300 sequential calls)\n")
    for name, us in client_figures.items():
        print(f"- {name}: {us:.0f} µs")
    errors = log.count("Traceback")
    print(f"\n## Faults\n\nRedis was down for {down_s:.0f} s of load; tracebacks in the gateway's log: {errors}.\n")
    for name, seconds in faults.items():
        print(f"- {name}: {seconds:.3f}")
    print(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
