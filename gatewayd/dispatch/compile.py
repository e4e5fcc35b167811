"""`Config` -> `Table`: every route's matchers, policies and action turned into precomputed data.

Called once per config generation, off the request path. Assumes `semantic.check` passed, so every
reference resolves.
"""

from __future__ import annotations

from ..config.model import Config
from ..observe.endpoints import compile_latency, compile_metrics
from ..policies import Effects, compile_policy
from ..routing import Router
from ..runtime.status import RuntimeStatus
from ..upstream.pool import Upstream
from ..upstream.proxy import compile_proxy
from .actions.health import compile_health
from .actions.redirect import compile_redirect
from .actions.respond import compile_respond
from .route import CompiledRoute
from .specs import route_spec
from .table import Table


def _ignore(exchange) -> None:
    pass


def compile_table(config: Config, upstreams: dict[str, Upstream], status: RuntimeStatus, observer=None) -> Table:
    """`observer`: the process's `gatewayd.observe.Observer` when serving (None: nothing is recorded)."""
    policies = {name: compile_policy(spec) for name, spec in config.policies.items()}
    compiled = []
    for r in config.routes:
        effects = Effects()
        for name in r.policies:
            effects = effects.then(policies[name])
        if r.action == "respond":
            action = compile_respond(r.spec, effects.response_headers)
            target = str(r.spec.get("status", 200))
        elif r.action == "redirect":
            action = compile_redirect(r.spec, effects.response_headers)
            target = f"{r.spec.get('status', 302)} {r.spec['to']}"
        else:
            action = compile_proxy(
                upstreams[r.spec], r.rewrite, effects.request_headers, effects.response_headers,
                max_body_bytes=config.server.limits.max_body_bytes,
            )  # fmt: skip
            target = r.spec
        compiled.append(CompiledRoute(r.name, r.index, r.policies, r.action, target, effects.steps, action))
    specs = [route_spec(r, target=c) for r, c in zip(config.routes, compiled)]
    return Table(
        router=Router(specs),
        routes=tuple(compiled),
        endpoints=_endpoints(config, status, observer),
        record=_ignore if observer is None else observer.record,
        server_timing=config.observability.server_timing,
        needs_host=any(s.host is not None for s in specs),
        max_header_bytes=config.server.limits.max_header_bytes,
        max_body_bytes=config.server.limits.max_body_bytes,
    )


def _endpoints(config: Config, status: RuntimeStatus, observer) -> dict:
    """Path -> action of the gateway's own endpoints that are enabled."""
    obs = config.observability
    endpoints = {}
    if obs.health_path:
        endpoints[obs.health_path] = compile_health(status)
    if observer is not None:
        local_only = obs.endpoints_access == "local"
        if obs.latency_path:
            endpoints[obs.latency_path] = compile_latency(observer, local_only)
        if obs.metrics_path:
            endpoints[obs.metrics_path] = compile_metrics(observer, local_only)
    return endpoints
