"""What a request leaves behind when it is over: one row of numbers, and what its sampled line or span needs.

`Recorder.record(exchange)` is the only call on the request path (`Table.handle` makes it once per
request). It writes seven numbers into preallocated columns (Python lists of `BLOCK` rows: a store
into one costs a few ns, less than into an `array.array`, and a list of ints holds nothing the
garbage collector walks): the route and method as small indexes, the status, server and total time
in ns, the upstream as an index, and its time in ns or what went wrong (`UP_*`). Nothing of the
exchange (scope, headers) outlives the request, so the collector has no recorded exchanges to walk,
and the fold reads columns, vectorised (see `observer.py`).

Whether the request gets an access-log line and an OpenTelemetry span is decided here too, and only
a sampled request keeps what its line or span needs, as one tuple (`LINE_FIELDS`, `SPAN_FIELDS`),
never the exchange. Spans are also bounded: at most `MAX_PENDING` wait for the fold (the SDK's batch
processor drops spans the same way when its queue is full); lines are not.

A full block is queued for the fold and the next one taken from the spares the fold gives back.
"""

from __future__ import annotations

import logging
import time
from random import random
from time import perf_counter_ns

from . import trace

log = logging.getLogger("gatewayd.observe")

BLOCK = 2048  # rows per block; a block is folded in one slice (about 0.3 ms, see bench/observe.py)
MAX_PENDING = 8192  # sampled spans waiting for the fold, at most
UNMATCHED = "(unmatched)"  # the route name of requests no route took (404, 405)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "OTHER")
_METHOD_INDEX = {m: i for i, m in enumerate(METHODS)}
OTHER = len(METHODS) - 1
COLUMNS = ("route", "method", "status", "server_ns", "total_ns", "upstream", "upstream_ns")
# the upstream_ns column when the proxy has no time to the upstream's response headers
UP_TIMEOUT, UP_UNAVAILABLE, UP_NONE = -1, -2, -3
UP_ERRORS = {"timeout": UP_TIMEOUT, "unavailable": UP_UNAVAILABLE}
ERROR_KINDS = {v: k for k, v in UP_ERRORS.items()}

# what a sampled request keeps, by position
LINE_FIELDS = (
    "t0", "request_id", "trace_id", "route", "consumer", "method", "path", "query_string", "http_version", "status",
    "sent", "server_ns", "total_ns", "upstream", "upstream_ns",
)  # fmt: skip
SPAN_FIELDS = (
    "trace_id", "span_id", "parent", "route", "status", "method", "path", "upstream", "upstream_error", "upstream_ns",
    "t0", "t_start", "t_end",
)  # fmt: skip


def new_block() -> list[list[int]]:
    return [[0] * BLOCK for _ in COLUMNS]


