"""Run wrk once and parse what the ``done()`` hook in wrk_report.lua prints."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from loadresult import LoadResult, children_cpu_s
from procs import child_setup

LUA_SCRIPT = Path(__file__).resolve().with_name("wrk_report.lua")
MARKER = "WRK_RESULT "


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk not found (Debian: apt-get install -y wrk)")
    return path


def parse(stdout: str) -> LoadResult:
    line = next((l for l in stdout.splitlines() if l.startswith(MARKER)), None)
    if line is None:
        raise ValueError(f"no {MARKER.strip()} line in wrk output:\n{stdout}")
    d = json.loads(line[len(MARKER):])
    ms = lambda key: d[key] / 1000.0
    return LoadResult(
        requests=d["requests"],
        duration_s=d["duration_us"] / 1e6,
        status_errors=d["status"],
        socket_errors=d["connect"] + d["read"] + d["write"] + d["timeout"],
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p95_ms=ms("p95_us"),
        p99_ms=ms("p99_us"),
        p999_ms=ms("p999_us"),
        max_ms=ms("max_us"),
        mean_ms=ms("mean_us"),
    )


def command(url: str, connections: int, threads: int, duration_s: float,
            headers: dict[str, str], timeout_s: int = 5) -> list[str]:
    argv = [
        wrk_binary(),
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s}s",
        "--latency",
        "-s", str(LUA_SCRIPT),
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    return argv


def run(url: str, connections: int, threads: int, duration_s: float,
        headers: dict[str, str], timeout_s: int = 5) -> LoadResult:
    argv = command(url, connections, threads, duration_s, headers, timeout_s)
    cpu0 = children_cpu_s()
    # Own session: a Ctrl-C reaches the harness only, which then ends wrk here.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=child_setup)
    try:
        out, err = proc.communicate(timeout=duration_s + timeout_s + 30)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    cpu = children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {err.strip() or out.strip()}")
    return LoadResult(**{**parse(out).__dict__, "client_cpu_s": cpu})
