"""The compiled dispatch: one object per config generation whose `handle` serves every request.

Requests flow: arrival time -> request id -> router match (404/405 decided here) -> the route's
policy steps in order (any may answer instead) -> the route's action. Everything it reads was
precomputed by `compile.py`; swapping configs is replacing the one `Table` reference the app holds.
When a request is over (its response body sent, or failed), `record` hands it to `gatewayd.observe`.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns, time

from ..routing import Found, MethodNotAllowed
from .exchange import Exchange, in_early_data, new_request_id

log = logging.getLogger("gatewayd.dispatch")

# the only methods served from 0-RTT early data, which can be replayed; others get 425 (RFC 8470)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Table:
    __slots__ = (
        "router", "routes", "endpoints", "record", "server_timing", "detailed_timing", "needs_host", "generation",
        "max_header_bytes", "max_body_bytes", "kept",
    )  # fmt: skip

    def __init__(
        self, router, routes, endpoints, record, server_timing: bool, needs_host: bool,
        max_header_bytes: int, max_body_bytes: int, detailed_timing: bool = False,
    ):  # fmt: skip
        self.router = router
        self.routes = routes  # CompiledRoute per config route, in file order
        self.endpoints = endpoints  # path -> action of the gateway's own endpoints (/health, /latency, /metrics)
        self.record = record  # record(exchange), once per request when it is over (gatewayd/observe)
        self.server_timing = server_timing
        self.detailed_timing = detailed_timing and server_timing  # one Server-Timing entry per stage
        self.needs_host = needs_host
        self.max_header_bytes = max_header_bytes  # server.limits: answered here, before any route runs
        self.max_body_bytes = max_body_bytes
        self.kept = None  # the policy state this table's config holds (gatewayd.runtime.kept), set by the gateway

    async def handle(self, scope, receive, send) -> None:
        t0 = perf_counter_ns()
        request_id = host = length = None
        headers = scope["headers"]
        size = 4 * len(headers)  # header section size as on an HTTP/1.1 wire: ": " and CRLF per field
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"x-request-id":
                request_id = value
            elif name == b"host":
                host = value
            elif name == b"content-length":
                length = value
        if request_id is None or len(request_id) > 200:
            request_id = new_request_id()
        ex = Exchange(scope, receive, send, t0, request_id, self.server_timing)
        if self.detailed_timing:
            ex.stages = []
        try:
            if size > self.max_header_bytes:
                return await ex.error(431, "headers_too_large", f"the request's headers exceed {self.max_header_bytes} bytes")
            if length is not None and length.isdigit() and (len(length) > 18 or int(length) > self.max_body_bytes):
                return await ex.error(413, "body_too_large", f"the request body exceeds {self.max_body_bytes} bytes")
            if in_early_data(scope) and scope["method"] not in SAFE_METHODS:
                return await ex.error(425, "too_early", "send this request again once the TLS handshake is complete")
            path = scope["path"]
            if "/." in path and _has_dot_segment(path):
                return await ex.error(400, "bad_path", "the path has . or .. segments")
            endpoint = self.endpoints.get(path)
            if endpoint is not None:
                ex.route_name = None  # the gateway's own endpoints are not recorded
                return await endpoint(ex)
            method = scope["method"]
            host = host.decode("latin-1") if host is not None and self.needs_host else None
            result = self.router.match(method, path, host, headers, scope["query_string"])
            if result.__class__ is Found:
                route = result.target
                ex.params = result.params
                ex.route_name = route.name
                if route.steps:
                    now = time()
                    if ex.stages is None:
                        for step in route.steps:
                            answer = step(ex, now)
                            if answer is not None:
                                return await answer.send(ex)
                    else:
                        answer = _timed_steps(route, ex, now)
                        if answer is not None:
                            return await answer.send(ex)
                return await route.action(ex)
            if result.__class__ is MethodNotAllowed:
                allow = ", ".join(result.allow).encode()
                return await ex.error(405, "method_not_allowed", f"{method} is not allowed here", ((b"allow", allow),))
            return await ex.not_found()
        except Exception:
            log.exception("request %s failed in route %r", request_id.decode("latin-1"), ex.route_name)
            if not ex.started:
                await ex.error(500, "internal_error", "the gateway failed to handle this request")
            else:
                raise
        finally:
            if ex.route_name is not None:
                self.record(ex)


def _timed_steps(route, ex, now: float):
    """The route's steps as in `handle`, each one's time added to `ex.stages` (`server_timing: detailed`)."""
    stages = ex.stages
    for step, phase in zip(route.steps, route.phases):
        t = perf_counter_ns()
        answer = step(ex, now)
        stages.append((phase, perf_counter_ns() - t))
        if answer is not None:
            return answer
    return None


def _has_dot_segment(path: str) -> bool:
    """`/a/../b`, `/a/./b`, `/a/..`: segments an upstream would resolve, after the route was chosen."""
    return any(segment in (".", "..") for segment in path.split("/"))
