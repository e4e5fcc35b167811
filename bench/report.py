"""Markdown tables and the machine description for benchmark results."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field

from wrk import WrkResult


@dataclass
class Point:
    """All rounds of one server at one concurrency."""

    server: str
    concurrency: int
    rounds: list[WrkResult] = field(default_factory=list)
    server_timing_ms: float | None = None  # gatewayd only

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    @property
    def rps(self) -> float:
        return self.median("rps")

    @property
    def spread(self) -> float:
        """(max - min) / median of requests/s over the rounds."""
        values = [r.rps for r in self.rounds]
        med = statistics.median(values)
        return (max(values) - min(values)) / med if med else 0.0

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)


COLUMNS = [
    ("server", "---"),
    ("concurrency", "--:"),
    ("req/s", "--:"),
    ("req/s spread", "--:"),
    ("p50 ms", "--:"),
    ("p95 ms", "--:"),
    ("p99 ms", "--:"),
    ("errors", "--:"),
    ("Server-Timing median ms", "--:"),
    ("gatewayd/nginx req/s", "--:"),
]


def table(points: list[Point]) -> str:
    """One Markdown table; rows grouped by concurrency, gatewayd first."""
    lines = ["| " + " | ".join(c for c, _ in COLUMNS) + " |", "|" + "|".join(a for _, a in COLUMNS) + "|"]
    by_conc: dict[int, dict[str, Point]] = {}
    for p in points:
        by_conc.setdefault(p.concurrency, {})[p.server] = p
    for conc in sorted(by_conc):
        group = by_conc[conc]
        nginx_rps = group["nginx"].rps if "nginx" in group and group["nginx"].rounds else None
        for server in ("gatewayd", "nginx"):
            p = group.get(server)
            if p is None or not p.rounds:
                continue
            ratio = "-"
            if server == "gatewayd" and nginx_rps:
                ratio = f"{p.rps / nginx_rps:.2f}"
            st = "-"
            if server == "gatewayd":
                st = f"{p.server_timing_ms:.3f}" if p.server_timing_ms is not None else "n/a"
            cells = [
                server,
                str(conc),
                f"{p.rps:.0f}",
                f"{p.spread * 100:.0f}%",
                f"{p.median('p50_ms'):.3f}",
                f"{p.median('p95_ms'):.3f}",
                f"{p.median('p99_ms'):.3f}",
                str(p.errors),
                st,
                ratio,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (r.stdout + r.stderr).strip()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def nginx_version(binary: str) -> str:
    out = _run([binary, "-v"])
    return out.split("nginx/", 1)[1].split()[0] if "nginx/" in out else out or "unknown"


def wrk_version(binary: str) -> str:
    out = _run([binary, "-v"]).splitlines()
    first = out[0] if out else ""
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    return first.split(" Copyright")[0].removeprefix("wrk ").strip() or "unknown"


def python_versions(python: str) -> tuple[str, str, str]:
    """(Python, granian, gatewayd) versions as seen by gatewayd's interpreter."""
    code = (
        "import platform\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "def v(n):\n"
        "    try: return version(n)\n"
        "    except PackageNotFoundError: return 'not installed'\n"
        "print(platform.python_version(), v('granian'), v('gatewayd'))\n"
    )
    out = _run([python, "-c", code]).split()
    return (out[0], out[1], out[2]) if len(out) >= 3 else (platform.python_version(), "unknown", "unknown")


def git_revision(repo: str) -> str:
    rev = _run(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    if not rev or " " in rev:
        return "unknown"
    dirty = _run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return rev + (", with uncommitted changes" if dirty else "")


def machine_description(nginx_bin: str, wrk_bin: str, python: str, repo: str) -> list[str]:
    py, granian, gw = python_versions(python)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- CPUs available (nproc): {nproc()}",
        f"- CPU model: {cpu_model()}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Load average when the run started: {load}",
        f"- nginx {nginx_version(nginx_bin)}, wrk {wrk_version(wrk_bin)}, "
        f"Python {py}, granian {granian}, gatewayd {gw} (git {git_revision(repo)})",
    ]
