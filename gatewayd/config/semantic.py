"""Checks the schema cannot express: references between sections and routing conflicts, each located."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl

from ..cluster.clients import sentinel_problems, url_problems
from ..dispatch.actions.redirect import placeholders
from ..dispatch.specs import route_spec
from ..observe.otel import available as otel_available
from ..policies import CompileContext, policy_problems
from ..routing import PathError, Router, RouteSpec, analyze
from .errors import Problem
from .model import Config
from .validate import did_you_mean


def _match_key(route) -> str:
    return next(k for k in ("path", "path_prefix", "path_regex") if k in route.match)


def check(config: Config) -> list[Problem]:
    at = config.marks.at
    problems: list[Problem] = []
    seen_names: dict[str, int] = {}
    for r in config.routes:
        base = ("routes", r.index)
        for j, name in enumerate(r.policies):
            if name not in config.policies:
                known = f"; defined: {', '.join(sorted(config.policies))}" if config.policies else "; no policies are defined"
                problems.append(Problem(at(base + ("policies", j)), f"unknown policy {name!r}{did_you_mean(name, config.policies) or known}"))
        if r.action == "upstream" and r.spec not in config.upstreams:
            known = f"; defined: {', '.join(sorted(config.upstreams))}" if config.upstreams else "; no upstreams are defined"
            problems.append(Problem(at(base + ("upstream",)), f"unknown upstream {r.spec!r}{did_you_mean(r.spec, config.upstreams) or known}"))
        if r.action == "redirect":
            params = _params_of(route_spec(r))
            for name in placeholders(r.spec["to"]):
                if name not in params:
                    problems.append(Problem(at(base + ("redirect", "to")), f"redirect uses {{{name}}} but the route's path has no such parameter"))
        if (base + ("name",)) in config.marks.keys:  # only names the user gave must be unique
            if r.name in seen_names:
                first = at(("routes", seen_names[r.name])).line
                problems.append(Problem(at(base + ("name",)), f"route name {r.name!r} is already used by the route at line {first}"))
            else:
                seen_names[r.name] = r.index
        for key, own in _own_endpoints(config):
            if r.match.get("path") == own:
                problems.append(Problem(at(base + ("match", "path")), f"route can never match: {own} is the {key} endpoint (change observability.endpoints.{key})"))
    seen_paths: dict[str, str] = {}
    for key, own in _own_endpoints(config):
        if own in seen_paths:
            problems.append(Problem(at(("observability", "endpoints", key)), f"{own} is already the {seen_paths[own]} endpoint"))
        seen_paths.setdefault(own, key)
    by_index = {r.index: r for r in config.routes}
    specs = []
    for spec in map(route_spec, config.routes):
        try:
            Router([spec])  # compiles its pattern alone, so every bad pattern is reported
            specs.append(spec)
        except PathError as exc:
            problems.append(Problem(at(("routes", exc.index, "match", _match_key(by_index[exc.index]))), exc.message))
    for finding in analyze(specs):
        where = at(("routes", finding.index, "match", _match_key(by_index[finding.index])))
        message = finding.message
        if finding.related is not None:  # the router names routes by index; people read lines
            line = at(("routes", finding.related)).line
            message = message.replace(f"route {finding.related}", f"the route at line {line}")
        problems.append(Problem(where, message))
    problems += _server_problems(config)
    problems += _upstream_problems(config)
    problems += _policy_problems(config)
    problems += _engine_header_problems(config)
    problems += _cluster_problems(config)
    if config.observability.otel is not None and not otel_available():
        problems.append(Problem(at(("observability", "otel"), key=True), "OpenTelemetry export needs packages that are not installed: pip install 'gatewayd[otel]'"))
    return problems


# policy kinds that authenticate, and so give later steps a consumer
_AUTH_KINDS = ("api_key", "jwt")


def _policy_problems(config: Config) -> list[Problem]:
    """What each policy kind finds wrong in its spec (files it names, contradictions), and routes
    whose rate limit counts per consumer without an auth policy to name one."""
    at = config.marks.at
    ctx = CompileContext(base_dir=os.path.dirname(os.path.abspath(config.file)))
    problems = []
    for name, spec in config.policies.items():
        problems += [Problem(at(("policies", name, *path)), message) for path, message in policy_problems(spec, ctx)]
    for r in config.routes:
        specs = [config.policies[p] for p in r.policies if p in config.policies]
        if any(kind in spec for spec in specs for kind in _AUTH_KINDS):
            continue
        for j, name in enumerate(r.policies):
            limit = config.policies.get(name, {}).get("rate_limit")
            keys = limit and limit.get("key", "client_ip")
            if keys and "consumer" in ([keys] if isinstance(keys, str) else keys):
                problems.append(Problem(at(("routes", r.index, "policies", j)), (
                    f"policy {name!r} limits per consumer, but no policy of this route authenticates one (api_key or jwt)"
                )))  # fmt: skip
    return problems


def _cluster_problems(config: Config) -> list[Problem]:
    """The Redis URL, sentinels and timeout of `cluster`, and a rate limit's `on_error` without one."""
    at = config.marks.at
    cluster = config.cluster
    problems = []
    if cluster is None:
        for name, spec in config.policies.items():
            if "on_error" in (spec.get("rate_limit") or {}):
                where = at(("policies", name, "rate_limit", "on_error"), key=True)
                problems.append(Problem(where, "on_error applies only to gateways that share limits: add a top-level `cluster` section, or remove it"))
        return problems
    problems += [Problem(at(("cluster", "redis", "url")), message) for message in url_problems(cluster.url, cluster.mode)]
    if cluster.mode == "sentinel" and not cluster.sentinels:
        problems.append(Problem(at(("cluster", "redis", "mode")), "mode: sentinel finds the master through the sentinels: list them in `sentinels` (host[:port])"))
    if cluster.sentinels and cluster.mode != "sentinel":
        problems.append(Problem(at(("cluster", "redis", "sentinels"), key=True), "sentinels are read only with mode: sentinel"))
    for i, address in enumerate(cluster.sentinels):
        problems += [Problem(at(("cluster", "redis", "sentinels", i)), message) for message in sentinel_problems(address)]
    if cluster.timeout <= 0:
        problems.append(Problem(at(("cluster", "redis", "timeout")), "timeout must be more than 0s"))
    return problems


