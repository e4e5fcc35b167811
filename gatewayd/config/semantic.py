"""Checks the schema cannot express: references between sections and routing conflicts, each located."""

from __future__ import annotations

import difflib
import re

from ..dispatch.actions.redirect import placeholders
from ..dispatch.specs import route_spec
from ..routing import PathError, Router, RouteSpec, analyze
from .errors import Problem
from .model import Config


def _hint(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


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
                problems.append(Problem(at(base + ("policies", j)), f"unknown policy {name!r}{_hint(name, config.policies) or known}"))
        if r.action == "upstream" and r.spec not in config.upstreams:
            known = f"; defined: {', '.join(sorted(config.upstreams))}" if config.upstreams else "; no upstreams are defined"
            problems.append(Problem(at(base + ("upstream",)), f"unknown upstream {r.spec!r}{_hint(r.spec, config.upstreams) or known}"))
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
        if config.observability.health_path and r.match.get("path") == config.observability.health_path:
            problems.append(Problem(at(base + ("match", "path")), f"route can never match: {r.match['path']} is the health endpoint (change observability.endpoints.health)"))
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
        if finding.related is not None:
            message += f" (see the route at line {at(('routes', finding.related)).line})"
        problems.append(Problem(where, message))
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
