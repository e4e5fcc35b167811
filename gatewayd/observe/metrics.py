"""Prometheus metrics: the counters registry, the supervisor's restart count, and the `/metrics` text.

Adding a counter (a new policy's, say) is one call, at import or compile time, in this registry:

    from gatewayd.observe import metrics
    REJECTED = metrics.counter("gatewayd_ratelimit_rejected_total", "Requests a rate limit rejected.", ("policy",))
    rejected = REJECTED.labels("per-client")      # once, when the policy compiles
    rejected.inc()                                # on the request path: one dict update, ~0.1 us

Every registered counter is exported, for every worker, with no other change. A gauge (a value
that is set, such as a target's state) is registered the same way with `metrics.gauge(...)` and
set with `.set(labels, value)`; `.remove(labels)` drops a series whose subject is gone. Names follow
Prometheus conventions (`gatewayd_` prefix, `_total` suffix); label values must be bounded (route and
upstream names, not paths or client addresses).

How the workers of a host are counted: each worker keeps its own counters (plain integers, no
locks) and publishes them with its latency histograms to the host store once a second; `/metrics`,
whichever worker answers it, exports every live worker's series with a `worker` label (the worker's
index). A restarted worker starts its series at 0 again, which Prometheus reads as a counter reset,
so `sum(rate(...))` stays right; a dead worker's series go away a few seconds after it. This was
chosen over prometheus_client's multiprocess mode, which needs an environment variable set before
import, a file per process and metric, and locking increments on the request path; here the request
path only writes a few numbers into columns, which the observer folds into these counters in
batches (see `recorder.py` and `observer.py`). A counter of a policy's own (`inc` on the request
path) is a dict update; the same numbers folded in a batch are cheaper still.

The latency histograms (`gatewayd_request_server_seconds`, `gatewayd_request_duration_seconds`,
`gatewayd_upstream_response_seconds`) are derived from the workers' since-start sketches
(`latency.py`): `_count` and `_sum` are exact, a bucket may count a value within 1% of its bound
on the wrong side of it.

`worker_restarted(store)` is for the supervisor: call it each time it starts a worker to replace one
that exited; it adds one to `gatewayd_worker_restarts_total`, which lives in the host store.
"""

from __future__ import annotations

import re

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .latency import SINCE_START, Histogram

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RESTARTS_KEY = b"metrics/host/worker_restarts"
BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_BUCKETS_MS = tuple(b * 1000 for b in BUCKETS_S)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Child:
    """A counter with its label values bound: `inc` is one dict update."""

    __slots__ = ("_values", "_key")

    def __init__(self, values: dict, key: tuple):
        self._values = values
        self._key = key

    def inc(self, amount: float = 1) -> None:
        values = self._values
        values[self._key] = values.get(self._key, 0) + amount


class Counter:
    __slots__ = ("name", "help", "labelnames", "values")
    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...]):
        self.name = name
        self.help = help
        self.labelnames = labelnames
        self.values: dict[tuple, float] = {}

    def labels(self, *values) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, got {values!r}")
        return Child(self.values, tuple(str(v) for v in values))

    def inc(self, labels: tuple = (), amount: float = 1) -> None:
        """`labels`: the label values, in the order they were declared."""
        values = self.values
        values[labels] = values.get(labels, 0) + amount


class Gauge(Counter):
    """A value that is set, not added to; label values must be bounded as a counter's."""

    __slots__ = ()
    kind = "gauge"

    def set(self, labels: tuple, value: float) -> None:
        self.values[labels] = value

    def remove(self, labels: tuple) -> None:
        self.values.pop(labels, None)


class Registry:
    def __init__(self):
        self._counters: dict[str, Counter] = {}

    def counter(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Counter:
        """The counter `name`, registered on first use; registering it again with the same labels returns it."""
        return self._register(Counter, name, help, labels)

    def gauge(self, name: str, help: str, labels: tuple[str, ...] = ()) -> Gauge:
        """The gauge `name`, registered on first use, as `counter`."""
        return self._register(Gauge, name, help, labels)

    def _register(self, cls, name: str, help: str, labels) -> Counter:
        labels = tuple(labels)
        existing = self._counters.get(name)
        if existing is not None:
            if existing.labelnames != labels or type(existing) is not cls:
                raise ValueError(f"{name} is already registered as a {existing.kind} with labels {existing.labelnames}")
            return existing
        if not _NAME.match(name) or name.endswith("_total") != (cls is Counter):
            raise ValueError(f"{cls.kind} name {name!r}: use letters, digits and _, ending in _total for a counter only")
        for label in (*labels, "worker"):
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"label name {label!r} is not valid")
        if "worker" in labels:
            raise ValueError("the label `worker` is added to every series; do not declare it")
        counter = self._counters[name] = cls(name, help, labels)
        return counter

    def snapshot(self) -> dict:
        return {
            c.name: {"help": c.help, "labels": list(c.labelnames), "values": [[*k, v] for k, v in c.values.items()], "type": c.kind}
            for c in self._counters.values()
        }


