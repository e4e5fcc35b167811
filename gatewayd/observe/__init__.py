"""Seeing what the gateway does: latency statistics (`/latency`), Prometheus metrics (`/metrics`),
the access log and W3C trace context.

One module per idea: `latency.py` (sketches and windows), `metrics.py` (the counters registry, where
new counters are added, and the exposition), `access_log.py`, `trace.py`, `otel.py`, `recorder.py`
(the record call on the request path: a row of numbers, and the sampling of lines and spans),
`observer.py` (the fold off the request path, in slices, and publishing), `endpoints.py` and
`latency_page.py`.
"""

from .observer import Observer

__all__ = ["Observer"]
