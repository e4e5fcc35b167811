"""Seeing what the gateway does: latency statistics (`/latency`), Prometheus metrics (`/metrics`),
the access log and W3C trace context.

One module per idea: `latency.py` (sketches and windows), `metrics.py` (the counters registry, where
new counters are added, and the exposition), `access_log.py`, `trace.py`, `observer.py` (the record
call on the request path and the periodic fold off it), `endpoints.py` and `latency_page.py`.
"""

from .observer import Observer

__all__ = ["Observer"]
