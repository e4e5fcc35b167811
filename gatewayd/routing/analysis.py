"""Static checks of a route table: problems visible without any request.

The router accepts any table it can compile; this module says which routes
can never be chosen under its precedence rule, and which templates disagree
with each other, so that configuration mistakes surface at load time instead
of as a mysterious 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .paths import PathError, PathPattern, compile_path
from .router import RouteSpec, host_rule

__all__ = ["Finding", "analyze"]


@dataclass(frozen=True, slots=True)
class Finding:
    index: int  # the offending route
    message: str
    related: int | None = None  # the earlier route it conflicts with


@dataclass(frozen=True, slots=True)
class _Matchers:
    """The non-path restrictions of a route, normalised for comparison."""

    methods: frozenset[str] | None
    host: tuple[str, bool] | None  # (host or ".suffix", is_wildcard)
    headers: frozenset[tuple[str, str]]
    query: frozenset[tuple[str, str]]

    def covers(self, other: _Matchers) -> bool:
        """Whether every request ``other`` accepts is also accepted by ``self``."""
        if self.methods is not None and (other.methods is None or not other.methods <= self.methods):
            return False
        return _host_covers(self.host, other.host) and self.headers <= other.headers and self.query <= other.query

    @property
    def filterless(self) -> bool:
        return self.methods is None and self.host is None and not self.headers and not self.query


def _host_covers(rule: tuple[str, bool] | None, other: tuple[str, bool] | None) -> bool:
    if rule is None or rule == other:
        return True
    if other is None:
        return False
    suffix, wildcard = rule
    return wildcard and other[0].endswith(suffix) and len(other[0]) > len(suffix)


def analyze(specs: Sequence[RouteSpec]) -> list[Finding]:
    """Findings for ``specs``, ordered by route index.

    Reported: patterns or hosts the router would reject; routes that can never
    match (a duplicate of, or shadowed by, an earlier route with the same path
    key; a regex behind a prefix ``/`` route that accepts all its requests);
    templates of the same shape that name a parameter differently.
    """
    findings: list[Finding] = []
    routes: list[tuple[int, PathPattern, _Matchers]] = []
    for spec in sorted(specs, key=lambda s: s.index):
        try:
            path = compile_path(spec.index, spec.kind, spec.pattern)
            matchers = _Matchers(
                methods=None if spec.methods is None else frozenset(m.upper() for m in spec.methods),
                host=None if spec.host is None else host_rule(spec.index, spec.host),
                headers=frozenset((n.lower(), v) for n, v in spec.headers),
                query=frozenset(spec.query),
            )
        except PathError as exc:
            findings.append(Finding(spec.index, exc.message))
        else:
            routes.append((spec.index, path, matchers))
    root_prefixes = [(i, m) for i, p, m in routes if p.kind == "prefix" and p.key == ""]
    by_key: dict[tuple[str, object], list[tuple[int, PathPattern, _Matchers]]] = {}
    for index, path, matchers in routes:
        earlier = by_key.setdefault((path.kind, path.key), [])
        unreachable = _unreachable(path, matchers, earlier, root_prefixes)
        if unreachable is not None:
            findings.append(Finding(index, *unreachable))
        conflict = next((e for e in earlier if e[1].params != path.params), None)
        if conflict is not None:
            names = ", ".join(
                f"{{{ours}}} vs {{{theirs}}}"
                for (ours, _), (theirs, _) in zip(path.params, conflict[1].params)
                if ours != theirs
            )
            findings.append(Finding(index, f"conflicting path parameters with route {conflict[0]}: {names}", conflict[0]))
        earlier.append((index, path, matchers))
    findings.sort(key=lambda f: f.index)
    return findings


def _unreachable(
    path: PathPattern,
    matchers: _Matchers,
    earlier: list[tuple[int, PathPattern, _Matchers]],
    root_prefixes: list[tuple[int, _Matchers]],
) -> tuple[str, int] | None:
    """(message, related route) if the route can never be chosen."""
    for other, _, theirs in earlier:
        if theirs == matchers:
            return f"route can never match: duplicate of route {other}", other
    for other, _, theirs in earlier:
        if theirs.covers(matchers):
            return f"route can never match: shadowed by route {other} (same path, matches a superset of requests)", other
    if path.kind == "regex":
        for other, theirs in root_prefixes:
            if theirs.covers(matchers):
                scope = "every request" if theirs.filterless else "a superset of requests"
                message = f'regexes are tried after prefixes and route {other} (prefix "/") matches {scope}'
                return f"route can never match: {message}", other
    return None
