"""Latency statistics: sparse DDSketch histograms, 10 s / 60 s / since-start windows, merged across workers.

Each histogram counts values in the bins of DDSketch's logarithmic mapping (the `ddsketch` library)
with a relative accuracy of 1%: a reported quantile is within 1% of the exact one (the value of rank
`floor(q * (n - 1))` among the n sorted values), for any distribution and after any merge. The bins
are kept sparse (key -> count), which is what lets a sliding window subtract the second that leaves
it, and lets histograms from several workers be merged by adding counts. `max` is exact.

Per series (each route, all requests, each upstream) a ring of 60 one-second slots feeds running
sums for the last 10 s and the last 60 s; since-start is a plain sum. A worker folds its recorded
requests in here ten times a second (see `observer.py`), off the request path: `histograms` bins a
block of them with numpy, a few calls for the whole block rather than one `Histogram.add` per value.
It publishes `snapshot()` to the host store; `/latency` merges every live worker's snapshot with
`merge` and renders it with `report`.
"""

from __future__ import annotations

from math import ceil, log

import numpy as np
from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_value = _MAPPING.value
# `_MAPPING.key(v)` inlined (three calls fewer per value): the same formula on the same constant,
# checked against the library by tests/test_observe.py
_MULTIPLIER = _MAPPING._multiplier
_SMALLEST = 1e-6  # ms; values are clamped up to this (1 ns), so every one has a bin
_LN2 = log(2)
# `histograms` packs (series, key) into one int64: keys lie within +-_OFFSET (1 ns is key -698, a year about 1200)
_OFFSET = 1 << 12
_WIDTH = 1 << 13

RING = 60  # seconds of one-second slots; the longest sliding window
WINDOWS = (("10s", 10), ("60s", 60))
SINCE_START = "since_start"
WINDOW_NAMES = tuple(name for name, _ in WINDOWS) + (SINCE_START,)
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p99.9", 0.999))
OVERALL = "*"  # the series of all requests, in snapshots


class Histogram:
    """Counts of values (milliseconds) per DDSketch bin, with their exact count, sum and max."""

    __slots__ = ("bins", "count", "sum", "max")

    def __init__(self):
        self.bins: dict[int, int] = {}
        self.count = 0
        self.sum = 0.0
        self.max = 0.0

    def add(self, value: float) -> None:
        if value < _SMALLEST:
            value = _SMALLEST
        k = int(ceil(log(value, 2) * _MULTIPLIER))
        bins = self.bins
        bins[k] = bins.get(k, 0) + 1
        self.count += 1
        self.sum += value
        if value > self.max:
            self.max = value

    def merge(self, other: Histogram) -> None:
        bins = self.bins
        for k, c in other.bins.items():
            bins[k] = bins.get(k, 0) + c
        self.count += other.count
        self.sum += other.sum
        if other.max > self.max:
            self.max = other.max

    def subtract(self, other: Histogram) -> None:
        """Remove `other`'s values (which were merged in before); `max` is left for the caller to recompute."""
        bins = self.bins
        for k, c in other.bins.items():
            left = bins.get(k, 0) - c
            if left > 0:
                bins[k] = left
            else:
                bins.pop(k, None)
        self.count -= other.count
        self.sum = self.sum - other.sum if self.count else 0.0

    def quantiles(self, qs) -> list[float | None]:
        """The values at quantiles `qs` (ascending), each within 1% of the exact one; None when empty."""
        if self.count <= 0:
            return [None] * len(qs)
        out = []
        keys = sorted(self.bins)
        i, running = 0, self.bins[keys[0]]
        top = self.max
        for q in qs:
            rank = q * (self.count - 1)
            while running <= rank and i + 1 < len(keys):
                i += 1
                running += self.bins[keys[i]]
            out.append(min(_value(keys[i]), top))  # the true quantile is <= max, so clamping only helps
        return out

    def cumulative(self, bounds) -> list[int]:
        """How many values are <= each bound (ascending), judged by each bin's representative value."""
        out, running, i = [], 0, 0
        items = sorted(self.bins.items())
        for bound in bounds:
            while i < len(items) and _value(items[i][0]) <= bound:
                running += items[i][1]
                i += 1
            out.append(running)
        return out

    def encode(self) -> list:
        keys = sorted(self.bins)
        deltas, last = [], 0
        for k in keys:
            deltas.append(k - last)
            last = k
        return [deltas, [self.bins[k] for k in keys], round(self.sum, 6), self.max]

    @classmethod
    def decode(cls, data: list) -> Histogram:
        h = cls()
        deltas, counts, h.sum, h.max = data
        k = 0
        bins = h.bins
        for d, c in zip(deltas, counts):
            k += d
            bins[k] = c
        h.count = sum(counts)
        return h


