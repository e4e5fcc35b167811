"""A small bounded-time HTTP/3 load generator on aioquic, the same client for every server.

``python bench/h3load.py URL --connections C --streams M --duration S --ca FILE``
opens C QUIC connections and keeps M requests in flight on each (each stream
sends its next request as soon as the previous response has ended, like wrk's
connections) for S seconds, then waits for the requests in flight (at most
``--timeout``) and prints one line, ``H3LOAD_RESULT {json}``: requests,
duration, status and socket errors, latency percentiles (request sent to
response end) in microseconds, and the median of ``Server-Timing: total;dur``
over the responses that carry one. ``--requests N`` stops after N requests
instead (sequential sampling: ``--connections 1 --streams 1``).
``--processes P`` splits the connections over P processes.

It is Python, so it uses a core's worth of CPU for a few thousand requests a
second; the servers it measures share the machine with it. bench/run records
its CPU time so a client-bound run can be recognised.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import ssl
import statistics
import sys
import time
from urllib.parse import urlsplit

from loadresult import percentile

MARKER = "H3LOAD_RESULT "


BACKENDS = ("aioquic", "qh3")


def _imports(backend: str = "aioquic"):
    """aioquic, or qh3 (its fork with a Rust core, which niquests uses): the same API."""
    import importlib

    if backend not in BACKENDS:
        raise ValueError(f"unknown HTTP/3 client backend {backend!r}")
    try:
        m = lambda name: importlib.import_module(f"{backend}.{name}")
        return (m("asyncio.client").connect, m("asyncio.protocol").QuicConnectionProtocol,
                m("h3.connection").H3_ALPN, m("h3.connection").H3Connection, m("h3.events").DataReceived,
                m("h3.events").HeadersReceived, m("quic.configuration").QuicConfiguration,
                m("quic.events").ConnectionTerminated)
    except ImportError:
        raise SystemExit(f"the HTTP/3 runs need {backend}: pip install -e '.[bench]'") from None


def parse_server_timing(value: str | None, metric: str = "total") -> float | None:
    """The dur= of ``metric`` in a Server-Timing header value, in ms."""
    if not value:
        return None
    for entry in value.split(","):
        parts = [p.strip() for p in entry.split(";")]
        if parts[0] != metric:
            continue
        for param in parts[1:]:
            key, _, val = param.partition("=")
            if key.strip().lower() == "dur":
                try:
                    return float(val.strip().strip('"'))
                except ValueError:
                    return None
    return None


def make_protocol(backend: str = "aioquic"):
    (_, QuicConnectionProtocol, _, H3Connection, DataReceived, HeadersReceived, _,
     ConnectionTerminated) = _imports(backend)

    class H3Client(QuicConnectionProtocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.http = H3Connection(self._quic)
            self.pending: dict[int, list] = {}  # stream id -> [future, status, server_timing, body]
            self.closed: str | None = None

        def quic_event_received(self, event) -> None:
            if isinstance(event, ConnectionTerminated):
                self.closed = event.reason_phrase or f"error {event.error_code}"
                for r in self.pending.values():
                    if not r[0].done():
                        r[0].set_exception(ConnectionError(f"connection closed: {self.closed}"))
                self.pending.clear()
            for ev in self.http.handle_event(event):
                r = self.pending.get(getattr(ev, "stream_id", None))
                if r is None:
                    continue
                if isinstance(ev, HeadersReceived):
                    for k, v in ev.headers:
                        if k == b":status":
                            r[1] = int(v)
                        elif k == b"server-timing":
                            r[2] = v.decode("latin-1")
                elif isinstance(ev, DataReceived) and r[3] is not None:
                    r[3] += ev.data
                if getattr(ev, "stream_ended", False):
                    del self.pending[ev.stream_id]
                    if not r[0].done():
                        r[0].set_result(None)

        async def get(self, head: list[tuple[bytes, bytes]], body: bool = False):
            """(status, Server-Timing value, body if asked for)."""
            if self.closed:
                raise ConnectionError(f"connection closed: {self.closed}")
            stream_id = self._quic.get_next_available_stream_id()
            self.http.send_headers(stream_id, head, end_stream=True)
            r = self.pending[stream_id] = [self._loop.create_future(), 0, None, b"" if body else None]
            self.transmit()
            await r[0]
            return r[1], r[2], r[3]

    return H3Client


async def load(url: str, connections: int, streams: int, duration: float, requests: int | None,
               headers: list[tuple[str, str]], ca: str | None, timeout: float, server_name: str,
               backend: str = "aioquic") -> dict:
    connect, _, H3_ALPN, _, _, _, QuicConfiguration, _ = _imports(backend)
    H3Client = make_protocol(backend)
    u = urlsplit(url)
    host, port = u.hostname, u.port or 443
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", u.netloc.encode()), (b":path", path.encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers]

    def config():
        c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
        if ca:
            c.load_verify_locations(ca)
        else:
            c.verify_mode = ssl.CERT_NONE
        return c

    latencies: list[float] = []
    timings: list[float] = []
    counts = {"requests": 0, "status": 0, "socket": 0}
    loop = asyncio.get_running_loop()
    budget = [requests]  # remaining requests to start, or None for time-bound
    stop_at = [None]

    def may_start() -> bool:
        if budget[0] is not None:
            if budget[0] <= 0:
                return False
            budget[0] -= 1
            return True
        return loop.time() < stop_at[0]

    async def stream_loop(client) -> None:
        while may_start():
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    status, st, _ = await client.get(head)
            except (ConnectionError, TimeoutError, OSError):
                counts["socket"] += 1
                if client.closed:
                    return
                continue
            latencies.append(time.perf_counter() - t0)
            counts["requests"] += 1
            if status >= 400 or status == 0:
                counts["status"] += 1
            d = parse_server_timing(st)
            if d is not None:
                timings.append(d)

    async def connection(ready: asyncio.Event, go: asyncio.Event) -> None:
        try:
            async with connect(host, port, configuration=config(), create_protocol=H3Client) as client:
                ready.set()
                await go.wait()
                await asyncio.gather(*(stream_loop(client) for _ in range(streams)))
        except (ConnectionError, OSError, TimeoutError):
            counts["socket"] += 1
        finally:
            ready.set()

    go = asyncio.Event()
    readies = [asyncio.Event() for _ in range(connections)]
    tasks = [asyncio.create_task(connection(r, go)) for r in readies]
    async with asyncio.timeout(30):
        for r in readies:  # connect everything first: handshakes are not part of the measured time
            await r.wait()
    started = time.perf_counter()
    stop_at[0] = loop.time() + duration
    go.set()
    await asyncio.wait(tasks, timeout=(duration if requests is None else 600) + timeout + 5)
    elapsed = time.perf_counter() - started
    for t in tasks:
        t.cancel()
    return {"requests": counts["requests"], "status_errors": counts["status"], "socket_errors": counts["socket"],
            "duration_s": elapsed, "latencies": latencies, "timings": timings}


def _run_one(kwargs: dict) -> dict:
    t = resource.getrusage(resource.RUSAGE_SELF)
    out = asyncio.run(load(**kwargs))
    u = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu_s"] = (u.ru_utime - t.ru_utime) + (u.ru_stime - t.ru_stime)
    return out


def summarize(parts: list[dict]) -> dict:
    lat = sorted(x for p in parts for x in p["latencies"])
    timings = [x for p in parts for x in p["timings"]]
    requests = sum(p["requests"] for p in parts)
    duration = max(p["duration_s"] for p in parts)
    us = lambda s: round(s * 1e6)
    return {
        "requests": requests,
        "duration_us": us(duration),
        "status": sum(p["status_errors"] for p in parts),
        "socket": sum(p["socket_errors"] for p in parts),
        "p50_us": us(percentile(lat, 50)), "p90_us": us(percentile(lat, 90)),
        "p95_us": us(percentile(lat, 95)), "p99_us": us(percentile(lat, 99)),
        "max_us": us(lat[-1]) if lat else 0,
        "mean_us": us(statistics.fmean(lat)) if lat else 0,
        "server_timing_ms": statistics.median(timings) if timings else None,
        "server_timings_ms": timings if len(timings) <= 10_000 else None,
        "cpu_s": sum(p["cpu_s"] for p in parts),
    }


async def fetch(url: str, headers: dict[str, str], ca: str | None, backend: str = "aioquic",
                server_name: str = "localhost", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a new connection: (status, body). For checking a server before loading it."""
    connect, _, H3_ALPN, _, _, _, QuicConfiguration, _ = _imports(backend)
    u = urlsplit(url)
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", u.netloc.encode()), (b":path", path.encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    c = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=server_name)
    if ca:
        c.load_verify_locations(ca)
    else:
        c.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(timeout):
        async with connect(u.hostname, u.port or 443, configuration=c, create_protocol=make_protocol(backend)) as client:
            status, _, body = await client.get(head, body=True)
    return status, body


