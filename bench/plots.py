"""PNG plots of a run, with matplotlib (optional: ``pip install -e '.[bench]'``).

* ``<stem>-latency.png``: p50, p95 and p99 at the middle concurrency (50 by default) of every target,
  one panel per scenario and protocol family, log scale;
* ``<stem>-workers.png``: HTTP/1.1 requests/s against gatewayd's worker count, one line per
  concurrency, with nginx's rate at the same concurrency as a dashed line;
* ``<stem>-0rtt.png``: every fresh and 0-RTT time to first byte of the HTTP/3 0-RTT measurement;
* ``<stem>-reload.png`` (``--reload-timeline``): p99 and max latency per 100 ms while gatewayd
  reloads its config, one panel per scenario, one colour per gatewayd (recording on or off).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from report import FAMILIES, Group, pick_concurrencies

COLORS = {"gatewayd": "#1f77b4", "nginx": "#2ca02c", "caddy": "#9467bd"}


def _label(t) -> str:
    return f"{t.server}\n{t.protocol}\n{t.workers}"


def latency(groups: list[Group], path: Path) -> bool:
    groups = [g for g in groups if g.failure is None and g.points]
    if not groups:
        return False
    scenarios = list(dict.fromkeys(g.scenario for g in groups))
    families = list(dict.fromkeys(g.family for g in groups))
    fig, axes = plt.subplots(len(scenarios), len(families), squeeze=False,
                             figsize=(max(7.5, 4.8 * len(families)), 3.8 * len(scenarios)))
    for ax in axes.flat:
        ax.set_visible(False)
    for g in groups:
        ax = axes[scenarios.index(g.scenario)][families.index(g.family)]
        ax.set_visible(True)
        _, mid, _ = pick_concurrencies(g.concurrencies())
        width = 0.26
        for i, t in enumerate(g.targets):
            p = g.point(t.key, mid)
            if p is None:
                continue
            values = [p.median("p50_ms"), p.median("p95_ms"), p.median("p99_ms")]
            for j, (v, hatch) in enumerate(zip(values, ("", "//", "xx"))):
                ax.bar(i + (j - 1) * width, v, width, color=COLORS.get(t.server, "grey"), hatch=hatch,
                       edgecolor="white", label=("p50", "p95", "p99")[j] if i == 0 else None)
        ax.set_xticks(range(len(g.targets)), [_label(t) for t in g.targets], fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("latency, ms (log)")
        streams = next((p.streams for (k, c), p in g.points.items() if c == mid), 1)
        ax.set_title(f"{g.scenario}, {FAMILIES[g.family]}, c={mid}" + (f" x{streams}" if streams > 1 else ""),
                     fontsize=9)
        ax.grid(axis="y", alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Latency percentiles, gatewayd vs nginx / Caddy (same run, medians over rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def workers(groups: list[Group], path: Path) -> bool:
    h1 = [g for g in groups if g.family == "h1" and g.failure is None and g.points]
    if not h1:
        return False
    fig, axes = plt.subplots(1, len(h1), squeeze=False, figsize=(5 * len(h1), 4.6))
    for ax, g in zip(axes[0], h1):
        gw = [t for t in g.targets if t.server == "gatewayd" and t.recording]
        counts = [int(t.workers.split()[0]) for t in gw]
        ref = next((t for t in g.targets if t.server == "nginx"), None)
        for i, c in enumerate(g.concurrencies()):
            color = f"C{i}"
            ys = [g.point(t.key, c).rps if g.point(t.key, c) else float("nan") for t in gw]
            ax.plot(counts, ys, marker="o", color=color, label=f"gatewayd c={c}")
            if ref and (rp := g.point(ref.key, c)):
                ax.axhline(rp.rps, color=color, linestyle="--", linewidth=1, label=f"nginx ({ref.workers}) c={c}")
        ax.set_xticks(counts)
        ax.set_xlabel("gatewayd workers")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"{g.scenario}, HTTP/1.1", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.suptitle("Requests/s vs gatewayd workers (dashed: nginx, same run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def zero_rtt(groups: list[Group], path: Path) -> bool:
    rows = [(g, key, z) for g in groups for key, z in g.zero_rtt.items() if z.get("fresh_ms")]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = []
    for i, (g, key, z) in enumerate(rows):
        t = g.target(key)
        for j, (kind, values) in enumerate((("fresh", z["fresh_ms"]), ("0-RTT", z["resumed_ms"]))):
            x = i * 2.5 + j
            ax.scatter([x] * len(values), values, s=12, alpha=0.6, color=COLORS.get(t.server, "grey"))
            ax.hlines(sorted(values)[len(values) // 2], x - 0.3, x + 0.3, color="black")
            labels.append((x, f"{t.server}\n{kind}"))
    rtt = rows[0][2]["rtt_ms"]
    for k in (1, 2):
        ax.axhline(k * rtt, color="grey", linestyle=":", linewidth=1)
        ax.text(ax.get_xlim()[1], k * rtt, f" {k} RTT", va="center", fontsize=7)
    ax.set_xticks([x for x, _ in labels], [lbl for _, lbl in labels], fontsize=7)
    ax.set_ylabel("time to first byte, ms")
    ax.set_ylim(bottom=0)
    ax.set_title(f"HTTP/3 fresh vs 0-RTT request over {rtt:g} ms RTT (bar: median)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def reload_timeline(timelines, path: Path) -> bool:
    from timeline import bins

    if not timelines:
        return False
    scenarios = list(dict.fromkeys(tl.scenario for tl in timelines))
    fig, axes = plt.subplots(len(scenarios), 1, squeeze=False, figsize=(9, 3.4 * len(scenarios)))
    for ax, sc in zip(axes[:, 0], scenarios):
        for i, tl in enumerate(t for t in timelines if t.scenario == sc):
            b = bins(tl.requests)
            xs = [row[0] for row in b]
            color = f"C{i}"
            ax.plot(xs, [row[2] for row in b], color=color, linewidth=1.2, label=f"{tl.label}: p99")
            ax.plot(xs, [row[3] for row in b], color=color, linewidth=0.7, linestyle=":", label=f"{tl.label}: max")
            ax.plot(xs, [row[1] for row in b], color=color, linewidth=0.7, alpha=0.6, label=f"{tl.label}: p50")
            ax.axvline(tl.reload_at_s, color=color, linestyle="--", linewidth=1)
            if tl.reloaded_s is not None:
                ax.axvspan(tl.reload_at_s, tl.reloaded_s, color=color, alpha=0.12)
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the first request (dashed: config file rewritten; shaded: until /health shows it)")
        ax.set_ylabel("latency per 100 ms, ms")
        ax.set_title(f"{sc}, HTTP/1.1, gatewayd 1 worker, reloaded under load", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(groups: list[Group], directory: Path, stem: str, timelines=()) -> list[str]:
    """Write every plot that has data; return the file names written."""
    written = []
    for suffix, fn, data in (("latency", latency, groups), ("workers", workers, groups), ("0rtt", zero_rtt, groups),
                             ("reload", reload_timeline, timelines)):
        name = f"{stem}-{suffix}.png"
        if fn(data, directory / name):
            written.append(name)
    return written
