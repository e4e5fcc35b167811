"""W3C Trace Context (https://www.w3.org/TR/trace-context/): keep, validate or start a trace.

A request's `traceparent` is kept when it is valid, and replaced by a new trace when it is absent or
invalid (its `tracestate` is then dropped too, as the spec asks). Either way the upstream receives
`traceparent: 00-<trace id>-<the gateway's span id>-<flags>`, so the gateway is the parent of the
upstream's span. A new trace is marked sampled (flags 01), so upstreams that sample by their parent
still record it. Ids come from `random.getrandbits`, not a cryptographic source: they need to be
unique, not secret, and this is on the request path.

The span id made here for the forwarded `traceparent` is the one the gateway's own span carries when
spans are exported to OpenTelemetry (`otel.py`); the proxy keeps it on the exchange.
"""

from __future__ import annotations

import re
from random import getrandbits

# version 00 is exactly this; later versions may append "-..." fields, which we do not forward
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_ZERO_TRACE_STR = "0" * 32
_ZERO_SPAN_STR = "0" * 16


def parse(value: bytes) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a valid `traceparent`, else None."""
    m = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == b"ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if version == b"00" and rest is not None:
        return None
    return trace_id.decode(), parent_id.decode(), flags.decode()


def new_trace_id() -> str:
    return "%032x" % (getrandbits(128) or 1)


def new_span_id() -> str:
    return "%016x" % (getrandbits(64) or 1)


def forward(traceparent: bytes | None, tracestate: bytes | None) -> tuple[str, str | None, str, str]:
    """What to send upstream: (traceparent, tracestate or None, trace id, the gateway's span id)."""
    parsed = parse(traceparent) if traceparent is not None else None
    if parsed is None:
        ids = "%048x" % getrandbits(192)  # a trace id and a span id from one call
        trace_id, span_id = ids[:32], ids[32:]
        if trace_id == _ZERO_TRACE_STR or span_id == _ZERO_SPAN_STR:
            trace_id, span_id = new_trace_id(), new_span_id()
        return f"00-{trace_id}-{span_id}-01", None, trace_id, span_id
    trace_id, _, flags = parsed
    state = tracestate.decode("latin-1") if tracestate else None
    span_id = new_span_id()
    return f"00-{trace_id}-{span_id}-{flags}", state, trace_id, span_id


def trace_id_of(headers) -> str | None:
    """The trace id of a request's valid `traceparent`, if it has one (for requests not proxied)."""
    for name, value in headers:
        if name == b"traceparent":
            parsed = parse(value)
            return parsed[0] if parsed else None
    return None


def parent_of(headers) -> tuple[str, str, str] | None:
    """(trace id, parent id, flags) of a request's valid `traceparent` (the last one, as the proxy takes), if any."""
    found = None
    for name, value in headers:
        if name == b"traceparent":
            found = value
    return parse(found) if found is not None else None


HEADERS = frozenset({b"traceparent", b"tracestate"})  # the proxy replaces the client's with `forward`'s
