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

    Reported: patterns or hosts the router would reject; duplicates and
    routes shadowed by an earlier route with the same path key; regex routes
    made unreachable by a prefix ``/`` route; templates of the same shape that
    name a parameter differently.
    """
    findings: list[Finding] = []
    seen: dict[tuple[str, object], list[tuple[int, _Matchers, PathPattern]]] = {}
    root_prefixes: list[tuple[int, _Matchers]] = []
    regexes: list[tuple[int, _Matchers]] = []
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
            continue
        earlier = seen.setdefault((path.kind, path.key), [])
        findings.extend(_same_key_findings(spec.index, matchers, path, earlier))
        earlier.append((spec.index, matchers, path))
        if path.kind == "prefix" and path.key == "":
            root_prefixes.append((spec.index, matchers))
        elif path.kind == "regex":
            regexes.append((spec.index, matchers))
    for index, matchers in regexes:
        catch_all = next(((i, m) for i, m in root_prefixes if m.covers(matchers)), None)
        if catch_all is not None:
            scope = "every request" if catch_all[1].filterless else "a superset of requests"
            findings.append(Finding(
                index,
                f'route can never match: regexes are tried after prefixes and route {catch_all[0]} '
                f'(prefix "/") matches {scope}',
                catch_all[0],
            ))
    findings.sort(key=lambda f: f.index)
    return findings


def _same_key_findings(
    index: int,
    matchers: _Matchers,
    path: PathPattern,
    earlier: list[tuple[int, _Matchers, PathPattern]],
) -> list[Finding]:
    findings = []
    duplicate = next((i for i, m, _ in earlier if m == matchers), None)
    shadow = next((i for i, m, _ in earlier if m.covers(matchers)), None)
    if duplicate is not None:
        findings.append(Finding(index, f"route can never match: duplicate of route {duplicate}", duplicate))
    elif shadow is not None:
        findings.append(Finding(
            index,
            f"route can never match: shadowed by route {shadow} (same path, matches a superset of requests)",
            shadow,
        ))
    for other, _, other_path in earlier:
        if other_path.params != path.params:
            conflicts = ", ".join(
                f"{{{name}}} vs {{{theirs}}}"
                for (name, _), (theirs, _) in zip(path.params, other_path.params)
                if name != theirs
            )
            findings.append(Finding(index, f"conflicting path parameters with route {other}: {conflicts}", other))
            break
    return findings
