"""One request and its response: the ASGI callables plus what dispatch learned about the request.

All responses leave through `start`, which is where `X-Request-Id`, `Server-Timing` and `Date` are
added, so no path (static, proxied, error) can forget them. The engines add no Date of their own where
the gateway sends one (Hypercorn's is off, Granian adds one only to a response without), so a `headers`
policy can set or remove it: a route whose policies do says so with `dated=False`. Server-Timing is
measured from the request's arrival in the app (`t0`) to the moment the response start is handed to
the server (`t_start`, which the latency statistics use too).
"""

from __future__ import annotations

import itertools
import os
from email.utils import formatdate
from json.encoder import encode_basestring_ascii
from time import perf_counter_ns, time

JSON_TYPE = (b"content-type", b"application/json")
# a str as a JSON string literal, quoted, non-ASCII and control characters escaped (json's C
# function: what `json.dumps` writes, without encoding a whole dict per error)
_json_str = encode_basestring_ascii
_RID_PREFIX = os.urandom(5).hex().encode()
_rid_counter = itertools.count(1)

# headers every response carries, fixed for the life of the process: the HTTP/3 listener puts its
# `Alt-Svc` here once its sockets are bound
STANDING_HEADERS: list[tuple[bytes, bytes]] = []
# the ASGI scope extension the HTTP/3 listener sets on a request that arrived in 0-RTT early data
EARLY_DATA = "gatewayd.early_data"


_date = [-1, b""]  # [second, that second as an HTTP date]: formatted once a second


def http_date() -> bytes:
    """Now, as a Date header's value (RFC 9110 section 5.6.7)."""
    now = int(time())
    if _date[0] != now:
        _date[:] = now, formatdate(now, usegmt=True).encode()
    return _date[1]


def in_early_data(scope) -> bool:
    """Whether the request arrived in 0-RTT early data, which an attacker can replay (RFC 8470)."""
    return EARLY_DATA in (scope.get("extensions") or ())


def new_request_id() -> bytes:
    """A unique id: a per-process random prefix and a counter (cheaper than uuid4 on the hot path)."""
    return b"%s%010x" % (_RID_PREFIX, next(_rid_counter))


class Cut(Exception):
    """Raised by an action whose response cannot be completed once it has started (the upstream's
    answer broke off mid-body): the engine then ends the response as broken (an HTTP/1.1 connection
    is closed, an HTTP/2 or 3 stream reset), so that no client takes a truncated body for a whole
    one. The action has logged why: it passes through the dispatch table without a traceback."""


class Exchange:
    __slots__ = (
        "scope", "receive", "send", "t0", "request_id", "params", "timing", "started", "route_name",
        # set by policies: the authenticated consumer id, response headers every answer gets (CORS,
        # rate-limit state), and (phase name, ns) per stage with `server_timing: detailed` (else None)
        "consumer", "extra", "stages",
        # for gatewayd.observe, set only when known (read with getattr): the response status and its start
        # time (perf_counter_ns), body bytes sent, the end time, and what the proxy reports
        "status", "t_start", "sent", "t_end", "upstream", "upstream_ns", "upstream_error", "trace_id", "span_id",
    )  # fmt: skip

    def __init__(self, scope, receive, send, t0: int, request_id: bytes, timing: bool):
        self.scope = scope
        self.receive = receive
        self.send = send
        self.t0 = t0
        self.request_id = request_id
        self.timing = timing
        self.params: dict[str, str] = {}
        self.started = False
        self.route_name = ""
        self.upstream = None  # the proxy's upstream name
        self.consumer = self.extra = self.stages = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]], dated: bool = True) -> None:
        """Send the response start; `headers` is extended in place (`dated`: with the current Date)."""
        headers.append((b"x-request-id", self.request_id))
        if dated:
            headers.append((b"date", http_date()))
        if STANDING_HEADERS:
            headers.extend(STANDING_HEADERS)
        if self.extra is not None:
            headers.extend(self.extra)
        self.status = status
        t = self.t_start = perf_counter_ns()
        if self.timing:
            timing = b"total;dur=%.3f" % ((t - self.t0) / 1e6)
            if self.stages is not None:
                timing += self._stage_timing()
            headers.append((b"server-timing", timing))
        self.started = True
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    def add_headers(self, pairs) -> None:
        """Headers for whatever response this request gets (an error included)."""
        if self.extra is None:
            self.extra = list(pairs)
        else:
            self.extra.extend(pairs)

    def _stage_timing(self) -> bytes:
        stages = self.stages
        if getattr(self, "upstream_ns", None) is not None:
            stages = [*stages, (b"upstream", self.upstream_ns)]
        return b"".join(b", %s;dur=%.3f" % (name, ns / 1e6) for name, ns in stages)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, dated: bool = True) -> None:
        """A whole response in two sends; `headers` must already carry content-length."""
        await self.start(status, headers, dated)
        self.sent = len(body)
        await self.send({"type": "http.response.body", "body": body})

    async def not_found(self) -> None:
        scope = self.scope
        await self.error(404, "not_found", f"no route matches {scope['method']} {scope['path']}")

    async def error(self, status: int, error: str, message: str, headers=()) -> None:
        """A JSON error body (see `error_body`); the only shape clients see on failure."""
        body = error_body(error, message, self.request_id)
        await self.respond(status, [JSON_TYPE, (b"content-length", b"%d" % len(body)), *headers], body)


def error_body(error: str, message: str, request_id: bytes) -> bytes:
    """`{"error", "message", "request_id"}`: the body of every error the gateway answers, its engines'
    refusals of a request head included where the engine lets it write them.

    `error` is one of the gateway's own codes (letters and `_`), written as it is; the message
    (which may quote the request's method and path) and the request id (maybe the client's) are
    escaped: the bytes `json.dumps` of the dict would give, without encoding a dict per error."""
    return b'{"error": "%s", "message": %s, "request_id": %s}' % (
        error.encode(), _json_str(message).encode(), _json_str(request_id.decode("latin-1")).encode()
    )
