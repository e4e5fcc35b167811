#!/usr/bin/env python3
"""Two gatewayd builds side by side, with nginx doing the same work, loaded in the same rounds.

    python3 bench/ab.py --baseline DIR [--scenario proxy] [--rounds 5] [--duration 4] [--workers 2]

bench/run compares one gatewayd with nginx; on a machine shared with other work, what it measures
moves with that work between two runs, and a before/after taken as two runs can say more about the
machine than about the change. This loads three servers in the same rounds, the order rotated every
round so that drifts hit all alike: the baseline build (gatewayd run from the source tree DIR, for
example a `git worktree` of main, by putting DIR first on PYTHONPATH), the current build (the
active virtualenv's), and nginx, over HTTP/1.1 (wrk, `--concurrency` connections) and h2c (h2load,
that many connections with `--streams` requests in flight on each), on one of bench/run's scenarios.

Per server and protocol it prints req/s, p50 and p99 (medians over the rounds), errors, the ratio of
req/s to nginx's, and CPU µs per response: the CPU time of all the server's processes over the
round divided by its responses, which depends far less than req/s on what else the machine runs.
Needs nginx, wrk and h2load; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gatewayd_server as gatewayd
import h2load
import nginx
import wrk
from procs import Proc, cpu_seconds, free_ports, wait_http_ok
from scenarios import by_name, fill


def start_gatewayd(command: str, config: str, port: int, workers: int, directory: Path, env: dict | None) -> Proc:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gatewayd.yaml").write_text(config)
    proc = Proc("gatewayd", [command, "--config", str(directory / "gatewayd.yaml"), "--listen", f"127.0.0.1:{port}"],
                directory / "gatewayd.log", env=env)
    wait_http_ok(proc, port, gatewayd.READY_PATH)
    if workers > 1:
        gatewayd.wait_all_workers(proc, port, workers)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", required=True, metavar="DIR", help="source tree of the baseline build")
    ap.add_argument("--scenario", default="proxy")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--streams", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nginx-workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=2)
    args = ap.parse_args()
    sc = by_name()[args.scenario]
    command = gatewayd.find_command(None)
    baseline = Path(args.baseline).resolve()
    if not (baseline / "gatewayd" / "__init__.py").is_file():
        ap.error(f"{baseline} holds no gatewayd package")
    baseline_env = {**os.environ, "PYTHONPATH": str(baseline)}
    with tempfile.TemporaryDirectory(prefix="gatewayd-ab-") as tmp, contextlib.ExitStack() as stack:
        d = Path(tmp)
        # workers start as `python -m gatewayd`, which puts their working directory first on sys.path:
        # one without a gatewayd package in it, so that PYTHONPATH decides for the baseline
        os.chdir(d)
        up_port, ng_plain, ng_h2c, gw_new, gw_old = free_ports(5)
        values = {"upstream_port": up_port}
        if sc.upstream_nginx:
            upstream = nginx.start("upstream nginx", fill(sc.upstream_nginx, **values), up_port, 1, d / "upstream")
            stack.callback(upstream.stop)
        listen = nginx.listen_directives(plain=ng_plain, h2c=ng_h2c)
        ng = nginx.start("nginx", fill(sc.nginx, listen=listen, **values), [ng_plain, ng_h2c], args.nginx_workers,
                         d / "nginx")
        stack.callback(ng.stop)
        scenario_yaml = fill(sc.gatewayd, **values)
        new = start_gatewayd(command, gatewayd.render(scenario_yaml, gw_new, args.workers), gw_new, args.workers,
                             d / "new", None)
        stack.callback(new.stop)
        old = start_gatewayd(command, gatewayd.render(scenario_yaml, gw_old, args.workers), gw_old, args.workers,
                             d / "old", baseline_env)
        stack.callback(old.stop)
        servers = {  # name: (HTTP/1.1 port, h2c port, pid whose process tree is the server)
            "gatewayd (baseline)": (gw_old, gw_old, old.pid),
            "gatewayd (current)": (gw_new, gw_new, new.pid),
            "nginx": (ng_plain, ng_h2c, ng.pid),
        }
        c, m = args.concurrency, args.streams

        def load(protocol: str, port: int, duration: float):
            url = f"http://127.0.0.1:{port}{sc.path}"
            if protocol == "HTTP/1.1":
                return wrk.run(url, c, 2, duration, sc.headers)
            return h2load.run(url, c, m, 2, duration, sc.headers, d / "h2load")[0]

        results: dict[tuple[str, str], list] = {}
        for protocol in ("HTTP/1.1", "h2c"):
            index = 0 if protocol == "HTTP/1.1" else 1
            for name, ports in servers.items():
                load(protocol, ports[index], args.warmup)
            for rnd in range(args.rounds):
                names = list(servers)
                k = rnd % len(names)
                for name in names[k:] + names[:k]:
                    time.sleep(0.5)
                    port, pid = servers[name][index], servers[name][2]
                    cpu0 = cpu_seconds(pid)
                    r = load(protocol, port, args.duration)
                    cpu1 = cpu_seconds(pid)
                    cpu_us = (cpu1 - cpu0) / r.requests * 1e6 if r.requests and cpu0 is not None else float("nan")
                    results.setdefault((protocol, name), []).append((r, cpu_us))
                    print(f"{protocol:8} round {rnd + 1}/{args.rounds} {name:20} {r.rps:8.0f} req/s  p50 {r.p50_ms:7.2f}"
                          f"  p99 {r.p99_ms:7.2f} ms  {cpu_us:6.1f} CPU µs/response  errors {r.errors}",
                          file=sys.stderr, flush=True)

    print(f"\n{sc.name}: {c} connections (h2c: x{m} streams), {args.workers} gatewayd workers, nginx "
          f"{args.nginx_workers}; {args.rounds} rounds of {args.duration:g} s; medians; load average now "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| server | protocol | req/s | ÷ nginx | p50 ms | p99 ms | CPU µs per response | errors |")
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for protocol in ("HTTP/1.1", "h2c"):
        reference = statistics.median(r.rps for r, _ in results[(protocol, "nginx")])
        for name in servers:
            runs = results[(protocol, name)]
            rps = statistics.median(r.rps for r, _ in runs)
            print(f"| {name} | {protocol} | {rps:.0f} | {rps / reference:.2f} | "
                  f"{statistics.median(r.p50_ms for r, _ in runs):.2f} | {statistics.median(r.p99_ms for r, _ in runs):.1f} | "
                  f"{statistics.median(u for _, u in runs):.1f} | {sum(r.errors for r, _ in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
