"""The compiled dispatch: one object per config generation whose `handle` serves every request.

Requests flow: arrival time -> request id -> router match (404/405 decided here) -> the route's
policy steps in order (any may answer instead) -> the route's action. Everything it reads was
precomputed by `compile.py`; swapping configs is replacing the one `Table` reference the app holds.
"""

from __future__ import annotations

import logging
from time import monotonic, perf_counter_ns

from ..routing import Found, MethodNotAllowed
from .exchange import Exchange, new_request_id

log = logging.getLogger("gatewayd.dispatch")


class Table:
    __slots__ = ("router", "routes", "health_path", "health", "server_timing", "needs_host", "generation")

    def __init__(self, router, routes, health_path, health, server_timing: bool, needs_host: bool):
        self.router = router
        self.routes = routes  # CompiledRoute per config route, in file order
        self.health_path = health_path
        self.health = health
        self.server_timing = server_timing
        self.needs_host = needs_host

    async def handle(self, scope, receive, send) -> None:
        t0 = perf_counter_ns()
        request_id = host = None
        headers = scope["headers"]
        for name, value in headers:
            if name == b"x-request-id":
                request_id = value
            elif name == b"host":
                host = value
        if request_id is None or len(request_id) > 200:
            request_id = new_request_id()
        ex = Exchange(scope, receive, send, t0, request_id, self.server_timing)
        try:
            path = scope["path"]
            if path == self.health_path:
                return await self.health(ex)
            method = scope["method"]
            host = host.decode("latin-1") if host is not None and self.needs_host else None
            result = self.router.match(method, path, host, headers, scope["query_string"])
            if result.__class__ is Found:
                route = result.target
                ex.params = result.params
                ex.route_name = route.name
                if route.steps:
                    now = monotonic()
                    for step in route.steps:
                        reject = step(ex, now)
                        if reject is not None:
                            return await ex.error(reject.status, reject.error, reject.message, reject.headers)
                return await route.action(ex)
            if result.__class__ is MethodNotAllowed:
                allow = ", ".join(result.allow).encode()
                return await ex.error(405, "method_not_allowed", f"{method} is not allowed here", ((b"allow", allow),))
            return await ex.error(404, "not_found", f"no route matches {method} {path}")
        except Exception:
            log.exception("request %s failed in route %r", request_id.decode("latin-1"), ex.route_name)
            if not ex.started:
                await ex.error(500, "internal_error", "the gateway failed to handle this request")
            else:
                raise
