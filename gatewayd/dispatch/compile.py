"""`Config` -> `Table`: every route's matchers, policies and action turned into precomputed data.

Called once per config generation, off the request path. Assumes `semantic.check` passed, so every
reference resolves.
"""

from __future__ import annotations

import os

from ..config.model import Config
from ..observe.endpoints import compile_latency, compile_metrics
from ..policies import CompileContext, Effects, Reject, compile_policy, route_steps
from ..policies.effects import CORS, RouteContext
from ..policies.context import networks
from ..routing import Router
from ..runtime.kept import Generation
from ..runtime.status import RuntimeStatus
from ..store import HostStore, MemoryStore
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


def compile_table(
    config: Config, upstreams: dict[str, Upstream], status: RuntimeStatus, observer=None,
    store: HostStore | None = None, kept: Generation | None = None, state_dir: str | None = None, cluster=None,
) -> Table:  # fmt: skip
    """`observer`: the process's `gatewayd.observe.Observer` when serving (None: nothing is recorded);
    `store` and `kept`: the host store and the policy state kept across reloads (None: private, fresh);
    `state_dir`: the host's state folder (the cache's shared tier lives there); `cluster`: the
    process's `gatewayd.cluster.Cluster` when it shares state through Redis."""
    ctx = CompileContext(
        store=store if store is not None else MemoryStore(),
        kept=kept if kept is not None else Generation({}),
        base_dir=os.path.dirname(os.path.abspath(config.file)),
        trusted_proxies=networks(config.server.trusted_proxies),
        max_body_bytes=config.server.limits.max_body_bytes,
        cache=config.cache,
        state_dir=state_dir,
        cluster=cluster,
        on_error=config.cluster.on_error if config.cluster is not None else "fail_open",
    )
    policies = {name: compile_policy(name, spec, ctx) for name, spec in config.policies.items()}
    compiled = []
    specs = []
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
        if effects.wraps:
            context = _route_context(r, config, effects)
            for wrap in reversed(effects.wraps):  # the first policy's wrapper is the outermost
                action = wrap(action, context)
        if effects.preflight and "methods" in r.match and "OPTIONS" not in r.match["methods"]:
            # the route matches OPTIONS only for CORS preflights: any other OPTIONS gets the 405 it got before
            effects = effects.then(Effects(steps=((CORS, _options_not_allowed(r.match["methods"])),)))
        steps, phases = route_steps(effects)
        route = CompiledRoute(r.name, r.index, r.policies, r.action, target, steps, phases, action)
        compiled.append(route)
        specs.append(route_spec(r, target=route, preflight=effects.preflight))
    return Table(
        router=Router(specs),
        routes=tuple(compiled),
        endpoints=_endpoints(config, status, observer, ctx.kept, upstreams, cluster),
        record=observer.record if observer is not None and config.observability.record else _ignore,
        server_timing=config.observability.server_timing,
        detailed_timing=config.observability.server_timing_detailed,
        needs_host=any(s.host is not None for s in specs),
        max_header_bytes=config.server.limits.max_header_bytes,
        max_body_bytes=config.server.limits.max_body_bytes,
        encoded_slash=config.server.encoded_slash,
    )


def _route_context(r, config: Config, effects: Effects) -> RouteContext:
    upstream = config.upstreams.get(r.spec) if r.action == "upstream" else None
    fingerprint = repr((r.name, r.action, r.spec, upstream, r.rewrite, effects.request_headers, effects.response_headers))
    return RouteContext(r.name, fingerprint, upstream.response_timeout if upstream is not None else 30.0)


def _options_not_allowed(methods):
    allow = ", ".join(sorted({*methods, *(("HEAD",) if "GET" in methods else ())})).encode()
    refusal = Reject(405, "method_not_allowed", "OPTIONS is not allowed here", ((b"allow", allow),))

    def step(ex, now):
        return refusal if ex.scope["method"] == "OPTIONS" else None

    return step


def _endpoints(config: Config, status: RuntimeStatus, observer, kept: Generation, upstreams: dict, cluster=None) -> dict:
    """Path -> action of the gateway's own endpoints that are enabled."""
    obs = config.observability
    endpoints = {}
    if obs.health_path:
        endpoints[obs.health_path] = compile_health(status, kept, upstreams)
    if observer is not None:
        local_only = obs.endpoints_access == "local"
        if obs.latency_path:
            endpoints[obs.latency_path] = compile_latency(observer, local_only, cluster and cluster.sketches)
        if obs.metrics_path:
            endpoints[obs.metrics_path] = compile_metrics(observer, local_only)
    return endpoints
