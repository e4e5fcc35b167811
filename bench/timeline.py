"""Latency over time while gatewayd reloads its config, from h2load's per-request log.

``run`` loads one URL over HTTP/1.1 (``h2load --h1``, which logs every request: its wall-clock start
in microseconds since the epoch, status, and microseconds to the end of the response), calls
``reload`` once ``reload_at_s`` have passed, and returns the requests as (seconds since the first
one started, ms) with the moment of the reload on the same clock. ``bins`` and ``summary`` turn
that into the tables and the plot of ``bench/run --reload-timeline``.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h2load
from loadresult import percentile
from procs import child_setup

BIN_S = 0.1  # the plot's time resolution


@dataclass
class Timeline:
    scenario: str
    label: str  # which gatewayd
    reload_at_s: float  # when the new config file was written, on the requests' clock
    reloaded_s: float | None  # when /health first showed the new generation
    requests: list[tuple[float, float]] = field(default_factory=list)  # (start, latency ms), by start
    errors: int = 0


def run(url: str, headers: dict[str, str], connections: int, threads: int, duration_s: float, reload_at_s: float,
        reload: Callable[[], float | None], tmp: Path) -> tuple[list[tuple[float, float]], float, float | None, int]:
    """(requests, reload_at_s, reloaded_s, errors): ``reload()`` writes the new config and returns the
    wall-clock time at which the gateway served it (None if it did not within its wait)."""
    tmp.mkdir(parents=True, exist_ok=True)
    log_file = tmp / "timeline-requests.log"
    log_file.unlink(missing_ok=True)
    argv = h2load.command(url, connections, 1, threads, duration_s, headers, log_file)
    argv.insert(-1, "--h1")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=child_setup)
    try:
        time.sleep(reload_at_s)
        written = time.time()
        served = reload()
        out, err = proc.communicate(timeout=duration_s + 60)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"h2load --h1 exited with {proc.returncode}: {err.strip() or out.strip()}"[-3000:])
    rows = []
    errors = 0
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            start_us, status, dur_us = int(parts[0]), int(parts[1]), int(parts[2])
            if status >= 400 or status < 0:
                errors += 1
            rows.append((start_us / 1e6, dur_us / 1000.0))
    log_file.unlink(missing_ok=True)
    if not rows:
        raise RuntimeError(f"h2load --h1 logged no request:\n{out[-2000:]}")
    rows.sort()
    first = rows[0][0]
    return ([(t - first, ms) for t, ms in rows], written - first, None if served is None else served - first, errors)


def bins(requests: list[tuple[float, float]], width_s: float = BIN_S) -> list[tuple[float, float, float, float, int]]:
    """Per ``width_s`` of start times: (bin start s, p50, p99, max ms, requests)."""
    out, i, n = [], 0, len(requests)
    t = 0.0
    while i < n:
        values = []
        while i < n and requests[i][0] < t + width_s:
            values.append(requests[i][1])
            i += 1
        if values:
            values.sort()
            out.append((t, percentile(values, 50), percentile(values, 99), values[-1], len(values)))
        t += width_s
    return out


def summary(tl: Timeline, after_s: float = 1.0) -> dict:
    """Percentiles of the whole run, and of the requests that started within ``after_s`` of the reload."""
    every = sorted(ms for _, ms in tl.requests)
    near = sorted(ms for t, ms in tl.requests if tl.reload_at_s <= t < tl.reload_at_s + after_s)
    span = tl.requests[-1][0] - tl.requests[0][0] if tl.requests else 0
    return {
        "rps": len(every) / span if span else 0.0,
        "p50": percentile(every, 50), "p99": percentile(every, 99), "p999": percentile(every, 99.9),
        "max": every[-1] if every else 0.0,
        "near_p99": percentile(near, 99), "near_max": near[-1] if near else 0.0, "near_n": len(near),
    }  # fmt: skip
