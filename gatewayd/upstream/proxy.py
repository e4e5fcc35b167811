"""The `upstream` action: forward the request to one target of an upstream and stream the answer back.

Bodies are streamed both ways (never buffered whole). Hop-by-hop headers (RFC 9110 section 7.6.1:
Connection and the fields it names, Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding,
Upgrade) are not forwarded in either direction; X-Forwarded-For/-Proto/-Host, Via and X-Request-Id
are added. Failures before the response starts become JSON errors: no connection 502, a connect or
response timeout 504.
"""

from __future__ import annotations

import asyncio
import logging

from pyreqwest.exceptions import ConnectTimeoutError, PyreqwestError, RequestTimeoutError

from ..policies import HeaderEdit
from .pool import Upstream

log = logging.getLogger("gatewayd.proxy")

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# set by the gateway itself on the way up; the client's values are folded in or replaced
_OWN = frozenset({b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"via", b"x-request-id"})


class ClientDisconnected(Exception):
    """The client went away while its request body was being forwarded."""


async def _body(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


def _connection_tokens(value: bytes) -> frozenset[bytes]:
    return frozenset(t.strip().lower() for t in value.split(b",") if t.strip())


def compile_proxy(upstream: Upstream, rewrite: dict, request_edit: HeaderEdit, response_edit: HeaderEdit):
    strip = rewrite.get("strip_prefix", "").encode()
    add = rewrite.get("add_prefix", "").encode()
    drop_up = HOP_BY_HOP | _OWN | request_edit.drop
    extra_up = request_edit.extra
    # Date and Server are the engine's to set, once (RFC 9110 6.6.1)
    drop_down = {n.decode() for n in HOP_BY_HOP | response_edit.drop} | {"date", "server"}
    extra_down = response_edit.extra
    response_timeout = upstream.config.response_timeout
    balancer = upstream.balancer
    targets = upstream.targets

    async def proxy(ex) -> None:
        scope = ex.scope
        path = scope.get("raw_path") or scope["path"].encode()
        if strip and path.startswith(strip):
            path = path[len(strip) :] or b"/"
        qs = scope["query_string"]
        headers = []
        forwarded_for = host = connection = None
        has_body = False
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
                continue
            if name == b"content-length":
                has_body = value != b"0"
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
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
        for name, value in extra_up:
            headers.append((name.decode("latin-1"), value.decode("latin-1")))

        i = balancer.pick()
        try:
            url = targets[i] + add + path + (b"?" + qs if qs else b"")
            builder = upstream.client.request(scope["method"], url.decode("latin-1")).headers(headers)
            if has_body:
                builder = builder.body_stream(_body(ex.receive))
            request = builder.build_streamed()
            try:
                async with asyncio.timeout(response_timeout):
                    response = await request.__aenter__()
            except (TimeoutError, RequestTimeoutError) as exc:
                kind = "connect" if isinstance(exc, ConnectTimeoutError) else "response"
                log.warning("upstream %s target %s: %s timeout", upstream.config.name, i, kind)
                return await ex.error(504, "upstream_timeout", f"upstream {upstream.config.name!r} did not answer in time")
            except PyreqwestError as exc:
                if isinstance(exc.__cause__, ClientDisconnected) or "ClientDisconnected" in str(exc):
                    return
                log.warning("upstream %s target %s: %s", upstream.config.name, i, exc)
                return await ex.error(502, "upstream_unavailable", f"upstream {upstream.config.name!r} could not be reached")
            try:
                out = [
                    (name.encode("latin-1"), value.encode("latin-1"))
                    for name, value in response.headers.items()
                    if name not in drop_down
                ]
                out.extend(extra_down)
                await ex.start(response.status, out)
                reader = response.body_reader
                send = ex.send
                while (chunk := await reader.read_chunk()) is not None:
                    await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await request.__aexit__(None, None, None)
        finally:
            balancer.done(i)

    return proxy