def run(url: str, connections: int, streams: int, duration_s: float, headers: dict[str, str], ca: str | None,
        backend: str, processes: int = 1, requests: int | None = None, timeout_s: float = 5.0):
    """This load generator in a child process: (LoadResult, its JSON summary). Bounded in time."""
    import signal
    import subprocess
    from pathlib import Path

    from loadresult import LoadResult, children_cpu_s
    from procs import child_setup

    argv = [sys.executable, str(Path(__file__).resolve()), url, f"--connections={connections}",
            f"--streams={streams}", f"--duration={duration_s:g}", f"--timeout={timeout_s:g}",
            f"--processes={processes}", f"--client={backend}"]
    if requests is not None:
        argv.append(f"--requests={requests}")
    if ca:
        argv.append(f"--ca={ca}")
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    cpu0 = children_cpu_s()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=child_setup)
    try:
        out, err = proc.communicate(timeout=(duration_s if requests is None else 300) + timeout_s + 60)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    cpu = children_cpu_s() - cpu0
    line = next((l for l in out.splitlines() if l.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"h3load exited with {proc.returncode}: {(err.strip() or out.strip())[-3000:]}")
    d = json.loads(line[len(MARKER):])
    ms = lambda key: d[key] / 1000.0
    result = LoadResult(
        requests=d["requests"], duration_s=d["duration_us"] / 1e6, status_errors=d["status"],
        socket_errors=d["socket"], p50_ms=ms("p50_us"), p90_ms=ms("p90_us"), p95_ms=ms("p95_us"),
        p99_ms=ms("p99_us"), max_ms=ms("max_us"), mean_ms=ms("mean_us"), client_cpu_s=cpu,
    )
    return result, d


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="h3load.py", description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--connections", "-c", type=int, default=1)
    ap.add_argument("--streams", "-m", type=int, default=1, help="requests in flight per connection")
    ap.add_argument("--duration", "-d", type=float, default=5.0, help="seconds of load")
    ap.add_argument("--requests", "-n", type=int, help="stop after this many requests instead")
    ap.add_argument("--header", "-H", action="append", default=[], help="'Name: value'")
    ap.add_argument("--ca", help="CA certificate to verify the server with (default: no verification)")
    ap.add_argument("--server-name", default="localhost")
    ap.add_argument("--timeout", type=float, default=5.0, help="seconds before a request counts as an error")
    ap.add_argument("--processes", "-p", type=int, default=1)
    ap.add_argument("--client", choices=BACKENDS, default="aioquic", help="QUIC implementation (default aioquic)")
    args = ap.parse_args(argv)
    headers = [tuple(x.strip() for x in h.split(":", 1)) for h in args.header]
    procs = max(1, min(args.processes, args.connections))
    per = [args.connections // procs + (i < args.connections % procs) for i in range(procs)]
    kw = [{"url": args.url, "connections": n, "streams": args.streams, "duration": args.duration,
           "requests": None if args.requests is None else args.requests // procs + (i < args.requests % procs),
           "headers": headers, "ca": args.ca, "timeout": args.timeout, "server_name": args.server_name,
           "backend": args.client}
          for i, n in enumerate(per)]
    if procs == 1:
        parts = [_run_one(kw[0])]
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_run_one, kw)
    print(MARKER + json.dumps(summarize(parts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
