#!/usr/bin/env python3
"""Which HTTP client should a Python proxy use upstream? pyreqwest, aiohttp and httpx, side by side.

    python bench/upstream_clients.py [--rounds 3] [--duration 5] [--warmup 1]

For each client library it runs the same minimal ASGI proxy, each in a process of its own: Granian's
embedded server (one process, uvloop, ``Interfaces.ASGINL``, as gatewayd serves) forwarding
``GET /v1/items/42`` to an upstream nginx that answers 13 bytes of JSON, over pooled keep-alive
connections, with the response streamed back chunk by chunk as gatewayd does:

* pyreqwest (Rust's reqwest, gatewayd's client until it got its own): ``client.request(...).build_streamed()`` and a
  ``body_reader.read_chunk()`` loop, with the builder options gatewayd uses;
* aiohttp: a tuned ``ClientSession`` (``TCPConnector(limit=100, keepalive_timeout=60,
  ttl_dns_cache=None)``, ``auto_decompress=False``), streamed with ``resp.content.iter_any()``;
* httpx: an ``AsyncClient`` with explicit pool limits, streamed with ``aiter_raw()`` (its pool is
  known to slow down badly with many requests in flight: encode/httpx#3215);

and, as the reference, nginx proxying to the same upstream (``upstream`` block with ``keepalive 64``,
HTTP/1.1, one worker by default like the proxies' one process). Every proxy copies the upstream's
status and headers (less hop-by-hop fields, ``date`` and ``server``) and its body; none adds headers.

All of them run at once on free loopback ports; after one checked request and ``--warmup`` seconds
of unrecorded load each, wrk (``-t2 -c50`` by default) loads them in turn for ``--rounds`` rounds of
``--duration`` seconds, the order rotated every round so that drifts of a shared machine hit all
alike. The Markdown table gives the medians over the rounds, the errors summed over them, the
proxy's CPU use while loaded (all its processes and threads, in cores) and its rate as a fraction of
nginx's. aiohttp and httpx are only needed here: a library that is not installed is skipped with a
note (``pip install aiohttp httpx``).

Needs nginx and wrk (Debian: ``apt-get install -y nginx-light wrk``). Every process it starts is
stopped at the end, on errors and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nginx
import wrk
from procs import Proc, StartupError, free_ports, wait_http_ok

PATH = "/v1/items/42"
EXPECT_BODY = b'{"id": "42"}\n'
CLIENTS = ("pyreqwest", "aiohttp", "httpx")
# the distribution that provides each client, for the version line
DISTRIBUTIONS = {"pyreqwest": "pyreqwest", "aiohttp": "aiohttp", "httpx": "httpx"}
# not copied from the upstream's response (RFC 9110 section 7.6.1, and what the serving side sets itself)
DROP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
     "date", "server"}
)

UPSTREAM_SNIPPET = """
server {{
    listen 127.0.0.1:{port};
    location / {{
        default_type application/json;
        return 200 '{{"id": "42"}}\\n';
    }}
}}
"""

REFERENCE_SNIPPET = """
upstream items {{
    server 127.0.0.1:{upstream};
    keepalive 64;
}}
server {{
    listen 127.0.0.1:{port};
    location / {{
        proxy_pass http://items;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
    }}
}}
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the proxy, one client library per process ------------------------------------------------


async def _pyreqwest_forwarder():
    from pyreqwest.client import ClientBuilder

    client = (
        ClientBuilder()
        .follow_redirects(False)
        .gzip(False)
        .brotli(False)
        .zstd(False)
        .deflate(False)
        .tcp_nodelay(True)
        .build()
    )

    async def forward(url: str, send) -> None:
        async with client.request("GET", url).build_streamed() as resp:
            headers = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in resp.headers.items()
                if name not in DROP
            ]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            reader = resp.body_reader
            while (chunk := await reader.read_chunk()) is not None:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return forward, client.close


async def _aiohttp_forwarder():
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=60, ttl_dns_cache=None),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, connect=5),
    )

    async def forward(url: str, send) -> None:
        async with session.get(url, allow_redirects=False) as resp:
            headers = [(k.lower(), v) for k, v in resp.raw_headers if k.lower().decode("latin-1") not in DROP]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return forward, session.close