class Names:
    """Route or upstream names and their indexes in the columns; a name keeps its index for the process's life."""

    __slots__ = ("index", "names")

    def __init__(self, *first: str):
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        for name in first:
            self.add(name)

    def add(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i


class Recorder:
    """The columns, the sampled lines and spans, and the `record` closure that fills them."""

    def __init__(self):
        self.routes = Names(UNMATCHED)
        self.routes.index[""] = 0  # `Exchange.route_name` of a request no route took
        self.upstreams = Names()
        self.full: list[tuple[list[list[int]], int]] = []  # (block, rows) waiting for the fold
        self.spares: list[list[list[int]]] = []
        self.lines: list[tuple] = []  # LINE_FIELDS of the requests sampled for the access log
        self.spans: list[tuple] = []  # SPAN_FIELDS of the requests sampled for OpenTelemetry
        self.dropped_spans = 0
        self._dropped_warned = 0.0
        block = new_block()
        rows = 0
        routes, upstreams = self.routes, self.upstreams
        route_index, upstream_index = routes.index, upstreams.index
        methods = _METHOD_INDEX
        log_sample = 0.0  # fraction of requests that get an access-log line
        export = None  # the otel.Export, when spans are made
        sampling = False  # log_sample > 0 or export is not None
        c_route, c_method, c_status, c_server, c_total, c_upstream, c_up_ns = block

        def record(ex, clock=perf_counter_ns) -> None:
            nonlocal rows
            t_end = clock()
            i = rows
            t0 = ex.t0
            c_total[i] = t_end - t0
            try:  # subscripts rather than .get: a method call costs more than the rare KeyError
                c_route[i] = route_index[ex.route_name]
            except KeyError:
                c_route[i] = routes.add(ex.route_name)
            try:
                c_method[i] = methods[ex.scope["method"]]
            except KeyError:
                c_method[i] = OTHER
            try:
                c_status[i] = ex.status
                c_server[i] = ex.t_start - t0
            except AttributeError:  # the client left before the response started
                c_status[i] = 499
                c_server[i] = -1
            up = ex.upstream
            if up is None:
                c_upstream[i] = -1
            else:
                try:
                    c_upstream[i] = upstream_index[up]
                except KeyError:
                    c_upstream[i] = upstreams.add(up)
                ns = ex.upstream_ns
                if ns is not None:
                    c_up_ns[i] = ns
                else:
                    c_up_ns[i] = UP_ERRORS.get(ex.upstream_error, UP_NONE)
            if sampling:
                keep(ex, t_end)
            rows = i + 1
            if rows == BLOCK:
                swap()

        def swap() -> None:
            nonlocal block, rows, c_route, c_method, c_status, c_server, c_total, c_upstream, c_up_ns
            self.full.append((block, rows))
            block = self.spares.pop() if self.spares else new_block()
            rows = 0
            c_route, c_method, c_status, c_server, c_total, c_upstream, c_up_ns = block

        def take() -> list[tuple[list[list[int]], int]]:
            """Every recorded row so far, as (block, rows); recording goes on in a fresh block."""
            if rows:
                swap()
            taken = self.full[:]
            self.full.clear()
            return taken

        def keep(ex, t_end: int) -> None:
            """The sampling decision, and what a sampled request's line or span needs."""
            to_log = log_sample >= 1 or (log_sample > 0 and random() < log_sample)
            if not to_log and export is None:
                return
            headers = ex.scope["headers"]
            trace_id = getattr(ex, "trace_id", None)
            parent = None
            if export is not None:
                parent = trace.parent_of(headers)
                trace_id = trace_id or (parent[0] if parent else trace.new_trace_id())
            elif trace_id is None:
                trace_id = trace.trace_id_of(headers) or trace.new_trace_id()
            scope = ex.scope
            route = ex.route_name or None
            status = getattr(ex, "status", 0) or 499
            t0 = ex.t0
            t_start = getattr(ex, "t_start", 0)
            upstream = ex.upstream
            up_ns = ex.upstream_ns if upstream is not None else None
            if to_log:
                self.lines.append((
                    t0, ex.request_id, trace_id, route, ex.consumer, scope["method"], scope["path"],
                    scope.get("query_string", b""), scope.get("http_version", "1.1"), status, getattr(ex, "sent", 0),
                    t_start - t0 if t_start else None, t_end - t0, upstream, up_ns,
                ))  # fmt: skip
            if export is not None and export.keep(trace_id):
                if len(self.spans) >= MAX_PENDING:
                    self._dropped()
                    return
                self.spans.append((
                    trace_id, getattr(ex, "span_id", None), parent, route, status, scope["method"], scope["path"],
                    upstream, ex.upstream_error if upstream is not None else None, up_ns, t0, t_start, t_end,
                ))  # fmt: skip

        def configure(sample: float, span_export) -> None:
            nonlocal log_sample, export, sampling
            log_sample, export = sample, span_export
            sampling = log_sample > 0 or export is not None

        self.record = record
        self.take = take
        self.configure = configure

    def give_back(self, block: list[list[int]]) -> None:
        """A folded block, for reuse (a few are kept: after a burst, the rest go)."""
        if len(self.spares) < 4:
            self.spares.append(block)

    def _dropped(self) -> None:
        self.dropped_spans += 1
        now = time.monotonic()
        if now - self._dropped_warned > 60:
            self._dropped_warned = now
            log.warning("OpenTelemetry spans are made more slowly than requests arrive: %d dropped so far "
                        "(lower observability.otel.sample)", self.dropped_spans)  # fmt: skip
