#!/usr/bin/env python3
"""The cache's memory bound: a key-churning load through a cached route, with the worker's RSS watched.

    python3 bench/cache_memory.py [--requests 40000] [--l1 64] [--body-kib 16]

gatewayd (1 worker: no shared tier, the L1 alone) caches every answer of an nginx upstream (a
`--body-kib` body, public for an hour) under a new key per request, so that what passes through is
many times `--l1` MiB and the L1 must evict. Prints the worker's RSS before (after a warm-up of
1,000 requests) and after, against the bound `l1_max + 64 MiB`, and the cache's own accounting.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gatewayd_server
import nginx
from procs import free_ports

CONCURRENCY = 32


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def churn(url: str, start: int, count: int) -> int:
    """`count` GETs of distinct keys from `start`, CONCURRENCY at a time; the number answered 200."""
    ok = 0
    next_key = iter(range(start, start + count))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=CONCURRENCY)) as client:

        async def worker():
            nonlocal ok
            for key in next_key:
                r = await client.get(f"/k/{key}")
                ok += r.status_code == 200

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40_000)
    ap.add_argument("--l1", type=int, default=64, help="l1_max in MiB")
    ap.add_argument("--body-kib", type=int, default=16)
    ap.add_argument("--gatewayd", default=None)
    args = ap.parse_args()
    command = gatewayd_server.find_command(args.gatewayd)
    with tempfile.TemporaryDirectory(prefix="gatewayd-cache-memory-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)
        up_port, gw_port = free_ports(2)
        www = tmp / "www"
        www.mkdir()
        (www / "body").write_bytes(b"x" * (args.body_kib * 1024))
        www.chmod(0o755)
        (www / "body").chmod(0o644)
        upstream = nginx.start("upstream", f"""
server {{
    listen 127.0.0.1:{up_port};
    location / {{ root {www}; try_files /body =404; add_header Cache-Control "public, max-age=3600"; }}
}}
""", up_port, 1, tmp / "nginx")  # fmt: skip
        config = gatewayd_server.render(f"""
cache: {{l1_max: {args.l1}MiB}}
upstreams:
  origin: {{targets: ["http://127.0.0.1:{up_port}"]}}
policies:
  cached: {{cache: {{mode: standard}}}}
routes:
  - {{match: {{path_prefix: /k/}}, policies: [cached], upstream: origin}}
""", gw_port, 1)  # fmt: skip
        gw = gatewayd_server.start(command, config, gw_port, 1, tmp / "gatewayd")
        try:
            url = f"http://127.0.0.1:{gw_port}"
            asyncio.run(churn(url, 0, 1000))
            before = rss_mib(gw.pid)
            started = time.monotonic()
            ok = asyncio.run(churn(url, 1000, args.requests))
            took = time.monotonic() - started
            after = rss_mib(gw.pid)
        finally:
            gw.stop()
            upstream.stop()
    bound = args.l1 + 64
    passed = after - before <= bound and ok == args.requests
    print("| measure | value |")
    print("|---|--:|")
    print(f"| requests (distinct keys) | {args.requests:,} in {took:.1f} s, {ok:,} answered 200 |")
    print(f"| bytes of bodies through the cache | {args.requests * args.body_kib / 1024:,.0f} MiB |")
    print(f"| l1_max | {args.l1} MiB |")
    print(f"| worker RSS after warm-up | {before:.1f} MiB |")
    print(f"| worker RSS at the end | {after:.1f} MiB |")
    print(f"| growth | {after - before:+.1f} MiB (bound: l1_max + 64 MiB = {bound} MiB) |")
    print("within the bound" if passed else "OVER THE BOUND")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