class Agg:
    """Requests in some span of time: count, 4xx and 5xx counts, server time and total time."""

    __slots__ = ("count", "e4", "e5", "server", "total")

    def __init__(self):
        self.count = 0
        self.e4 = 0
        self.e5 = 0
        self.server = Histogram()  # arrival to response start (the Server-Timing figure)
        self.total = Histogram()  # arrival to the end of the response body

    def add(self, status: int, server_ms: float | None, total_ms: float) -> None:
        self.count += 1
        if status >= 500:
            self.e5 += 1
        elif status >= 400:
            self.e4 += 1
        if server_ms is not None:
            self.server.add(server_ms)
        self.total.add(total_ms)

    def merge(self, other: Agg) -> None:
        self.count += other.count
        self.e4 += other.e4
        self.e5 += other.e5
        self.server.merge(other.server)
        self.total.merge(other.total)

    def subtract(self, other: Agg) -> None:
        self.count -= other.count
        self.e4 -= other.e4
        self.e5 -= other.e5
        self.server.subtract(other.server)
        self.total.subtract(other.total)

    def encode(self, server_max: float | None = None, total_max: float | None = None) -> dict:
        server, total = self.server.encode(), self.total.encode()
        if server_max is not None:
            server[3] = server_max
        if total_max is not None:
            total[3] = total_max
        return {"n": self.count, "e4": self.e4, "e5": self.e5, "server": server, "total": total}

    @classmethod
    def decode(cls, data: dict) -> Agg:
        a = cls()
        a.count, a.e4, a.e5 = data["n"], data["e4"], data["e5"]
        a.server = Histogram.decode(data["server"])
        a.total = Histogram.decode(data["total"])
        return a


class Series:
    """One series' ring of one-second slots and its windows; `now` is a whole (wall-clock) second.

    The folds of a second add to its slot only; the windows and since-start take a second in when it
    is over (`advance`), and `snapshot` adds the current one: one merge per fold instead of four."""

    __slots__ = ("ring", "now", "windows", "since_start")

    def __init__(self, now: int):
        self.ring: list[tuple[int, Agg] | None] = [None] * RING
        self.now = now
        self.windows = {name: Agg() for name, _ in WINDOWS}  # the seconds before `now` in each window
        self.since_start = Agg()  # every second before `now`

    def _current(self) -> Agg | None:
        slot = self.ring[self.now % RING]
        return slot[1] if slot is not None and slot[0] == self.now else None

    def advance(self, now: int) -> None:
        """Move to second `now`: the second that was current joins the windows, and seconds that
        fell out of a window are subtracted from it."""
        last = self.now
        if now <= last:
            return
        done = self._current()
        if done is not None:
            for agg in self.windows.values():
                agg.merge(done)
            self.since_start.merge(done)
        if now - last >= RING:
            self.ring = [None] * RING
            self.windows = {name: Agg() for name, _ in WINDOWS}
        else:
            ring = self.ring
            for s in range(last + 1, now + 1):  # at most RING - 1 steps
                for name, span in WINDOWS:
                    slot = ring[(s - span) % RING]
                    if slot is not None and slot[0] == s - span:
                        self.windows[name].subtract(slot[1])
                if ring[s % RING] is not None:
                    ring[s % RING] = None  # second s - RING, now out of every window
        self.now = now

    def add(self, delta: Agg) -> None:
        """Requests of the current second."""
        i = self.now % RING
        slot = self.ring[i]
        if slot is None or slot[0] != self.now:
            slot = self.ring[i] = (self.now, Agg())
        slot[1].merge(delta)

    def _window_max(self, span: int) -> tuple[float, float]:
        server = total = 0.0
        for slot in self.ring:
            if slot is not None and slot[0] > self.now - span:
                server = max(server, slot[1].server.max)
                total = max(total, slot[1].total.max)
        return server, total

    def _with_current(self, agg: Agg) -> Agg:
        current = self._current()
        if current is None or not current.count:
            return agg
        out = Agg()
        out.merge(agg)
        out.merge(current)
        return out

    def since_start_now(self) -> Agg:
        return self._with_current(self.since_start)

    def snapshot(self) -> dict:
        out = {}
        for name, span in WINDOWS:
            out[name] = self._with_current(self.windows[name]).encode(*self._window_max(span))
        out[SINCE_START] = self.since_start_now().encode()
        return out

    def idle(self) -> bool:
        current = self._current()
        return all(a.count == 0 for a in self.windows.values()) and (current is None or current.count == 0)