async def _httpx_forwarder():
    import httpx

    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=60),
        timeout=httpx.Timeout(None, connect=5),
        follow_redirects=False,
        trust_env=False,
    )

    async def forward(url: str, send) -> None:
        async with client.stream("GET", url) as resp:
            headers = [(k.lower(), v) for k, v in resp.headers.raw if k.lower().decode("latin-1") not in DROP]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": headers})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return forward, client.aclose


FORWARDERS = {"pyreqwest": _pyreqwest_forwarder, "aiohttp": _aiohttp_forwarder, "httpx": _httpx_forwarder}


def make_app(upstream: str, forward):
    """The ASGI app: the request's path and query sent on to ``upstream`` with ``forward``; 502 if that
    fails before the response has started (after that, the connection is dropped)."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        qs = scope.get("query_string") or b""
        url = upstream + scope["path"] + ("?" + qs.decode("latin-1") if qs else "")
        started = False

        async def tracking_send(message):
            nonlocal started
            started = True
            await send(message)

        try:
            await forward(url, tracking_send)
        except Exception:
            if started:
                raise
            await send({"type": "http.response.start", "status": 502,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"upstream error\n", "more_body": False})

    return app


async def _serve(client: str, port: int, upstream: str) -> None:
    import asyncio

    from granian.constants import Interfaces
    from granian.server.embed import Server

    forward, close = await FORWARDERS[client]()  # inside the serving loop
    server = Server(make_app(upstream, forward), address="127.0.0.1", port=port,
                    interface=Interfaces.ASGINL, log_enabled=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
        server.stop()
        await asyncio.wait_for(serving, timeout=5)
    finally:
        stopping.cancel()
        await close()


def serve_main(client: str, port: int, upstream: str) -> int:
    import uvloop

    uvloop.run(_serve(client, port, upstream))
    return 0


# --- the harness -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    port: int
    proc: Proc
    runs: list = field(default_factory=list)  # wrk results, one per round
    cores: list[float] = field(default_factory=list)  # the target's CPU use per round, in cores

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid`` (all threads)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) "
        if int(fields[2]) == pgid:  # fields: state ppid pgrp session ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / tick


def check(target: Target) -> None:
    """One request: it must answer 200 with the upstream's 13 bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=5)
    try:
        conn.request("GET", PATH)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or body != EXPECT_BODY:
        raise StartupError(f"{target.name}: GET {PATH} -> {resp.status} {body!r}, expected 200 {EXPECT_BODY!r}")


