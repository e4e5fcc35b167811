"""What a run measured, as Markdown tables, and the machine it ran on.

The run is a list of ``Group``s: one scenario over one protocol family
(HTTP/1.1, HTTP/2, HTTP/3), its targets (a server speaking that protocol, e.g.
"gatewayd with 2 workers over HTTP/1.1" or "nginx, h2c") and a ``Point`` per
target and concurrency holding every round.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field

from loadresult import LoadResult

FAMILIES = {"h1": "HTTP/1.1", "h2": "HTTP/2", "h3": "HTTP/3"}


@dataclass
class Target:
    key: str  # unique within its group
    server: str  # gatewayd, nginx or caddy
    protocol: str  # HTTP/1.1, h2 (TLS), h2c, h3
    workers: str  # as shown in the tables
    reference: str | None = None  # key of the target it is compared with (nginx or Caddy)
    recording: bool = True  # gatewayd: False with `observability.record: false` (bench/run --compare-recording)
    tls: dict[str, str] = field(default_factory=dict)  # negotiated TLS version and cipher, when known

    @property
    def name(self) -> str:
        return f"{self.server} ({self.workers})" if self.workers else self.server


@dataclass
class Point:
    """All rounds of one target at one concurrency."""

    target: str
    concurrency: int  # connections
    streams: int  # requests in flight per connection (1 for HTTP/1.1)
    rounds: list[LoadResult] = field(default_factory=list)
    server_timings_ms: list[float] = field(default_factory=list)  # gatewayd only, sampled sequentially
    load_server_ms: list[tuple[float, float]] = field(default_factory=list)  # gatewayd's /latency (p50, p99) per round
    not_found_timings_ms: list[float] = field(default_factory=list)  # gatewayd: Server-Timing of a 404, sequential
    cpu_us: list[float] = field(default_factory=list)  # gatewayd over HTTP/1.1: its CPU µs per response, per round

    def median(self, attr: str) -> float | None:
        values = [v for r in self.rounds if (v := getattr(r, attr)) is not None]
        return statistics.median(values) if values else None

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

    @property
    def server_timing_ms(self) -> float | None:
        return statistics.median(self.server_timings_ms) if self.server_timings_ms else None

    @property
    def under_load_ms(self) -> tuple[float, float] | None:
        """Median over the rounds of gatewayd's own server-time p50 and p99 during the load."""
        values = [v for v in self.load_server_ms if None not in v]
        if not values:
            return None
        return statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)

    @property
    def client_cores(self) -> float | None:
        values = [r.client_cores for r in self.rounds if r.client_cores is not None]
        return statistics.median(values) if values else None


@dataclass
class Group:
    scenario: str
    family: str  # h1, h2, h3
    targets: list[Target] = field(default_factory=list)
    points: dict[tuple[str, int], Point] = field(default_factory=dict)
    zero_rtt: dict[str, dict] = field(default_factory=dict)  # target key -> zerortt.py's result
    failure: str | None = None

    @property
    def title(self) -> str:
        return f"{self.scenario}, {FAMILIES[self.family]}"

    def target(self, key: str) -> Target:
        return next(t for t in self.targets if t.key == key)

    def concurrencies(self) -> list[int]:
        return sorted({c for _, c in self.points})

    def point(self, key: str, conc: int) -> Point | None:
        p = self.points.get((key, conc))
        return p if p is not None and p.rounds else None

    # ---- per-target summaries over all concurrencies

    def max_sustained(self, key: str) -> tuple[float, int] | None:
        """Highest median req/s among the concurrencies measured with no error in any round, and where."""
        best = None
        for c in self.concurrencies():
            p = self.point(key, c)
            if p is not None and p.errors == 0 and (best is None or p.rps > best[0]):
                best = (p.rps, c)
        return best

    def totals(self, key: str) -> tuple[int, int, int]:
        """(responses, errors, attempts) over every measured round of every concurrency."""
        rounds = [r for c in self.concurrencies() if (p := self.point(key, c)) for r in p.rounds]
        return sum(r.requests for r in rounds), sum(r.errors for r in rounds), sum(r.attempts for r in rounds)

    def server_timing(self, key: str) -> float | None:
        values = [v for c in self.concurrencies() if (p := self.point(key, c)) for v in p.server_timings_ms]
        return statistics.median(values) if values else None