class Book:
    """A worker's latency series: per route, overall, per upstream."""

    def __init__(self, now: int):
        self.now = now
        self.routes: dict[str, Series] = {}
        self.overall = Series(now)
        self.upstreams: dict[str, Series] = {}

    def fold(self, now: int, requests, upstreams=()) -> None:
        """Add one batch: `requests` (route, status, server_ms | None, total_ms), `upstreams` (name, ms)."""
        deltas: dict[str, Agg] = {}
        for route, status, server_ms, total_ms in requests:
            agg = deltas.get(route)
            if agg is None:
                agg = deltas[route] = Agg()
            agg.add(status, server_ms, total_ms)
        up: dict[str, Agg] = {}
        for name, ms in upstreams:
            agg = up.get(name)
            if agg is None:
                agg = up[name] = Agg()
            agg.add(0, None, ms)  # upstream time goes in `total`
        self.add(now, deltas, up)

    def add(self, now: int, routes: dict[str, Agg], upstreams: dict[str, Agg]) -> None:
        """Add what was aggregated per route and per upstream (upstream time in `total`) in second `now`.

        Every series moves to second `now` first, so windows stay right for idle ones too.
        """
        self.now = max(now, self.now)
        for series in (self.overall, *self.routes.values(), *self.upstreams.values()):
            series.advance(self.now)
        overall = Agg()
        for route, agg in routes.items():
            self._series(self.routes, route).add(agg)
            overall.merge(agg)
        if overall.count:
            self.overall.add(overall)
        for name, agg in upstreams.items():
            self._series(self.upstreams, name).add(agg)

    def _series(self, table: dict[str, Series], name: str) -> Series:
        series = table.get(name)
        if series is None:
            series = table[name] = Series(self.now)
        return series

    def snapshot(self) -> dict:
        return {
            "routes": {name: s.snapshot() for name, s in self.routes.items()},
            OVERALL: self.overall.snapshot(),
            "upstreams": {name: {SINCE_START: s.since_start_now().encode()} for name, s in self.upstreams.items()},
        }


def key(value: float) -> int:
    """The bin of `value` (ms), as `Histogram.add` computes it."""
    return int(ceil(log(max(value, _SMALLEST), 2) * _MULTIPLIER))


def histograms(series: np.ndarray, values_ms: np.ndarray) -> dict[int, Histogram]:
    """A Histogram per distinct value of `series` (small non-negative ints), of the `values_ms` of its
    rows: what `Histogram.add` of each value gives, in a few numpy calls for the whole batch."""
    if not len(series):
        return {}
    v = np.maximum(values_ms, _SMALLEST)
    keys = np.ceil(np.log(v) / _LN2 * _MULTIPLIER).astype(np.int64)  # `log(value, 2)` is log(value) / log(2)
    np.clip(keys, 1 - _OFFSET, _OFFSET - 1, out=keys)
    codes, counts = np.unique(series * _WIDTH + (keys + _OFFSET), return_counts=True)
    n = np.bincount(series)
    sums = np.bincount(series, weights=v)
    top = np.zeros(len(n))
    np.maximum.at(top, series, v)
    out = {}
    for sid in np.flatnonzero(n).tolist():
        h = out[sid] = Histogram()
        h.count, h.sum, h.max = int(n[sid]), float(sums[sid]), float(top[sid])
    for code, c in zip(codes.tolist(), counts.tolist()):
        sid, k = divmod(code, _WIDTH)
        out[sid].bins[k - _OFFSET] = c
    return out


def _merge_into(target: dict[str, Agg], windows: dict) -> None:
    for name in WINDOW_NAMES:
        data = windows.get(name)
        if data is None:
            continue
        agg = Agg.decode(data)
        if name in target:
            target[name].merge(agg)
        else:
            target[name] = agg


def merge(snapshots: list[dict]) -> dict:
    """Several workers' snapshots -> {"overall": {window: Agg}, "routes": {...}, "upstreams": {...}}."""
    overall: dict[str, Agg] = {}
    routes: dict[str, dict[str, Agg]] = {}
    upstreams: dict[str, dict[str, Agg]] = {}
    for snap in snapshots:
        _merge_into(overall, snap.get(OVERALL, {}))
        for name, windows in snap.get("routes", {}).items():
            _merge_into(routes.setdefault(name, {}), windows)
        for name, windows in snap.get("upstreams", {}).items():
            _merge_into(upstreams.setdefault(name, {}), windows)
    return {"overall": overall, "routes": routes, "upstreams": upstreams}


def _figures(h: Histogram) -> dict:
    values = h.quantiles([q for _, q in QUANTILES])
    out = {name: (None if v is None else round(v, 3)) for (name, _), v in zip(QUANTILES, values)}
    out["max"] = round(h.max, 3) if h.count else None
    return out


def _window_report(agg: Agg | None) -> dict:
    agg = agg or Agg()
    return {
        "count": agg.count,
        "errors_4xx": agg.e4,
        "errors_5xx": agg.e5,
        "server_ms": _figures(agg.server),
        "total_ms": _figures(agg.total),
    }


def report(merged: dict, workers: int) -> dict:
    """The `/latency` JSON document."""

    def windows(aggs: dict[str, Agg]) -> dict:
        return {name: _window_report(aggs.get(name)) for name in WINDOW_NAMES}

    return {
        "workers": workers,
        "unit": "ms",
        "relative_error": RELATIVE_ACCURACY,
        "quantiles": [name for name, _ in QUANTILES] + ["max"],
        "windows": list(WINDOW_NAMES),
        "overall": windows(merged["overall"]),
        "routes": {name: windows(aggs) for name, aggs in sorted(merged["routes"].items())},
    }
