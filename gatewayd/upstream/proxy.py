"""The `upstream` action: forward the request to one target of an upstream and stream the answer back.

Bodies are streamed both ways (never buffered whole). Hop-by-hop headers (RFC 9110 section 7.6.1:
Connection and the fields it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
Upgrade) are not forwarded in either direction; X-Forwarded-For/-Proto/-Host, Via and X-Request-Id
are added. Failures before the response starts become JSON errors: no connection 502, a connect or
response timeout 504. The target is the upstream's rotation's pick (targets.py), and the outcome
is reported back to it, so that a failing target leaves rotation (breaker.py); a request that
failed before its response may be tried again on another target (retry.py).
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic, perf_counter_ns
from urllib.parse import quote

from pyreqwest.exceptions import ConnectTimeoutError, PyreqwestError, RequestTimeoutError

from ..dispatch.exchange import in_early_data
from ..dispatch.refusals import body_too_large
from ..observe import trace
from ..policies import HeaderEdit
from .breaker import CANCEL, FAILURE, SUCCESS
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


def _reason(exc: PyreqwestError) -> str:
    """The innermost cause pyreqwest reports ("Connection refused (os error 111)"), for the log."""
    details = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
    causes = details.get("causes") or []
    return causes[-1].get("message", str(exc)) if causes else str(exc.args[0] if exc.args else exc)


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
    extra_up = request_edit.extra
    # Server is the gateway's (or its engine's) to send; the upstream's Date is passed on (RFC 9110
    # 6.6.1: caches compute ages from it) and the gateway adds one only when it has none (see
    # Exchange.start); an upstream's Alt-Svc names the upstream's own endpoints, which the gateway's
    # clients cannot use
    drop_down = {n.decode() for n in HOP_BY_HOP | response_edit.drop} | {"server", "alt-svc"}
    extra_down = response_edit.extra
    dated = response_edit.keeps_date
    response_timeout = upstream.config.response_timeout
    too_large = body_too_large(max_body_bytes)
    rotation = upstream.rotation
    targets = upstream.targets
    pool = upstream.pool
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
        headers = []
        forwarded_for = host = connection = traceparent = tracestate = None
        has_body = None  # unknown until Content-Length or Transfer-Encoding says
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
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        first = None
        if has_body is None:
            has_body = False
            if scope.get("http_version") in _FRAMED:  # a body without Content-Length: the first message tells
                first = await ex.receive()
                if first["type"] == "http.disconnect":
                    return
                has_body = bool(first.get("body") or first.get("more_body"))
        if connection is not None:
            named = {t.decode("latin-1") for t in _connection_tokens(connection)}
            headers = [h for h in headers if h[0] not in named]
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        headers.append(("x-forwarded-for", f"{forwarded_for.decode('latin-1')}, {ip}" if forwarded_for else ip))
        headers.append(("x-forwarded-proto", scope.get("scheme", "http")))
        if host is not None:
            headers.append(("x-forwarded-host", host.decode("latin-1")))
        headers.append(("via", f"{scope.get('http_version', '1.1')} gatewayd"))
        headers.append(("x-request-id", ex.request_id.decode("latin-1")))
        traceparent, tracestate, ex.trace_id, ex.span_id = trace.forward(traceparent, tracestate)
        headers.append(("traceparent", traceparent))
        if tracestate:
            headers.append(("tracestate", tracestate))
        if in_early_data(scope):
            headers.append(("early-data", "1"))  # RFC 8470 section 5.1
        if ex.consumer is not None:
            headers.append(("x-consumer-id", ex.consumer))
        for name, value in extra_up:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))

        # the target is the rotation's pick; each try's outcome goes back to it (breaker.py), and a
        # try that failed before any response is made again on another target when retry.py says so
        ex.upstream, ex.upstream_ns, ex.upstream_error = upstream_name, None, None
        retryable = retries is not None and not has_body and scope["method"] in IDEMPOTENT
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
            pool.acquire()
            outcome = CANCEL  # this try's event for the breaker, until known
            try:
                url = targets[i] + add + path + (b"?" + qs if qs else b"")
                builder = pool.client.request(scope["method"], url.decode("latin-1")).headers(headers)
                if has_body:
                    builder = builder.body_stream(_body(ex.receive, max_body_bytes, first))
                request = builder.build_streamed()
                error = None
                try:
                    async with asyncio.timeout(timeout):
                        response = await request.__aenter__()
                except BodyTooLarge:  # raised through pyreqwest from _body, unwrapped
                    return await too_large.send(ex)
                except ClientDisconnected:
                    return
                except (TimeoutError, RequestTimeoutError) as exc:
                    error = "timeout"
                    kind = "connect" if isinstance(exc, ConnectTimeoutError) else "response"
                    log.warning("upstream %s (%s): %s timeout", upstream_name, targets[i].decode(), kind)
                except PyreqwestError as exc:
                    if isinstance(exc.__cause__, ClientDisconnected) or "ClientDisconnected" in str(exc):
                        return
                    if isinstance(exc.__cause__, BodyTooLarge) or "BodyTooLarge" in str(exc):
                        return await too_large.send(ex)
                    error = "unavailable"
                    log.warning("upstream %s (%s): %s", upstream_name, targets[i].decode(), _reason(exc))
                failed = error is not None or response.status in GATEWAY_ERRORS
                rotation.report(i, FAILURE if failed else SUCCESS)
                outcome = None  # reported
                if failed and retryable and retries.again(tried, now := monotonic(), deadline):
                    if error is None:
                        await request.__aexit__(None, None, None)  # the failed answer is dropped
                    timeout = min(retry_timeout, deadline - now)
                    continue
                if error is not None:
                    ex.upstream_error = error
                    if error == "timeout":
                        return await ex.error(504, "upstream_timeout", f"upstream {upstream_name!r} did not answer in time")
                    return await ex.error(502, "upstream_unavailable", f"upstream {upstream_name!r} could not be reached")
                ex.upstream_ns = perf_counter_ns() - sent_at
                try:
                    drop = drop_down
                    if (connection := response.headers.get("connection")) is not None:  # and the fields it names
                        drop = drop_down | {t.decode("latin-1") for t in _connection_tokens(connection.encode("latin-1"))}
                    if "transfer-encoding" in response.headers:  # a Content-Length beside it is not the body's (RFC 9112 6.3)
                        drop = drop | {"content-length"}
                    out = [
                        (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in response.headers.items()
                        if name not in drop
                    ]
                    out.extend(extra_down)
                    await ex.start(response.status, out, dated and "date" not in response.headers)
                    reader = response.body_reader
                    send = ex.send
                    ex.sent = 0
                    while (chunk := await reader.read_chunk()) is not None:
                        ex.sent += len(chunk)
                        await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                finally:
                    await request.__aexit__(None, None, None)
            finally:
                if outcome is not None:
                    rotation.report(i, outcome)
                rotation.done(i)
                pool.release()

    return proxy
