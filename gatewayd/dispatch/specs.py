"""Config routes -> router `RouteSpec`s: the one place that turns `match:` mappings into matchers."""

from __future__ import annotations

from ..config.model import RouteConfig
from ..routing import RouteSpec
from ..routing.normalize import normalize_pattern


def route_spec(route: RouteConfig, target: object = None, preflight: bool = False) -> RouteSpec:
    """`preflight`: the route answers CORS preflights, so it matches OPTIONS besides its methods."""
    m = route.match
    # literal paths in the form requests are matched in (gatewayd.routing.normalize); regexes as written
    if "path" in m:
        kind, pattern = ("template" if "{" in m["path"] else "exact"), normalize_pattern(m["path"])
    elif "path_prefix" in m:
        kind, pattern = "prefix", normalize_pattern(m["path_prefix"])
    else:
        kind, pattern = "regex", m["path_regex"]
    methods = None
    if "methods" in m:
        methods = frozenset(m["methods"])
        if "GET" in methods:  # a GET route answers HEAD too (RFC 9110 9.3.2)
            methods |= {"HEAD"}
        if preflight:
            methods |= {"OPTIONS"}
    return RouteSpec(
        index=route.index,
        kind=kind,
        pattern=pattern,
        methods=methods,
        host=m["host"].lower() if "host" in m else None,
        headers=tuple((k.lower(), v) for k, v in m.get("headers", {}).items()),
        query=tuple(m.get("query", {}).items()),
        target=target,
    )