# response headers Granian adds to every response without them (Hypercorn's are turned off, see
# server/hypercorn_engine.py): a `headers` policy can set them there, not remove them
_GRANIAN_ADDS = {
    "server": "Granian adds `server: granian` to every response without a Server header",
    "date": "Granian adds a Date to every response without one",
}
_INSTEAD = "set it instead, or use server.engine: hypercorn"


def _engine_header_problems(config: Config) -> list[Problem]:
    if config.server.engine != "granian":
        return []
    problems = []
    for name, policy in config.policies.items():
        for i, header in enumerate(policy.get("headers", {}).get("response", {}).get("remove", ())):
            if (why := _GRANIAN_ADDS.get(header.lower())) is not None:
                where = config.marks.at(("policies", name, "headers", "response", "remove", i))
                problems.append(Problem(where, f"{header} cannot be removed on the granian engine: {why}; {_INSTEAD}"))
    return problems


def _own_endpoints(config: Config) -> list[tuple[str, str]]:
    """(key, path) of the gateway's own endpoints that are enabled."""
    obs = config.observability
    paths = (("health", obs.health_path), ("latency", obs.latency_path), ("metrics", obs.metrics_path))
    return [(key, path) for key, path in paths if path]


def _upstream_problems(config: Config) -> list[Problem]:
    """Durations that must be more than 0s, and timeouts that must fit in others."""
    at = config.marks.at
    problems: list[Problem] = []
    for name, u in config.upstreams.items():
        base = ("upstreams", name)
        if u.outlier.ejection_time <= 0:
            problems.append(Problem(at(base + ("outlier", "ejection_time")), "ejection_time must be more than 0s"))
        if u.health is not None:
            if u.health.interval <= 0:
                problems.append(Problem(at(base + ("health", "interval")), "interval must be more than 0s"))
            elif not 0 < u.health.timeout < u.health.interval:
                problems.append(Problem(at(base + ("health", "timeout")), "timeout must be more than 0s and shorter than interval"))
        per_try = u.retries.per_try_timeout
        if per_try is not None and not 0 < per_try <= u.response_timeout:
            problems.append(Problem(
                at(base + ("retries", "per_try_timeout")),
                "per_try_timeout must be more than 0s and at most timeouts.response, which bounds all tries together",
            ))  # fmt: skip
    return problems