REGISTRY = Registry()
counter = REGISTRY.counter
gauge = REGISTRY.gauge

# the gateway's own counters, fed by the observer's fold
REQUESTS = counter("gatewayd_requests_total", "HTTP requests answered, by route, method and status class.", ("route", "method", "status"))
UPSTREAM_ERRORS = counter(
    "gatewayd_upstream_errors_total",
    "Upstream requests that failed before a response: kind is timeout or unavailable.",
    ("upstream", "kind"),
)
# upstream targets (gatewayd/upstream/targets.py), set where their state changes
TARGET_STATE = gauge(
    "gatewayd_upstream_target_state",
    "1 for a target's current state (healthy, slow_start, probing or ejected), 0 for the others.",
    ("upstream", "target", "state"),
)
TARGET_TRANSITIONS = counter(
    "gatewayd_upstream_target_transitions_total",
    "Times a target entered a state (healthy, slow_start, probing or ejected).",
    ("upstream", "target", "state"),
)
HEALTH_CHECKS = counter(
    "gatewayd_upstream_health_checks_total",
    "Active health checks of a target, by result (pass or fail).",
    ("upstream", "target", "result"),
)


def worker_restarted(store) -> None:
    """Count one worker restart (for the supervisor, the only writer of this key)."""
    value = store.get(RESTARTS_KEY)
    store.put(RESTARTS_KEY, b"%d" % (int(value or b"0") + 1))


def _histogram(name: str, help: str, label: str, rows) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help, labels=(label, "worker"))
    for value, worker, h in rows:
        counts = h.cumulative(_BUCKETS_MS)
        buckets = [(repr(b), float(c)) for b, c in zip(BUCKETS_S, counts)] + [("+Inf", float(h.count))]
        family.add_metric([value, worker], buckets, h.sum / 1000)
    return family


class _Collector:
    def __init__(self, workers: list[dict], restarts: int):
        self.workers = workers
        self.restarts = restarts

    def collect(self):
        workers = self.workers
        yield GaugeMetricFamily("gatewayd_workers", "Worker processes that published their figures in the last few seconds.", len(workers))
        restarts = CounterMetricFamily("gatewayd_worker_restarts_total", "Worker processes the supervisor started to replace one that exited.")
        restarts.add_metric([], self.restarts)
        yield restarts
        generation = GaugeMetricFamily("gatewayd_config_generation", "Config generation the worker serves (1 at start, +1 per reload).", labels=("worker",))
        failures = CounterMetricFamily("gatewayd_config_reload_failures_total", "Reloads rejected because the new config was invalid.", labels=("worker",))
        for w in workers:
            generation.add_metric([w["worker"]], w.get("generation", 0))
            failures.add_metric([w["worker"]], w.get("reload_failures", 0))
        yield generation
        yield failures
        recording = GaugeMetricFamily(
            "gatewayd_recording",
            "1 when the worker records requests, 0 with observability.record: false (its request counts and latency then stay at 0).",
            labels=("worker",),
        )
        for w in workers:
            recording.add_metric([w["worker"]], 1 if w.get("recording", True) else 0)
        yield recording
        names: dict[str, dict] = {}
        for w in workers:
            for name, c in w.get("counters", {}).items():
                names.setdefault(name, c)
        for name, spec in sorted(names.items()):
            kind = GaugeMetricFamily if spec.get("type") == "gauge" else CounterMetricFamily
            family = kind(name, spec["help"], labels=(*spec["labels"], "worker"))
            for w in workers:
                for row in w.get("counters", {}).get(name, {}).get("values", ()):
                    family.add_metric([*map(str, row[:-1]), w["worker"]], row[-1])
            yield family
        server, total, upstream = [], [], []
        for w in workers:
            book = w.get("latency") or {}
            for route, windows in sorted(book.get("routes", {}).items()):
                agg = windows.get(SINCE_START)
                if agg:
                    server.append((route, w["worker"], Histogram.decode(agg["server"])))
                    total.append((route, w["worker"], Histogram.decode(agg["total"])))
            for name, windows in sorted(book.get("upstreams", {}).items()):
                agg = windows.get(SINCE_START)
                if agg:
                    upstream.append((name, w["worker"], Histogram.decode(agg["total"])))
        yield _histogram("gatewayd_request_server_seconds", "Time from a request's arrival to its response start (the Server-Timing figure), by route.", "route", server)
        yield _histogram("gatewayd_request_duration_seconds", "Time from a request's arrival to the end of its response body, by route.", "route", total)
        yield _histogram("gatewayd_upstream_response_seconds", "Time from sending a request upstream to its response headers, by upstream.", "upstream", upstream)


def render(workers: list[dict], restarts: int) -> bytes:
    """The exposition text for `workers`: each a dict with `worker` (its label value), `generation`,
    `reload_failures`, `counters` (a `Registry.snapshot()`) and `latency` (a `latency.Book.snapshot()`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(workers, restarts))
    return generate_latest(registry)