# ---------------------------------------------------------------- formatting

def ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def md_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("-" + "r" * (len(header) - 1))
    sep = ["---" if a == "-" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def pick_concurrencies(concs: list[int]) -> tuple[int, int, int]:
    """(single, middle, high): the lowest, 50 if measured (else the median one), the highest."""
    concs = sorted(concs)
    mid = 50 if 50 in concs else concs[len(concs) // 2]
    return concs[0], mid, concs[-1]


def error_rate(errors: int, attempts: int) -> str:
    if attempts == 0:
        return "-"
    if errors == 0:
        return "0%"
    rate = 100 * errors / attempts
    return f"{rate:.2f}%" if rate >= 0.01 else "<0.01%"


def summary_table(groups: list[Group]) -> str:
    """One row per target of the scenario's groups (which share the concurrency list)."""
    concs = sorted({c for g in groups for c in g.concurrencies()})
    if not concs:
        return "Nothing measured."
    lo, mid, hi = pick_concurrencies(concs)
    header = ["server", "protocol", "workers", "Server-Timing median ms", f"server time under load c={mid} p50 / p99 ms"]
    cols: list[tuple[int, str]] = []
    if lo != mid:
        cols.append((lo, "p50_ms"))
    cols += [(mid, "p50_ms"), (mid, "p95_ms"), (mid, "p99_ms")]
    if hi != mid:
        cols.append((hi, "p50_ms"))
    header += [f"c={c} {a[:3]} ms" for c, a in cols]
    header += ["max req/s, 0 errors (at c)", "÷ reference", "requests", "error rate"]
    rows = []
    for g in groups:
        for t in g.targets:
            st = g.server_timing(t.key)
            cells = [t.server, t.protocol, t.workers, ms(st) if t.server == "gatewayd" else "-"]
            loaded = (p := g.point(t.key, mid)) and p.under_load_ms
            cells.append(f"{ms(loaded[0])} / {ms(loaded[1])}" if loaded else "-")
            for c, attr in cols:
                p = g.point(t.key, c)
                cells.append(ms(p.median(attr)) if p else "-")
            best = g.max_sustained(t.key)
            cells.append(f"{best[0]:.0f} (c={best[1]})" if best else "none")
            ratio = "-"
            if t.reference:
                ref = g.max_sustained(t.reference)
                if best and ref and ref[0]:
                    ratio = f"{best[0] / ref[0]:.2f} × {g.target(t.reference).server}"
            cells.append(ratio)
            n, errors, attempts = g.totals(t.key)
            cells += [f"{n:,}", error_rate(errors, attempts)]
            rows.append(cells)
    return md_table(header, rows, "---" + "r" * (len(header) - 3))


def details_table(g: Group) -> str:
    header = ["server", "protocol", "workers", "c", "streams/conn", "req/s", "req/s spread", "p50 ms", "p95 ms",
              "p99 ms", "errors", "Server-Timing median ms", "client CPU (cores)", "÷ reference req/s"]
    rows = []
    for c in g.concurrencies():
        for t in g.targets:
            p = g.point(t.key, c)
            if p is None:
                continue
            ratio = "-"
            if t.reference and (ref := g.point(t.reference, c)) and ref.rps:
                ratio = f"{p.rps / ref.rps:.2f}"
            cores = p.client_cores
            rows.append([
                t.server, t.protocol, t.workers, str(c), str(p.streams), f"{p.rps:.0f}", f"{p.spread * 100:.0f}%",
                ms(p.median("p50_ms")), ms(p.median("p95_ms")), ms(p.median("p99_ms")), str(p.errors),
                ms(p.server_timing_ms) if t.server == "gatewayd" else "-",
                f"{cores:.2f}" if cores is not None else "-", ratio,
            ])
    return md_table(header, rows, "---" + "r" * (len(header) - 3))


def workers_table(groups: list[Group]) -> str:
    """HTTP/1.1: gatewayd's req/s at each worker count next to nginx's, per scenario and concurrency."""
    h1 = [g for g in groups if g.family == "h1" and g.points]
    if not h1:
        return ""
    gw_keys = [t.key for t in h1[0].targets if t.server == "gatewayd" and t.recording]
    names = {t.key: t.workers for t in h1[0].targets}
    ref_key = next((t.key for t in h1[0].targets if t.server == "nginx"), None)
    ref_name = f"nginx ({names[ref_key]})" if ref_key else "nginx"
    header = ["scenario", "c"] + [f"gatewayd {names[k]} req/s" for k in gw_keys] + [f"{ref_name} req/s"]
    header += [f"{names[k]} ÷ nginx" for k in gw_keys]
    if len(gw_keys) > 1:
        header.append(f"{names[gw_keys[-1]]} ÷ {names[gw_keys[0]]}")
    rows = []
    for g in h1:
        for c in g.concurrencies():
            ref = g.point(ref_key, c) if ref_key else None
            pts = [g.point(k, c) for k in gw_keys]
            cells = [g.scenario, str(c)] + [f"{p.rps:.0f}" if p else "-" for p in pts]
            cells.append(f"{ref.rps:.0f}" if ref else "-")
            cells += [f"{p.rps / ref.rps:.2f}" if p and ref and ref.rps else "-" for p in pts]
            if len(gw_keys) > 1:
                a, b = pts[0], pts[-1]
                cells.append(f"{b.rps / a.rps:.2f}" if a and b and a.rps else "-")
            rows.append(cells)
    return md_table(header, rows, "-" + "r" * (len(header) - 1))


def us(values: list[float]) -> str:
    """The median of ms values, in microseconds."""
    return f"{statistics.median(values) * 1000:.1f}" if values else "-"


def recording_table(groups: list[Group]) -> str:
    """HTTP/1.1, `--compare-recording`: each gatewayd with recording on next to the same with it off."""
    header = ["scenario", "workers", "c", "req/s on", "req/s off", "on ÷ off", "on ÷ off per round",
              "CPU µs per request on / off", "CPU on ÷ off", "p50 ms on / off",
              "p99 ms on / off",
              "p99.9 ms on / off", "max ms on / off", "Server-Timing µs on / off", "404 Server-Timing µs on / off",
              "errors on / off"]
    rows = []
    for g in groups:
        if g.family != "h1":
            continue
        for t in g.targets:
            off = next((o for o in g.targets if o.key == t.key + "-off"), None)
            if t.server != "gatewayd" or not t.recording or off is None:
                continue
            for c in g.concurrencies():
                p, q = g.point(t.key, c), g.point(off.key, c)
                if not (p and q):
                    continue
                pair = lambda attr: f"{ms(p.median(attr))} / {ms(q.median(attr))}"
                # each round loads both one after the other: the median of the rounds' ratios drifts less
                paired = [a.rps / b.rps for a, b in zip(p.rounds, q.rounds) if b.rps]
                rows.append([
                    g.scenario, t.workers, str(c), f"{p.rps:.0f}", f"{q.rps:.0f}",
                    f"{p.rps / q.rps:.3f}" if q.rps else "-",
                    f"{statistics.median(paired):.3f} ({min(paired):.2f}-{max(paired):.2f})" if paired else "-",
                    f"{statistics.median(p.cpu_us):.2f} / {statistics.median(q.cpu_us):.2f}" if p.cpu_us and q.cpu_us else "-",
                    f"{statistics.median(p.cpu_us) / statistics.median(q.cpu_us):.3f}" if p.cpu_us and q.cpu_us else "-",
                    pair("p50_ms"), pair("p99_ms"), pair("p999_ms"),
                    pair("max_ms"), f"{us(p.server_timings_ms)} / {us(q.server_timings_ms)}",
                    f"{us(p.not_found_timings_ms)} / {us(q.not_found_timings_ms)}", f"{p.errors} / {q.errors}",
                ])
    return md_table(header, rows, "--" + "r" * (len(header) - 2)) if rows else ""


def timeline_table(timelines) -> str:
    """`--reload-timeline`: each run's percentiles, and those of the requests that started in the second after the reload."""
    from timeline import summary

    header = ["scenario", "gatewayd", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
              "reload served after ms", "1 s after the reload: requests", "p99 ms", "max ms", "errors"]
    rows = []
    for tl in timelines:
        s = summary(tl)
        served = "-" if tl.reloaded_s is None else f"{(tl.reloaded_s - tl.reload_at_s) * 1000:.0f}"
        rows.append([tl.scenario, tl.label, f"{s['rps']:.0f}", ms(s["p50"]), ms(s["p99"]), ms(s["p999"]), ms(s["max"]),
                     served, f"{s['near_n']:,}", ms(s["near_p99"]), ms(s["near_max"]), str(tl.errors)])
    return md_table(header, rows, "--" + "r" * (len(header) - 2)) if rows else ""


def zero_rtt_table(groups: list[Group]) -> str:
    header = ["scenario", "server", "workers", "added RTT ms", "fresh TTFB median ms", "0-RTT TTFB median ms",
              "saved ms", "saved, in RTTs", "0-RTT accepted", "samples"]
    rows = []
    for g in groups:
        for key, z in g.zero_rtt.items():
            t = g.target(key)
            f, r = z.get("fresh_median_ms"), z.get("resumed_median_ms")
            saved = f - r if f is not None and r is not None else None
            rows.append([
                g.scenario, t.server, t.workers, f"{z['rtt_ms']:.0f}", ms(f), ms(r), ms(saved),
                f"{saved / z['rtt_ms']:.2f}" if saved is not None and z["rtt_ms"] else "-",
                f"{z['early_data_accepted']}/{z['samples']}", str(z["samples"]),
            ])
    return md_table(header, rows, "--" + "r" * (len(header) - 2)) if rows else ""


def routes_table(rows: list[dict]) -> str:
    header = ["routes", "size", "compile ms", "ns/lookup", "hot ns/lookup", "RSS MB"]
    out = [[r["scenario"], f"{r['size']:,}", f"{r['compile_ms']:.1f}", f"{r['spread_ns']:.0f}",
            f"{r['hot_ns']:.0f}", f"{r['rss_mb']:.1f}"] for r in rows]
    return md_table(header, out, "-" + "r" * 5)


# ---------------------------------------------------------------- the machine

def _run(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
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


def h2load_version(binary: str | None) -> str:
    if not binary:
        return "not installed"
    out = _run([binary, "--version"])  # "h2load nghttp2/1.52.0"
    return out.split("nghttp2/", 1)[1].split()[0] if "nghttp2/" in out else out or "unknown"


PACKAGES = ("granian", "hypercorn", "aioquic", "qh3", "gatewayd")


def python_versions(python: str) -> dict[str, str]:
    """Python and package versions as seen by gatewayd's interpreter."""
    code = (
        "import platform\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "def v(n):\n"
        "    try: return version(n)\n"
        "    except PackageNotFoundError:\n"
        "        try: return __import__(n).__version__\n"
        "        except Exception: return 'not installed'\n"
        f"print(platform.python_version(), *(v(n) for n in {PACKAGES!r}))\n"
    )
    out = _run([python, "-c", code]).split()
    if len(out) != len(PACKAGES) + 1:
        return {"python": platform.python_version(), **{p: "unknown" for p in PACKAGES}}
    return {"python": out[0], **dict(zip(PACKAGES, out[1:]))}


def git_revision(repo: str) -> str:
    rev = _run(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    if not rev or " " in rev:
        return "unknown"
    dirty = _run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    return rev + (", with uncommitted changes" if dirty else "")


def machine_description(versions: dict[str, str], python: str, repo: str) -> list[str]:
    """``versions``: tool name -> version for the external tools (nginx, caddy, wrk, h2load, ...)."""
    py = python_versions(python)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tools = ", ".join(f"{k} {v}" for k, v in versions.items())
    return [
        f"- CPUs available (nproc): {nproc()}",
        f"- CPU model: {cpu_model()}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Load average when the run started: {load}",
        f"- {tools}",
        (f"- Python {py['python']}, granian {py['granian']}, hypercorn {py['hypercorn']}, aioquic {py['aioquic']}, "
         f"qh3 {py['qh3']}, gatewayd {py['gatewayd']} (git {git_revision(repo)})"),
    ]
