"""The `upstream` action: forward the request to one target of an upstream and stream the answer back.

Bodies are streamed both ways (never buffered whole). Hop-by-hop headers (RFC 9110 section 7.6.1:
Connection and the fields it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
Upgrade) are not forwarded in either direction; X-Forwarded-For/-Proto/-Host, Via and X-Request-Id
are added. Failures before the response starts become JSON errors: no connection 502, a connect or
response timeout 504 (errors.py); a response that fails after it started is cut off (see `Cut`),
with one line in the log. The target is the upstream's rotation's pick (targets.py), and the
outcome is reported back to it, so that a failing target leaves rotation (breaker.py); a request
that failed before its response may be tried again on another target (retry.py).

The request goes out through the upstream's pool (h1_pool.py); its head is written here, in one
piece, from the client's header list in one pass.
"""

from __future__ import annotations

import logging
from time import monotonic, perf_counter_ns
from urllib.parse import quote

from ..dispatch.exchange import Cut, in_early_data
from ..dispatch.refusals import body_too_large
from ..observe import trace
from ..policies import HeaderEdit
from .breaker import CANCEL, FAILURE, SUCCESS
from .errors import TIMEOUT, UpstreamError
from .h1_connection import DONE, request_head
from .pool import Upstream
from .retry import IDEMPOTENT

log = logging.getLogger("gatewayd.proxy")

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# set by the gateway itself on the way up; the client's values are folded in or replaced
# (`early-data` is never trusted from the client: it is set only when the gateway received the request in 0-RTT;
# nor `x-consumer-id`: it is set only when an auth policy admitted the request)
_OWN = frozenset({
    b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via", b"x-request-id", b"early-data",
    b"x-consumer-id",
})  # fmt: skip


# answers that count as a target's failure (with no connection and no answer in time)
GATEWAY_ERRORS = frozenset({502, 503, 504})

# HTTP versions whose requests may carry a body without Content-Length or Transfer-Encoding
_FRAMED = frozenset({"2", "3"})


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


class BodyTooLarge(Exception):
    """The request body grew past `server.limits.max_body_bytes` while it was being forwarded."""


async def _body(receive, limit: int, first: dict | None = None):
    """The request body from the ASGI `receive` (after `first`, a message already received), at most `limit` bytes."""
    seen = 0
    while True:
        message, first = first or await receive(), None
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body")
        if chunk:
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge()
            yield chunk
        if not message.get("more_body"):
            return