def version(module: str) -> str | None:
    """The installed version of a module's distribution, or None when it cannot be imported."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "?"


def nginx_version() -> str:
    out = subprocess.run([nginx.nginx_binary(), "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stderr or out.stdout).strip().split("/")[-1]


def table(targets: list[Target], reference: Target) -> str:
    ref_rps = reference.median("rps")
    lines = [
        "| client | requests/s (median) | p50 ms | p99 ms | errors | proxy CPU (cores) | ratio to nginx |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in targets:
        ratio = t.median("rps") / ref_rps if ref_rps else float("nan")
        lines.append(
            f"| {t.name} | {t.median('rps'):,.0f} | {t.median('p50_ms'):.2f} | {t.median('p99_ms'):.2f} "
            f"| {t.errors} | {statistics.median(t.cores):.2f} | {ratio:.3f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    wanted = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CLIENTS))
    if unknown:
        raise SystemExit(f"--clients: unknown {', '.join(unknown)} (known: {', '.join(CLIENTS)})")
    versions = {c: version(c) for c in wanted}
    notes = [f"{c} is not installed: its row is skipped (pip install {DISTRIBUTIONS[c]})"
             for c in wanted if versions[c] is None]
    clients = [c for c in wanted if versions[c] is not None]
    for note in notes:
        log(note)

    procs: list[Proc] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="upstream-clients-") as tmp:
        tmpdir = Path(tmp)
        try:
            upstream_port, ref_port, *client_ports = free_ports(2 + len(clients))
            procs.append(nginx.start("upstream nginx", UPSTREAM_SNIPPET.format(port=upstream_port),
                                     upstream_port, args.upstream_workers, tmpdir / "upstream"))
            ref = nginx.start("nginx", REFERENCE_SNIPPET.format(upstream=upstream_port, port=ref_port),
                              ref_port, args.nginx_workers, tmpdir / "nginx")
            procs.append(ref)
            reference = Target("nginx (reference)", ref_port, ref)
            upstream = f"http://127.0.0.1:{upstream_port}"
            for client, port in zip(clients, client_ports):
                argv = [sys.executable, str(Path(__file__).resolve()), "--serve", client,
                        "--port", str(port), "--upstream", upstream]
                proc = Proc(f"{client} proxy", argv, tmpdir / f"{client}.log")
                procs.append(proc)
                wait_http_ok(proc, port, PATH)
                targets.append(Target(f"{client} {versions[client]}", port, proc))
            targets.append(reference)
            for t in targets:
                check(t)

            if args.warmup > 0:
                for t in targets:
                    log(f"warm-up: {t.name}, {args.warmup} s")
                    wrk.run(t.url, args.connections, args.threads, args.warmup, {})
            for r in range(args.rounds):
                k = r % len(targets)
                order = targets[k:] + targets[:k]
                for t in order:
                    cpu0, t0 = group_cpu_s(t.proc.pid), time.monotonic()
                    result = wrk.run(t.url, args.connections, args.threads, args.duration, {})
                    cpu, wall = group_cpu_s(t.proc.pid) - cpu0, time.monotonic() - t0
                    if not t.proc.alive():
                        raise RuntimeError(f"{t.name} {t.proc.exit_description()} under load:\n{t.proc.tail()}")
                    t.runs.append(result)
                    t.cores.append(cpu / wall if wall > 0 else 0.0)
                    log(f"round {r + 1}/{args.rounds} {t.name}: {result.rps:,.0f} req/s, "
                        f"p99 {result.p99_ms:.2f} ms, {result.errors} errors, {t.cores[-1]:.2f} cores")
        finally:
            for proc in reversed(procs):
                proc.stop()

    load_after = os.getloadavg()
    fmt = lambda la: " ".join(f"{x:.2f}" for x in la)
    print(f"## Proxy upstream clients: GET {PATH}, 13-byte JSON upstream\n")
    print(f"wrk -t{args.threads} -c{args.connections}, {args.rounds} rounds of {args.duration} s "
          f"(order rotated each round, {args.warmup} s warm-up each); medians over the rounds, errors summed. "
          f"Proxies: Granian embedded server, 1 process, uvloop; nginx {nginx_version()} reference with "
          f"{args.nginx_workers} worker(s), upstream nginx with {args.upstream_workers}. "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, granian {version('granian') or '?'}.\n")
    print(table(targets, reference))
    print()
    for note in notes:
        print(f"* {note}")
    print(f"* load average (1/5/15 min): {fmt(load_before)} before, {fmt(load_after)} after")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="bench/upstream_clients.py",
        description="A minimal Granian proxy with pyreqwest, aiohttp and httpx upstream, against nginx (loopback only).",
    )
    ap.add_argument("--rounds", type=int, default=3, help="wrk runs per target; the table shows medians (default 3)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded load per target first, 0 to skip (default 1)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    ap.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    ap.add_argument("--clients", default=",".join(CLIENTS), help=f"comma-separated subset of {', '.join(CLIENTS)}")
    ap.add_argument("--nginx-workers", type=int, default=1, help="worker_processes of the reference nginx (default 1)")
    ap.add_argument("--upstream-workers", type=int, default=1, help="worker_processes of the upstream nginx (default 1)")
    # internal: run one proxy in this process
    ap.add_argument("--serve", choices=CLIENTS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("rounds", "duration", "connections", "threads", "nginx_workers", "upstream_workers"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        ap.error("--warmup must be >= 0")
    if args.serve and (args.port is None or not args.upstream):
        ap.error("--serve needs --port and --upstream")
    return args


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve_main(args.serve, args.port, args.upstream)
    signal.signal(signal.SIGTERM, _terminate)  # stop the children as on Ctrl-C
    try:
        return run(args)
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130
    except StartupError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
