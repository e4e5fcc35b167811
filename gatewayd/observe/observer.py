"""One process's observer: the record call on the request path, and the fold off it, in slices.

The request path pays for one call per request, `record(exchange)` (`recorder.py`): a row of seven
numbers in preallocated columns, and for a request sampled for the access log or a span, the few
fields its line or span needs. No exchange outlives its request. Everything else happens in `run`,
off the request path, ten times a second: each block of up to `recorder.BLOCK` rows is folded with
numpy into the latency sketches (`latency.py`) and the counters (`metrics.py`), one block per
slice, and the sampled requests are made into access-log lines (`access_log.py`) and
OpenTelemetry spans (`otel.py`, sent by the SDK's batch processor from its own thread) for at most
`SLICE_NS` at a time; between slices the loop serves requests. Once a second this worker's figures
are published to the host store under `latency/<pid>` and `metrics/worker/<pid>` with a TTL of a
few seconds, so a worker that dies drops out of `/latency` and `/metrics` soon after. What each
part costs: `python bench/observe.py`; what it all costs a loaded gateway: `bench/run
--compare-recording`, against `observability.record: false`, which compiles tables that record
nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import zlib
from time import perf_counter_ns

import numpy as np

from . import latency, metrics, otel
from .access_log import AccessLog, iso_time, line, query_keys
from .recorder import ERROR_KINDS, METHODS, Recorder

log = logging.getLogger("gatewayd.observe")

FOLD_INTERVAL_S = 0.1
SLICE_NS = 1_000_000  # lines and spans are made for at most this long before the loop serves again
PUBLISH_INTERVAL_S = 1.0
PUBLISH_TTL_S = 5.0  # a worker silent this long is taken for dead
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
_N_METHODS = len(METHODS)
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
        self.recorder = Recorder()
        self.record = self.recorder.record
        self.recording = True  # observability.record: tables compiled with it false record nothing
        self._access_log = AccessLog()
        self.otel: otel.Export | None = None
        self.started_at = time.time()
        self.book = latency.Book(int(self.started_at))
        self.reload_failures = 0
        self._publish_warned = 0.0
        self._folding = None  # the fold `run` is part way through, if any

    # --- config ---------------------------------------------------------------------------------

    @property
    def access_log(self) -> AccessLog:
        return self._access_log

    @access_log.setter
    def access_log(self, value: AccessLog) -> None:
        self._access_log = value
        self._sampling()

    def _sampling(self) -> None:
        """What `record` keeps for lines and spans: decided per request, at record time."""
        access = self._access_log
        self.recorder.configure(access.sample if access.enabled else 0.0, self.otel)

    def configure(self, observability) -> None:
        """Apply a config's `observability` settings (at start and at each reload)."""
        self.recording = getattr(observability, "record", True)
        to, sample = observability.access_log_to, observability.access_log_sample
        if (to, sample) != (self._access_log.to, self._access_log.sample):
            self.fold()  # lines recorded so far go where they were meant to
            self._access_log.close()
            self.access_log = AccessLog(to, sample)
        wanted = getattr(observability, "otel", None)
        if wanted != (self.otel.config if self.otel is not None else None):
            self.fold()  # spans recorded so far go where they were meant to
            otel.stop(self.otel)
            self.otel = otel.start(wanted) if wanted is not None else None
            self._sampling()

    # --- off the request path -------------------------------------------------------------------

    def fold(self) -> None:
        """Fold everything recorded so far into the sketches, counters, access log and spans, at once."""
        for _ in self._fold_steps():
            pass

    def _fold_steps(self):
        """The fold as a generator that yields between slices: after each block of rows, and after each
        `SLICE_NS` of making lines or spans. A fold left part way is finished first."""
        if self._folding is not None:
            unfinished, self._folding = self._folding, None
            for _ in unfinished:
                pass
        self._folding = steps = self._steps()
        try:
            yield from steps
        finally:
            if self._folding is steps:
                self._folding = None

    def _steps(self):
        recorder = self.recorder
        now = int(time.time())
        for block, rows in recorder.take():
            self._fold_block(block, rows, now)
            recorder.give_back(block)
            yield
        lines, spans = recorder.lines[:], recorder.spans[:]
        recorder.lines.clear()
        recorder.spans.clear()
        if not lines and not spans:
            return
        wall_offset = time.time_ns() - perf_counter_ns()
        worker = self.status.worker if hasattr(self.status, "worker") else 0
        deadline = perf_counter_ns() + SLICE_NS
        if lines:
            access = self._access_log
            out = []
            for fields in lines:
                out.append(_line(fields, wall_offset, worker))
                if perf_counter_ns() > deadline:
                    yield
                    deadline = perf_counter_ns() + SLICE_NS
            access.write(out)
        export = self.otel
        if export is not None:
            for fields in spans:
                try:
                    export.spans(fields, wall_offset, worker)
                except Exception:
                    log.exception("could not make the spans of a request to %s", fields[6])
                if perf_counter_ns() > deadline:
                    yield
                    deadline = perf_counter_ns() + SLICE_NS

    def _fold_block(self, block: list[list[int]], rows: int, now: int) -> None:
        """Fold one block of recorded rows (see `recorder.COLUMNS`) in a few numpy calls."""
        route, method, status, server_ns, total_ns, upstream, upstream_ns = (
            np.fromiter(column, np.int64, rows) for column in block  # the first `rows` of each column
        )
        names = self.recorder.routes.names
        # requests by route, method and status class
        cls = np.clip(status // 100, 1, 5) - 1
        codes, counts = np.unique((route * _N_METHODS + method) * 5 + cls, return_counts=True)
        inc = self._requests.inc
        for code, n in zip(codes.tolist(), counts.tolist()):
            rm, c = divmod(code, 5)
            r, m = divmod(rm, _N_METHODS)
            inc((names[r], METHODS[m], _CLASSES[c]), n)
        # latency and 4xx/5xx per route
        total = latency.histograms(route, total_ns / 1e6)
        started = server_ns >= 0
        server = latency.histograms(route[started], server_ns[started] / 1e6)
        e4 = np.bincount(route, weights=(status >= 400) & (status < 500)).tolist()
        e5 = np.bincount(route, weights=status >= 500).tolist()
        aggs = {}
        for r, h in total.items():
            agg = aggs[names[r]] = latency.Agg()
            agg.count, agg.e4, agg.e5, agg.total = h.count, int(e4[r]), int(e5[r]), h
            if r in server:
                agg.server = server[r]
        # upstream time and errors
        ups = {}
        proxied = upstream >= 0
        if proxied.any():
            up_names = self.recorder.upstreams.names
            up, ns = upstream[proxied], upstream_ns[proxied]
            failed = (ns == -1) | (ns == -2)
            if failed.any():
                codes, counts = np.unique(up[failed] * 4 - ns[failed], return_counts=True)
                for code, n in zip(codes.tolist(), counts.tolist()):
                    u, kind = divmod(code, 4)
                    self._upstream_errors.inc((up_names[u], ERROR_KINDS[-kind]), n)
            timed = ns >= 0
            for u, h in latency.histograms(up[timed], ns[timed] / 1e6).items():
                agg = ups[up_names[u]] = latency.Agg()
                agg.count, agg.total = h.count, h
        self.book.add(now, aggs, ups)

    def _identity(self) -> dict:
        status = self.status
        return {
            "pid": os.getpid(),
            "worker": getattr(status, "worker", 0),
            "started_at": self.started_at,
            "generation": status.generation,
            "reload_failures": self.reload_failures,
            "recording": self.recording,
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
        """Fold (and write the access log) every FOLD_INTERVAL_S in slices, publish every
        PUBLISH_INTERVAL_S, on the wall clock's ticks so that the workers' seconds line up, until
        `stop`; then a last fold, at once."""
        published = 0.0
        try:
            while not stop.is_set():
                delay = FOLD_INTERVAL_S - (time.time() % FOLD_INTERVAL_S) + 0.002
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
                try:
                    for _ in self._fold_steps():
                        await asyncio.sleep(0)  # the loop serves requests between slices
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


def _line(fields: tuple, wall_offset: int, worker) -> bytes:
    """The access-log line of a request sampled at record time (`recorder.LINE_FIELDS`)."""
    t0, request_id, trace_id, route, consumer, method, path, qs, version, status, sent, server_ns, total_ns, upstream, up_ns = fields
    return line(
        {
            "time": iso_time((t0 + wall_offset) / 1e9),
            "request_id": request_id.decode("latin-1"),
            "trace_id": trace_id,
            "route": route,
            "consumer": consumer,
            "method": method,
            "path": path,
            "query_keys": query_keys(qs),
            "protocol": f"HTTP/{version}",
            "status": status,
            "bytes_sent": sent,
            "server_ms": None if server_ns is None else round(server_ns / 1e6, 3),
            "total_ms": round(total_ns / 1e6, 3),
            "upstream": upstream,
            "upstream_ms": None if up_ns is None else round(up_ns / 1e6, 3),
            "cache": None,
            "worker": worker,
        }
    )
