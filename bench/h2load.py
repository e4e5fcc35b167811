"""Run h2load once (HTTP/2 over TLS, or h2c with prior knowledge) and parse its output.

Latency percentiles come from h2load's ``--log-file`` (one line per request of
the measured duration: start time, status, microseconds until the response
ended), since its summary has only min, max, mean and standard deviation.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

from loadresult import LoadResult, children_cpu_s, percentile
from procs import child_setup


def h2load_binary() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise SystemExit("h2load not found (Debian: apt-get install -y nghttp2-client), or leave HTTP/2 out: --protocol h1,h3")
    return path


def command(url: str, connections: int, streams: int, threads: int, duration_s: float,
            headers: dict[str, str], log_file: Path) -> list[str]:
    argv = [
        h2load_binary(),
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        f"--threads={max(1, min(threads, connections))}",
        f"--duration={duration_s:g}",
        # h2load stops its clients when the duration is over, but a client whose connection completes
        # only after that (a server slow to accept) runs on without end: close every connection at
        # the latest this long after it opened
        f"--connection-active-timeout={duration_s + 10:g}",
        f"--log-file={log_file}",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name.lower()}: {value}"]
    argv.append(url)
    return argv


_NUM = r"([\d.]+)"


def parse(stdout: str, log_text: str, want_protocol: str) -> tuple[LoadResult, dict[str, str]]:
    """The run's result, and what TLS and application protocol were negotiated."""
    info = {}
    for key in ("TLS Protocol", "Cipher", "Server Temp Key", "Application protocol"):
        m = re.search(rf"^{key}: (.+)$", stdout, re.MULTILINE)
        if m:
            info[key] = m.group(1).strip()
    if info.get("Application protocol") != want_protocol:
        raise RuntimeError(f"h2load negotiated {info.get('Application protocol', 'nothing')!r}, not {want_protocol!r}:\n"
                           + stdout[-2000:])
    m = re.search(rf"^finished in {_NUM}(m?s), {_NUM} req/s", stdout, re.MULTILINE)
    r = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                  r"(\d+) errored, (\d+) timeout", stdout, re.MULTILINE)
    s = re.search(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", stdout, re.MULTILINE)
    if not (m and r and s):
        raise RuntimeError(f"cannot parse h2load output:\n{stdout[-2000:]}")
    duration = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    done, errored, timeout = int(r.group(3)), int(r.group(6)), int(r.group(7))
    status_errors = int(s.group(3)) + int(s.group(4))
    lat = []
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            lat.append(int(parts[2]) / 1000.0)
    lat.sort()
    responses = sum(int(x) for x in s.groups())
    result = LoadResult(
        requests=responses,
        duration_s=duration,
        status_errors=status_errors,
        socket_errors=max(errored, done - responses) + timeout,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p95_ms=percentile(lat, 95),
        p99_ms=percentile(lat, 99),
        p999_ms=percentile(lat, 99.9),
        max_ms=lat[-1] if lat else 0.0,
        mean_ms=sum(lat) / len(lat) if lat else 0.0,
    )
    return result, info


def run(url: str, connections: int, streams: int, threads: int, duration_s: float,
        headers: dict[str, str], tmp: Path) -> tuple[LoadResult, dict[str, str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    log_file = tmp / "h2load-requests.log"
    log_file.unlink(missing_ok=True)
    argv = command(url, connections, streams, threads, duration_s, headers, log_file)
    want = "h2" if url.startswith("https:") else "h2c"
    cpu0 = children_cpu_s()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=child_setup)
    try:
        out, err = proc.communicate(timeout=duration_s + 60)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        raise
    cpu = children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with {proc.returncode}: {err.strip() or out.strip()}"[-3000:])
    result, info = parse(out, log_file.read_text() if log_file.exists() else "", want)
    log_file.unlink(missing_ok=True)
    return LoadResult(**{**result.__dict__, "client_cpu_s": cpu}), info