def _server_problems(config: Config) -> list[Problem]:
    """`server.limits` values the schema cannot bound, TLS listeners that clash with plain ones, and
    the TLS certificate and key: read here, at every load, so that `check` and reloads report them."""
    at = config.marks.at
    server = config.server
    problems: list[Problem] = []
    if server.limits.header_read_timeout <= 0:
        problems.append(Problem(at(("server", "limits", "header_read_timeout")), "header_read_timeout must be more than 0s"))
    for i, entry in enumerate(server.trusted_proxies):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            problems.append(Problem(at(("server", "trusted_proxies", i)), f"{entry!r} is not an IP address or CIDR network"))
    if server.tls is None:
        return problems
    plain = set(server.listen)
    for i, listen in enumerate(server.tls.listen):
        if listen in plain:
            problems.append(Problem(at(("server", "tls", "listen", i)), f"{listen} is also in server.listen: an address serves either HTTP or HTTPS"))
    return problems + _tls_file_problems(config)


_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = re.compile(rb"-----BEGIN (?:RSA |EC )?PRIVATE KEY-----")


def _tls_file_problems(config: Config) -> list[Problem]:
    tls = config.server.tls
    where = {name: config.marks.at(("server", "tls", name)) for name in ("cert", "key")}
    problems: list[Problem] = []
    for name, path, what in (("cert", tls.cert, "certificate"), ("key", tls.key, "private key")):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            problems.append(Problem(where[name], f"cannot read the TLS {what} {path}: {exc.strerror}"))
            continue
        if name == "cert" and _PEM_CERT not in data:
            problems.append(Problem(where[name], f"{path} holds no PEM certificate (a '-----BEGIN CERTIFICATE-----' block)"))
        elif name == "key" and (b"ENCRYPTED" in data or not _PEM_KEY.search(data)):
            problems.append(Problem(where[name], (
                f"{path} holds an encrypted private key; decrypt it (openssl pkey -in KEY -out KEY.plain)" if b"ENCRYPTED" in data
                else f"{path} holds no PEM private key (PKCS#8 'BEGIN PRIVATE KEY', PKCS#1 'BEGIN RSA PRIVATE KEY' or SEC1 'BEGIN EC PRIVATE KEY')"
            )))  # fmt: skip
    if problems:
        return problems
    try:  # do they parse, and does the key belong to the certificate?
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(tls.cert, tls.key, password=lambda: b"")
    except ssl.SSLError as exc:
        # OpenSSL says NO_CERTIFICATE_ASSIGNED when the key is of another type than the certificate's
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            message = f"the private key {tls.key} does not belong to the certificate {tls.cert}"
        else:
            message = f"the TLS certificate and key cannot be used: {exc.reason or exc}"
        problems.append(Problem(where["key"], message))
    return problems


def _params_of(spec: RouteSpec) -> set[str]:
    """Param names a route's path captures."""
    if spec.kind == "template":
        return set(re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", spec.pattern))
    if spec.kind == "regex":
        try:
            return set(re.compile(spec.pattern).groupindex)
        except re.error:
            return set()
    return set()
