"""The compiled dispatch: one object per config generation whose `handle` serves every request.

Requests flow: arrival time -> request id -> refusals before routing (`refusals.py`, which also
normalizes the path that routing and the upstream see) -> router match
(404/405 decided here) -> the route's policy steps in order (any may answer instead) -> the route's
action. Everything it reads was precomputed by `compile.py`; swapping configs is replacing the one
`Table` reference the app holds. When a request is over (its response body sent, or failed), `record`
hands it to `gatewayd.observe`.
"""

from __future__ import annotations

import logging
from time import perf_counter_ns, time

from ..routing import Found, MethodNotAllowed
from .exchange import Cut, Exchange, new_request_id
from .refusals import BROKEN_BODY, compile_refusals, read_head

log = logging.getLogger("gatewayd.dispatch")


class Table:
    __slots__ = (
        "router", "routes", "endpoints", "record", "server_timing", "detailed_timing", "needs_host", "generation",
        "refuse", "kept",
    )  # fmt: skip

    def __init__(
        self, router, routes, endpoints, record, server_timing: bool, needs_host: bool,
        max_header_bytes: int, max_body_bytes: int, detailed_timing: bool = False, encoded_slash: str = "reject",
    ):  # fmt: skip
        self.router = router
        self.routes = routes  # CompiledRoute per config route, in file order
        self.endpoints = endpoints  # path -> action of the gateway's own endpoints (/health, /latency, /metrics)
        self.record = record  # record(exchange), once per request when it is over (gatewayd/observe)
        self.server_timing = server_timing
        self.detailed_timing = detailed_timing and server_timing  # one Server-Timing entry per stage
        self.needs_host = needs_host
        # refuse(scope, head): answered here, before any route runs (server.limits and server.paths too)
        self.refuse = compile_refusals(max_header_bytes, max_body_bytes, encoded_slash)
        self.kept = None  # the policy state this table's config holds (gatewayd.runtime.kept), set by the gateway

    async def handle(self, scope, receive, send) -> None:
        t0 = perf_counter_ns()
        headers = scope["headers"]
        head = read_head(headers)
        request_id, host = head[1], head[2]
        if request_id is None or len(request_id) > 200:
            request_id = new_request_id()
        ex = Exchange(scope, receive, send, t0, request_id, self.server_timing)
        if self.detailed_timing:
            ex.stages = []
        try:
            reject = self.refuse(scope, head)
            if reject is not None:
                return await reject.send(ex)
            path = scope["path"]
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
                await route.action(ex)
                if not ex.started:  # the action gave up on a request body that broke off (see BROKEN_BODY)
                    await BROKEN_BODY.send(ex)
                return
            if result.__class__ is MethodNotAllowed:
                allow = ", ".join(result.allow).encode()
                return await ex.error(405, "method_not_allowed", f"{method} is not allowed here", ((b"allow", allow),))
            return await ex.not_found()
        except Cut:
            raise
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