_PATH_SAFE = "/!$&'()*+,;=:@-._~"  # RFC 3986 pchar and "/": kept as they are when a path is re-encoded


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def compile_proxy(
    upstream: Upstream, rewrite: dict, request_edit: HeaderEdit, response_edit: HeaderEdit,
    max_body_bytes: int,
):  # fmt: skip
    """`max_body_bytes`: a body longer than this is cut off (a longer Content-Length never gets here: see Table)."""
    strip = rewrite.get("strip_prefix", "").encode()
    add = rewrite.get("add_prefix", "").encode()
    drop_up = HOP_BY_HOP | _OWN | trace.HEADERS | request_edit.drop
    upstream_name = upstream.config.name
    extra_up = b"".join(b"%s: %s\r\n" % pair for pair in request_edit.extra)
    # Server is the gateway's (or its engine's) to send; the upstream's Date is passed on (RFC 9110
    # 6.6.1: caches compute ages from it) and the gateway adds one only when it has none (see
    # Exchange.start); an upstream's Alt-Svc names the upstream's own endpoints, which the gateway's
    # clients cannot use
    drop_down = HOP_BY_HOP | response_edit.drop | {b"server", b"alt-svc"}
    extra_down = response_edit.extra
    dated = response_edit.keeps_date
    response_timeout = upstream.config.response_timeout
    read_timeout = upstream.config.read_timeout
    too_large = body_too_large(max_body_bytes)
    rotation = upstream.rotation
    endpoints = upstream.endpoints
    pool = upstream.pool
    h1 = pool.h1
    retries = upstream.retries  # None: retries off
    per_try = upstream.config.retries.per_try_timeout
    retry_timeout = per_try if per_try is not None else response_timeout
    first_timeout = min(retry_timeout, response_timeout)

    async def proxy(ex) -> None:
        scope = ex.scope
        path = scope.get("raw_path") or quote(scope["path"], safe=_PATH_SAFE).encode()
        if strip and path.startswith(strip) and path[len(strip) : len(strip) + 1] in (b"", b"/"):
            path = path[len(strip) :]  # only on a segment boundary, as the route's prefix matched
        if not path.startswith(b"/"):  # what follows the target's host:port must start the path
            path = b"/" + path
        qs = scope["query_string"]
        target = add + path + b"?" + qs if qs else add + path
        method = scope["method"]
        headers = []
        forwarded_for = host = connection = traceparent = tracestate = None
        has_body = None  # unknown until Content-Length or Transfer-Encoding says
        chunked = True  # the body's framing upstream: chunked unless the client sent Content-Length
        for name, value in scope["headers"]:
            if name in drop_up:
                if name == b"x-forwarded-for":
                    forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
                elif name == b"host":
                    host = value
                elif name == b"connection":
                    connection = value
                elif name == b"transfer-encoding":
                    has_body = True
                elif name == b"traceparent":
                    traceparent = value
                elif name == b"tracestate":
                    tracestate = value if tracestate is None else tracestate + b"," + value
                continue
            if name == b"content-length":
                has_body = value != b"0"
                chunked = False
            headers.append((name, value))
        first = None
        if has_body is None:
            has_body = False
            if scope.get("http_version") in _FRAMED:  # a body without Content-Length: the first message tells
                first = await ex.receive()
                if first["type"] == "http.disconnect":
                    return
                has_body = bool(first.get("body") or first.get("more_body"))
        if connection is not None:
            named = _connection_tokens(connection)
            headers = [h for h in headers if h[0] not in named]
        client = scope.get("client")
        ip = client[0].encode() if client else b"unknown"
        trace_up, state_up, ex.trace_id, ex.span_id = trace.forward(traceparent, tracestate)
        fields = [
            b"%s: %s\r\n" % pair for pair in headers
        ]
        fields.append(
            b"x-forwarded-for: %s\r\nx-forwarded-proto: %s\r\n%svia: %s gatewayd\r\nx-request-id: %s\r\n"
            b"traceparent: %s\r\n" % (
                forwarded_for + b", " + ip if forwarded_for else ip,
                scope.get("scheme", "http").encode(),
                b"x-forwarded-host: %s\r\n" % host if host is not None else b"",
                scope.get("http_version", "1.1").encode(),
                ex.request_id,
                trace_up.encode(),
            )
        )  # fmt: skip
        if state_up:
            fields.append(b"tracestate: %s\r\n" % state_up.encode("latin-1"))
        if in_early_data(scope):
            fields.append(b"early-data: 1\r\n")  # RFC 8470 section 5.1
        if ex.consumer is not None:
            fields.append(b"x-consumer-id: %s\r\n" % ex.consumer.encode("latin-1"))
        if has_body and chunked:
            fields.append(b"transfer-encoding: chunked\r\n")
        fields.append(extra_up)
        fields = b"".join(fields)
        method_bytes = method.encode()
        head_only = method == "HEAD"

        # the target is the rotation's pick; each try's outcome goes back to it (breaker.py), and a
        # try that failed before any response is made again on another target when retry.py says so
        ex.upstream, ex.upstream_ns, ex.upstream_error = upstream_name, None, None
        idempotent = not has_body and method in IDEMPOTENT
        retryable = retries is not None and idempotent
        if retries is not None:
            now = monotonic()
            retries.budget.request(now)
            deadline = now + response_timeout
        timeout = first_timeout
        sent_at = perf_counter_ns()
        tried = 0
        while True:
            i = rotation.pick(tried)
            tried |= 1 << i
            ep = endpoints[i]
            pool.acquire()
            outcome = CANCEL  # this try's event for the breaker, until known
            conn = None
            try:
                head = request_head(method_bytes, target, ep.authority, fields)
                body = _body(ex.receive, max_body_bytes, first) if has_body else None
                error = None
                try:
                    conn = await h1.request(ep, head, head_only, body, chunked, timeout, idempotent)
                    if conn.error is not None and not conn.body:  # it broke off before the client's response began
                        raise conn.error
                except BodyTooLarge:
                    return await too_large.send(ex)
                except ClientDisconnected:
                    return
                except UpstreamError as exc:
                    error = exc.kind
                    log.warning("upstream %s (%s): %s", upstream_name, ep.url, exc)
                failed = error is not None or conn.status in GATEWAY_ERRORS
                rotation.report(i, FAILURE if failed else SUCCESS)
                outcome = None  # reported
                if failed and retryable and retries.again(tried, now := monotonic(), deadline):
                    timeout = min(retry_timeout, deadline - now)
                    continue  # (the failed answer, if any, is dropped with its connection)
                if error is not None:
                    ex.upstream_error = error
                    if error == TIMEOUT:
                        return await ex.error(504, "upstream_timeout", f"upstream {upstream_name!r} did not answer in time")
                    return await ex.error(502, "upstream_unavailable", f"upstream {upstream_name!r} could not be reached")
                ex.upstream_ns = perf_counter_ns() - sent_at
                headers, has_date = _response_headers(conn.headers, drop_down, extra_down)
                await ex.start(conn.status, headers, dated and not has_date)
                send = ex.send
                if conn.state == DONE:  # the whole body came with the head: one message
                    data = conn.take()
                    ex.sent = len(data)
                    return await send({"type": "http.response.body", "body": data})
                ex.sent = 0
                while True:
                    try:
                        await conn.more(read_timeout)
                    except (UpstreamError, BodyTooLarge, ClientDisconnected) as exc:
                        log.warning("upstream %s (%s): response cut off after %d bytes: %s",
                                    upstream_name, ep.url, ex.sent, exc or type(exc).__name__)
                        raise Cut() from None
                    data = conn.take()
                    ex.sent += len(data)
                    if conn.state == DONE:
                        return await send({"type": "http.response.body", "body": data})
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            finally:
                if conn is not None:
                    h1.put(conn)
                if outcome is not None:
                    rotation.report(i, outcome)
                rotation.done(i)
                pool.release()

    return proxy


def _response_headers(received: list, drop: frozenset, extra) -> tuple[list, bool]:
    """The upstream's response headers as the client gets them: less the hop-by-hop ones (and the
    fields its Connection names), `drop` and a Content-Length beside Transfer-Encoding (which is
    not the body's, RFC 9112 section 6.3); plus `extra`. And whether they have a Date."""
    out = []
    reshape = None
    has_date = False
    for pair in received:
        name = pair[0]
        if name in drop:
            if name == b"connection" or name == b"transfer-encoding":
                reshape = (reshape or []) + [pair]
            continue
        if name == b"date":
            has_date = True
        out.append(pair)
    if reshape is not None:
        named = set()
        for name, value in reshape:
            if name == b"transfer-encoding":
                named.add(b"content-length")
            elif value.lower() not in _PLAIN_CONNECTION:
                named |= _connection_tokens(value)
        if named:
            out = [pair for pair in out if pair[0] not in named]
    out.extend(extra)
    return out, has_date


# Connection values that name no other field: nothing more to drop
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
