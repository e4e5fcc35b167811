"""One process's observer: the record call on the request path, and the periodic fold off it.

The request path pays for one call per request, `record(exchange)`, which stamps the end time and
appends the exchange to a list. Measured with `python bench/observe.py` (median CPU time, on a
shared 2-core machine that was busy with other work): 0.20-0.23 us per record call, and a whole
`respond` request 0.5 us slower with recording than without (1.4 us in one noisy run). A proxied
request also pays for its trace context and upstream timing in the proxy (`trace.forward`, about
1 us on the same machine). Everything else happens in `run`, off the request path:
four times a second (and at shutdown) the recorded exchanges are folded into the latency sketches
(`latency.py`) and the counters (`metrics.py`) and sampled into access-log lines
(`access_log.py`) and, when `observability.otel` is set, made into OpenTelemetry spans (`otel.py`,
sent by the SDK's batch processor from its own thread); once a second this worker's figures are
published to the host store under `latency/<pid>` and `metrics/worker/<pid>` with a TTL of a few
seconds, so a worker that dies drops out of `/latency` and `/metrics` soon after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import zlib
from time import perf_counter_ns

from . import latency, metrics, otel, trace
from .access_log import AccessLog, iso_time, line, query_keys

log = logging.getLogger("gatewayd.observe")

FOLD_INTERVAL_S = 0.25  # short, so that few recorded exchanges are alive at once (less for the GC to walk)
PUBLISH_INTERVAL_S = 1.0
PUBLISH_TTL_S = 5.0  # a worker silent this long is taken for dead
UNMATCHED = "(unmatched)"  # the route name of requests no route took (404, 405)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
LATENCY_PREFIX = b"latency/"
METRICS_PREFIX = b"metrics/worker/"


def encode(doc: dict) -> bytes:
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 1)


def decode(raw: bytes) -> dict | None:
    try:
        return json.loads(zlib.decompress(raw))
    except (zlib.error, ValueError):
        return None


class Observer:
    """Owned by the `Gateway`; `record` goes into every compiled `Table`, `run` is started by the server."""

    def __init__(self, store, status, *, registry: metrics.Registry = metrics.REGISTRY):
        self.store = store
        self.status = status  # RuntimeStatus: worker index, config generation, reload failures
        self.registry = registry
        own = (metrics.REQUESTS, metrics.UPSTREAM_ERRORS)  # the same counters in another registry (tests)
        self._requests, self._upstream_errors = (registry.counter(c.name, c.help, c.labelnames) for c in own)
        self.access_log = AccessLog()
        self.otel: otel.Export | None = None
        self.started_at = time.time()
        self.book = latency.Book(int(self.started_at))
        self.reload_failures = 0
        self._pending: list = []
        self._publish_warned = 0.0
        pending = self._pending
        append = pending.append

        def record(ex, clock=perf_counter_ns) -> None:
            ex.t_end = clock()
            append(ex)

        self.record = record

    # --- config ---------------------------------------------------------------------------------

    def configure(self, observability) -> None:
        """Apply a config's `observability` settings (at start and at each reload)."""
        to, sample = observability.access_log_to, observability.access_log_sample
        if (to, sample) != (self.access_log.to, self.access_log.sample):
            self.fold()  # lines recorded so far go where they were meant to
            self.access_log.close()
            self.access_log = AccessLog(to, sample)
        wanted = getattr(observability, "otel", None)
        if wanted != (self.otel.config if self.otel is not None else None):
            self.fold()  # spans recorded so far go where they were meant to
            otel.stop(self.otel)
            self.otel = otel.start(wanted) if wanted is not None else None

    # --- off the request path -------------------------------------------------------------------

    def fold(self) -> None:
        """Fold the recorded exchanges into the sketches, counters and access log."""
        pending = self._pending
        batch = pending[:]
        pending.clear()
        now = time.time()
        requests, upstreams, lines = [], [], []
        requests_counter = self._requests
        errors_counter = self._upstream_errors
        access = self.access_log
        logging_on = access.enabled
        sample = access.sample
        wall_offset = time.time_ns() - perf_counter_ns()
        worker = self.status.worker if hasattr(self.status, "worker") else 0
        export = self.otel
        for ex in batch:
            route = ex.route_name or UNMATCHED
            status = getattr(ex, "status", 0) or 499  # 499: the client left before the response started
            t0 = ex.t0
            t_start = getattr(ex, "t_start", 0)
            server_ms = (t_start - t0) / 1e6 if t_start else None
            total_ms = (ex.t_end - t0) / 1e6
            requests.append((route, status, server_ms, total_ms))
            method = ex.scope["method"]
            requests_counter.inc((route, method if method in _METHODS else "OTHER", _CLASSES[min(max(status // 100, 1), 5) - 1]))
            upstream = ex.upstream
            upstream_ms = None
            if upstream is not None:
                if ex.upstream_error is not None:
                    errors_counter.inc((upstream, ex.upstream_error))
                elif ex.upstream_ns is not None:
                    upstream_ms = ex.upstream_ns / 1e6
                    upstreams.append((upstream, upstream_ms))
            trace_id = None
            if export is not None:
                trace_id = getattr(ex, "trace_id", None)
                span_id = getattr(ex, "span_id", None)
                parent = trace.parent_of(ex.scope["headers"])
                trace_id = trace_id or (parent[0] if parent else trace.new_trace_id())
                if export.keep(trace_id):
                    try:
                        export.spans(ex, None if route == UNMATCHED else route, status, trace_id, span_id, parent, wall_offset, worker)
                    except Exception:
                        log.exception("could not make the spans of request %s", ex.request_id.decode("latin-1"))
            if logging_on and (sample >= 1 or random.random() < sample):
                lines.append(self._line(ex, route, status, server_ms, total_ms, upstream, upstream_ms, wall_offset, worker, trace_id))
        self.book.fold(int(now), requests, upstreams)
        if lines:
            access.write(lines)

    @staticmethod
    def _line(ex, route, status, server_ms, total_ms, upstream, upstream_ms, wall_offset, worker, trace_id=None) -> bytes:
        scope = ex.scope
        trace_id = trace_id or getattr(ex, "trace_id", None) or trace.trace_id_of(scope["headers"]) or trace.new_trace_id()
        return line(
            {
                "time": iso_time((ex.t0 + wall_offset) / 1e9),
                "request_id": ex.request_id.decode("latin-1"),
                "trace_id": trace_id,
                "route": None if route == UNMATCHED else route,
                "consumer": ex.consumer,
                "method": scope["method"],
                "path": scope["path"],
                "query_keys": query_keys(scope.get("query_string", b"")),
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "status": status,
                "bytes_sent": getattr(ex, "sent", 0),
                "server_ms": None if server_ms is None else round(server_ms, 3),
                "total_ms": round(total_ms, 3),
                "upstream": upstream,
                "upstream_ms": None if upstream_ms is None else round(upstream_ms, 3),
                "cache": None,
                "worker": worker,
            }
        )

    def _identity(self) -> dict:
        status = self.status
        return {
            "pid": os.getpid(),
            "worker": getattr(status, "worker", 0),
            "started_at": self.started_at,
            "generation": status.generation,
            "reload_failures": self.reload_failures,
        }

    def publish(self) -> None:
        """Put this worker's figures in the host store (a failure is logged, at most once a minute)."""
        pid = os.getpid()
        identity = self._identity()
        try:
            self.store.put(LATENCY_PREFIX + b"%d" % pid, encode({**identity, "latency": self.book.snapshot()}), PUBLISH_TTL_S)
            self.store.put(METRICS_PREFIX + b"%d" % pid, encode({**identity, "counters": self.registry.snapshot()}), PUBLISH_TTL_S)
        except Exception as exc:  # StoreFull, or a store in trouble: the figures are late, requests go on
            now = time.monotonic()
            if now - self._publish_warned > 60:
                self._publish_warned = now
                log.warning("could not publish latency and metrics to the host store: %s", exc)

    def refresh(self) -> None:
        """Fold and publish now (before answering /latency or /metrics, so this worker's view is current)."""
        self.fold()
        self.publish()

    def withdraw(self) -> None:
        """Remove this worker's figures from the host store (at a clean shutdown)."""
        pid = os.getpid()
        for prefix in (LATENCY_PREFIX, METRICS_PREFIX):
            try:
                self.store.take(prefix + b"%d" % pid)
            except Exception:
                pass

    def start(self) -> None:
        """Start `run` as a task of the running loop (the serving process calls this once)."""
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(self._stop))

    async def close(self) -> None:
        """Stop `run` (after the last requests were served): a last fold, then withdraw from the store."""
        task = getattr(self, "_task", None)
        if task is None:
            self.access_log.close()
            otel.stop(self.otel, background=False)
            self.otel = None
            return
        self._stop.set()
        await task
        self._task = None

    async def run(self, stop: asyncio.Event) -> None:
        """Fold (and write the access log) every FOLD_INTERVAL_S, publish every PUBLISH_INTERVAL_S, on
        the wall clock's ticks so that the workers' seconds line up, until `stop`; then a last fold."""
        published = 0.0
        try:
            while not stop.is_set():
                delay = FOLD_INTERVAL_S - (time.time() % FOLD_INTERVAL_S) + 0.002
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                try:
                    self.fold()
                    now = time.time()
                    if now - published >= PUBLISH_INTERVAL_S - FOLD_INTERVAL_S / 2:
                        published = now
                        self.publish()
                except Exception:
                    log.exception("observer fold failed")
        finally:
            try:
                self.fold()
            finally:
                self.withdraw()
                self.access_log.close()
                otel.stop(self.otel, background=False)  # sends the spans still queued
                self.otel = None

    # --- reading the host's figures --------------------------------------------------------------

    def workers(self, prefix: bytes) -> list[dict]:
        """Every live worker's published document under `prefix`, one per worker index (the newest)."""
        by_worker: dict = {}
        for _, raw in self.store.scan(prefix):
            doc = decode(raw)
            if doc is None:
                continue
            known = by_worker.get(doc.get("worker"))
            if known is None or doc.get("started_at", 0) > known.get("started_at", 0):
                by_worker[doc.get("worker")] = doc
        return [by_worker[k] for k in sorted(by_worker, key=str)]
