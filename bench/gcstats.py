"""Run gatewayd with every garbage collection timed (gc.callbacks); a summary per generation at exit.

    GCSTATS=gc.json python -P bench/gcstats.py --config gateway.yaml --listen 127.0.0.1:8080

takes gatewayd's own arguments; at exit (SIGTERM or Ctrl-C: gatewayd stops cleanly) it writes
`{"0": {"n", "s", "max_ms", "over_1ms"}, "1": ..., "2": ...}` to `$GCSTATS` (stderr when unset):
collections, seconds spent in them, the longest pause and how many took more than 1 ms. Use
`workers: 1`: with more, only the supervisor is timed. Made for bench/results/2026-12-03-observe.md,
where it showed the full collections that recorded exchanges caused.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import time

_stats = {g: {"n": 0, "s": 0.0, "max_ms": 0.0, "over_1ms": 0} for g in (0, 1, 2)}
_started = [0.0]


def _timed(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    s = _stats[info["generation"]]
    s["n"] += 1
    s["s"] += took
    s["max_ms"] = max(s["max_ms"], took * 1000)
    s["over_1ms"] += took > 0.001


def _report() -> None:
    text = json.dumps(_stats)
    if os.environ.get("GCSTATS"):
        with open(os.environ["GCSTATS"], "w") as f:
            f.write(text)
    else:
        print(f"gc: {text}", file=sys.stderr)


if __name__ == "__main__":
    gc.callbacks.append(_timed)
    atexit.register(_report)
    from gatewayd.cli.main import main

    sys.argv[0] = "gatewayd"
    sys.exit(main())
