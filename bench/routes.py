"""Router benchmark: compile time, dispatch time and memory versus table size.

Run by hand (``python bench/routes.py [--rounds N]``), not in CI.  Each
configuration runs in a fresh interpreter, so that its RSS is its own, and
every number is the median over the rounds.
Dispatch time is the median over many short batches of lookups, per lookup,
with the loop overhead included: "ns/lookup" draws request paths from the
whole table (so large tables pay for CPU cache misses), "hot ns" draws them
from 10 routes of it (the cost of the algorithm alone).  Templated routes of depth d have a distinct
literal first segment followed by alternating parameter and literal
segments (``/r17/{p1}/s2/{p3}`` for depth 4).
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewayd.routing import Found, Router, RouteSpec

SIZES = (10, 1_000, 100_000)
SCENARIOS = ("exact", "template-2", "template-4", "template-8")
SAMPLE = 1_000  # lookup paths per measurement
HOT = 10  # routes the "hot" lookups are drawn from
BATCH = 100  # lookups per timed batch: short, so few batches straddle a preemption
BATCHES = 3_000
GET = frozenset({"GET"})


def rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak, KiB on Linux
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def table(scenario: str, size: int) -> tuple[list[RouteSpec], Callable[[int], str]]:
    """Route specs, and a function giving a (fresh) request path for route k."""
    if scenario == "exact":
        specs = [RouteSpec(k, "exact", f"/api/v1/r{k}/items", GET, target=k) for k in range(size)]
        return specs, lambda k: f"/api/v1/r{k}/items"
    depth = int(scenario.split("-")[1])
    rest = [f"{{p{j}}}" if j % 2 else f"s{j}" for j in range(1, depth)]
    values = [f"v{j}" if j % 2 else f"s{j}" for j in range(1, depth)]
    specs = [RouteSpec(k, "template", "/".join(["", f"r{k}", *rest]), GET, target=k) for k in range(size)]
    return specs, lambda k: "/".join(["", f"r{k}", *values])


def median_lookup_ns(match: Callable, paths: list[str]) -> float:
    """Median over short batches of the time per lookup; ``paths`` holds SAMPLE paths."""
    for path in paths:  # warm up, and check that every lookup hits
        assert isinstance(match("GET", path, None, [], b""), Found), path
    slices = [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)]
    batches = []
    for b in range(BATCHES):
        batch = slices[b % len(slices)]
        start = time.perf_counter_ns()
        for path in batch:
            match("GET", path, None, [], b"")
        batches.append((time.perf_counter_ns() - start) / BATCH)
    return statistics.median(batches)


def measure(scenario: str, size: int) -> dict[str, float]:
    specs, path_for = table(scenario, size)
    rng = random.Random(size)
    spread = [path_for(rng.randrange(size)) for _ in range(SAMPLE)]
    hot_routes = [rng.randrange(size) for _ in range(HOT)]
    hot = [path_for(rng.choice(hot_routes)) for _ in range(SAMPLE)]
    start = time.perf_counter_ns()
    router = Router(specs)
    compile_ns = time.perf_counter_ns() - start
    gc.collect()
    gc.freeze()
    return {
        "compile_ms": compile_ns / 1e6,
        "spread_ns": median_lookup_ns(router.match, spread),
        "hot_ns": median_lookup_ns(router.match, hot),
        "rss_mb": rss_mb(),
    }


def run_one(scenario: str, size: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", scenario, str(size)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per configuration; medians are reported")
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--rss", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:
        print(rss_mb())
        return
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return
    configs = [(scenario, size) for scenario in SCENARIOS for size in SIZES]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {config: [] for config in configs}
    for _ in range(args.rounds):  # rounds interleave configurations, so a noisy spell hits them all
        for config in configs:
            runs[config].append(run_one(*config))
    baseline = subprocess.run([sys.executable, __file__, "--rss"], capture_output=True, text=True, check=True)
    print(f"{'routes':<12}{'size':>9}{'compile ms':>12}{'ns/lookup':>11}{'hot ns':>8}{'RSS MB':>8}")
    for (scenario, size), rows in runs.items():
        row = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        print(
            f"{scenario:<12}{size:>9,}{row['compile_ms']:>12.1f}{row['spread_ns']:>11.0f}"
            f"{row['hot_ns']:>8.0f}{row['rss_mb']:>8.1f}"
        )
    print(f"(an interpreter with gatewayd.routing imported: {float(baseline.stdout):.1f} MB RSS)")


if __name__ == "__main__":
    main()
