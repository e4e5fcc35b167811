"""OpenTelemetry export (`observability.otel`): one span per request, sent over OTLP/HTTP.

Needs the optional packages of `gatewayd[otel]` (the OpenTelemetry SDK and its OTLP/HTTP exporter);
`available()` says whether they are installed, and the config check reports an `otel` section
without them. Whether a request gets a span is decided when it is recorded (`keep`), and only then
are the fields its span needs kept (`recorder.SPAN_FIELDS`); the spans are made by the observer's
fold, off the request path, and sent by the SDK's `BatchSpanProcessor` from its own thread.

Each request's span (kind server) is named after its route (`unmatched` when no route took it). It
carries the exchange's trace id, and for a proxied request the span id the upstream received as its
parent in `traceparent` (see `trace.py`), so the upstream's spans nest under it; its parent is the
incoming `traceparent`'s parent id when that was valid. It runs from the request's arrival to the
end of its response body, and has the attributes `http.request.method`, `url.path`,
`http.response.status_code`, `http.route` (the route's name, when one matched), `gatewayd.upstream`
and `gatewayd.worker`; its status is an error for 5xx responses. A proxied request has a child span
`upstream` (kind client) for the upstream's time to its response headers, which ends when the
response start is handed on; when the upstream failed (`timeout` or `unavailable`) it spans the
request's time to its error response and has an error status.

`sample` keeps that fraction of traces, chosen by trace id (as OpenTelemetry's `TraceIdRatioBased`),
so all of one trace's requests through the gateway are kept or dropped together.
"""

from __future__ import annotations

import importlib.util
import logging
import threading

log = logging.getLogger("gatewayd.observe.otel")

UNMATCHED = "unmatched"
_MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
SCHEDULE_DELAY_MS = 1000  # how often the batch processor sends what it holds
EXPORT_TIMEOUT_S = 10.0


def available() -> bool:
    """Whether the packages of `gatewayd[otel]` are installed."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in _MODULES)
    except ModuleNotFoundError:  # a parent package is missing
        return False


class Export:
    """A tracer provider with a batch processor sending to `config.endpoint`; `spans` makes a request's spans."""

    def __init__(self, config, *, exporter=None):
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        self.config = config
        given = self._given = {"trace": None, "span": None}
        random_ids = RandomIdGenerator()

        class Ids(IdGenerator):
            """The ids the fold chose for the span about to start, else random ones."""

            def generate_span_id(self) -> int:
                span_id, given["span"] = given["span"], None
                return span_id if span_id is not None else random_ids.generate_span_id()

            def generate_trace_id(self) -> int:
                trace_id, given["trace"] = given["trace"], None
                return trace_id if trace_id is not None else random_ids.generate_trace_id()

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint, timeout=EXPORT_TIMEOUT_S)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ALWAYS_ON,  # sampling is done in `keep`, before any span object is made
            id_generator=Ids(),
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=SCHEDULE_DELAY_MS))
        self.tracer = self.provider.get_tracer("gatewayd")
        self._bound = int(config.sample * (1 << 64))
        self._lock = threading.Lock()  # the ids handed to `Ids` are for one span at a time

    def keep(self, trace_id: str) -> bool:
        """Whether this trace is sampled: its low 64 bits under `sample` * 2^64."""
        bound = self._bound
        return bound >= 1 << 64 or (bound > 0 and int(trace_id[16:], 16) < bound)

    def spans(self, fields: tuple, wall_offset: int, worker) -> None:
        """Make and end the spans of one request, from what `record` kept (`recorder.SPAN_FIELDS`;
        its route is None when no route matched, its times are perf_counter_ns)."""
        from opentelemetry import trace as api
        from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

        trace_id, span_id, parent, route, status, method, path, upstream, error, upstream_ns, t0, t_start, t_end = fields
        attributes = {
            "http.request.method": method,
            "url.path": path,
            "http.response.status_code": status,
            "gatewayd.worker": worker,
        }
        if route is not None:
            attributes["http.route"] = route
        if upstream is not None:
            attributes["gatewayd.upstream"] = upstream
        if parent is not None:
            context = api.set_span_in_context(
                NonRecordingSpan(SpanContext(int(parent[0], 16), int(parent[1], 16), True, TraceFlags(int(parent[2], 16) & 1)))
            )
        else:
            context = api.set_span_in_context(api.INVALID_SPAN)  # a root: not the thread's current span
        t0 += wall_offset
        t_end += wall_offset
        with self._lock:
            self._given["trace"] = int(trace_id, 16)
            self._given["span"] = int(span_id, 16) if span_id else None
            span = self.tracer.start_span(
                route or UNMATCHED, context, kind=SpanKind.SERVER, attributes=attributes, start_time=t0,
            )  # fmt: skip
            self._given["trace"] = self._given["span"] = None
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        if upstream is not None:
            headers_at = (t_start + wall_offset) if t_start else t_end
            if error is None and upstream_ns is not None:
                begin = headers_at - upstream_ns
            else:
                begin = t0
            child = self.tracer.start_span(
                "upstream", api.set_span_in_context(span), kind=SpanKind.CLIENT,
                attributes={"gatewayd.upstream": upstream}, start_time=max(begin, t0),
            )  # fmt: skip
            if error is not None:
                child.set_attribute("error.type", error)
                child.set_status(Status(StatusCode.ERROR, f"upstream {error}"))
            child.end(end_time=max(headers_at, begin))
        span.end(end_time=t_end)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def close(self) -> None:
        """Send what is queued and stop the processor's thread (blocks up to the export timeout)."""
        try:
            self.provider.shutdown()
        except Exception:
            log.exception("closing the OpenTelemetry exporter failed")


def start(config) -> Export | None:
    """An `Export` for an `observability.otel` config, or None (logged) when the packages are missing."""
    if not available():
        log.error("observability.otel is set but OpenTelemetry is not installed (install gatewayd[otel]); spans are not exported")
        return None
    return Export(config)


def stop(export: Export | None, *, background: bool = True) -> None:
    """Stop exporting: close `export` (in a thread, so as not to block the loop)."""
    if export is None:
        return
    if background:
        threading.Thread(target=export.close, name="gatewayd-otel-close", daemon=True).start()
    else:
        export.close()
