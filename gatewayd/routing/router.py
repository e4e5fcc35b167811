"""The request matcher: route table in, one compiled lookup structure out.

The router owns the answer to "which route handles this request", and the
precedence rule below is the whole of that answer.

Precedence
----------
1. **Exact** routes (``kind: exact``): a dict lookup on the path, O(1) in the
   number of routes.
2. **Templates** (``/v1/videos/{id}``): a ``{name}`` parameter is one whole,
   non-empty segment; every other segment is a literal.  Templates live in a
   segment trie, so lookup cost grows with path depth, not route count.  When
   several templates match, the more specific wins: compare segment by
   segment from the left, a literal segment beats a parameter.
3. **Prefixes** (``kind: prefix``), longest first.  A prefix matches on
   segment boundaries: ``/v1`` matches ``/v1``, ``/v1/`` and ``/v1/x`` but not
   ``/v10``.  Trailing slashes of a prefix are ignored, and the prefix ``/``
   matches every path.
4. **Regexes**, in file order (``re.fullmatch`` on the path; named groups that
   took part in the match become params).

Within the same path key (same exact path, same template shape, same prefix)
routes are tried in file order.  A candidate is taken only if its method,
host, header and query matchers all match; otherwise the search continues
down the precedence order, so with a GET-only exact route and a catch-all
prefix, a POST to that path falls through to the prefix.  If nothing matches
but at least one route matched everything except the method, the answer is
``MethodNotAllowed`` with the sorted union of those routes' methods, else
``NotFound``.

Paths are the normalized request path (``gatewayd.routing.normalize``: only
unreserved characters decoded, other escapes kept in upper case), compared
case-sensitively; a trailing slash is significant for exact and template routes.  Hosts are
compared case-insensitively with any port stripped; ``*.example.com`` matches
any host ending in ``.example.com`` (one or more labels) but not
``example.com`` itself.  A header matcher is satisfied by any occurrence of
the header with exactly that value (header values are compared as UTF-8
bytes); a query matcher by any occurrence of the parameter with exactly that
value, after ``urllib.parse.parse_qsl`` decoding (``?flag`` counts as
``flag=""``).

``Found.params`` of a route without parameters is one shared, read-only empty
dict (every match of that route returns the same precomputed ``Found``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from .paths import PathError, PathPattern, compile_path, split_path

__all__ = [
    "NOT_FOUND",
    "Found",
    "MethodNotAllowed",
    "NotFound",
    "RouteSpec",
    "Router",
    "host_rule",
    "normalize_host",
]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route as written in the config file."""

    index: int  # position in the config file (file order)
    kind: str  # "exact" | "template" | "prefix" | "regex"
    pattern: str
    methods: frozenset[str] | None = None  # None = any method
    host: str | None = None  # "api.example.com" or "*.example.com"
    headers: tuple[tuple[str, str], ...] = ()  # (lower-case name, exact value)
    query: tuple[tuple[str, str], ...] = ()  # (name, exact value)
    target: object = None  # opaque payload returned on match


@dataclass(frozen=True, slots=True)
class Found:
    target: object
    params: dict[str, str]
    spec: RouteSpec


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allow: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotFound:
    pass


NOT_FOUND = NotFound()


class _NoParams(dict):
    """The params of matches without parameters: one shared dict, so read-only."""

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> None:
        raise TypeError("params of a route without parameters are shared and read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


_NO_PARAMS = _NoParams()

# A Found is built on every match with parameters; the frozen-dataclass
# __init__ (object.__setattr__ per field) costs several times more than
# setting the slots directly, so the hot path sets them directly.
_new_object = object.__new__
_set_target, _set_params, _set_spec = Found.target.__set__, Found.params.__set__, Found.spec.__set__


def _found(target: object, params: dict[str, str], spec: RouteSpec) -> Found:
    found = _new_object(Found)
    _set_target(found, target)
    _set_params(found, params)
    _set_spec(found, spec)
    return found


def normalize_host(host: str) -> str:
    """Lower-case ``host`` and strip a port (``[::1]:80`` -> ``[::1]``)."""
    if host.startswith("["):
        end = host.find("]")
        return (host if end < 0 else host[: end + 1]).lower()
    return host.partition(":")[0].lower()


def host_rule(index: int, host: str) -> tuple[str, bool]:
    """Validate a route's host; return (host or ``.suffix``, is_wildcard)."""
    rule = host.lower()
    wildcard = rule.startswith("*.")
    name = rule[2:] if wildcard else rule
    if not name or "*" in name:
        raise PathError(index, f'invalid host {host!r}: only a leading "*." wildcard is allowed')
    if normalize_host(name) != name:
        raise PathError(index, f"invalid host {host!r}: a host must not carry a port")
    return (rule[1:] if wildcard else rule), wildcard


class _Route:
    """A RouteSpec compiled into the fields the hot path reads."""

    __slots__ = ("found", "headers", "host", "methods", "params", "plain", "query", "regex", "spec", "wildcard")

    def __init__(self, spec: RouteSpec, path: PathPattern, shared: dict) -> None:
        # ``shared`` de-duplicates equal values across the table (large tables repeat them).
        methods = None if spec.methods is None else frozenset(m.upper() for m in spec.methods)
        headers = frozenset((n.lower().encode(), v.encode()) for n, v in spec.headers)
        query = frozenset(spec.query)
        self.spec = spec
        self.methods = None if methods is None else shared.setdefault(methods, methods)
        self.host, self.wildcard = (None, False) if spec.host is None else host_rule(spec.index, spec.host)
        self.headers = shared.setdefault(headers, headers)
        self.query = shared.setdefault(query, query)
        self.plain = self.host is None and not self.headers and not self.query
        self.params = shared.setdefault(path.params, path.params)
        self.regex = path.regex
        self.found = None if self.params or self.regex else Found(spec.target, _NO_PARAMS, spec)

    def result(self, extra: object) -> Found:
        """The Found for this route; ``extra`` is the path segments or regex match."""
        if self.found is not None:
            return self.found
        if self.regex is not None:
            groups = {k: v for k, v in extra.groupdict().items() if v is not None}
        else:
            groups = {name: extra[i] for name, i in self.params}
        return _found(self.spec.target, groups, self.spec)


_NO_LITERALS: dict[str, _Node] = {}  # shared by every node without literal children; never written


class _Node:
    """A template trie node: literal children, one parameter child, routes ending here."""

    __slots__ = ("literals", "param", "routes")

    def __init__(self) -> None:
        self.literals = _NO_LITERALS
        self.param: _Node | None = None
        self.routes: tuple[_Route, ...] = ()

    def child(self, segment: str | None) -> _Node:
        """The child for a literal segment, or the parameter child for ``None``; made if missing."""
        if segment is None:
            if self.param is None:
                self.param = _Node()
            return self.param
        if self.literals is _NO_LITERALS:
            self.literals = {}
        node = self.literals.get(segment)
        if node is None:
            node = self.literals[segment] = _Node()
        return node


def _next_leaf(segments: list[str], pending: list[tuple[_Node, int]]) -> _Node | None:
    """Continue a depth-first trie walk to the next node whose routes match.

    ``pending`` holds (node, segments consumed) states still to explore; it
    starts as ``[(root, 0)]``.  Literal children are tried before the
    parameter child, so leaves come out most specific first.
    """
    depth = len(segments)
    while pending:
        node, i = pending.pop()
        while i < depth:
            segment = segments[i]
            i += 1
            literal = node.literals.get(segment)
            if node.param is not None and segment:
                if literal is None:
                    node = node.param
                    continue
                pending.append((node.param, i))
            if literal is None:
                break
            node = literal
        else:
            if node.routes:
                return node
    return None


class _Search:
    """One request's full search: lazily parsed filters and the methods seen."""

    __slots__ = ("allow", "header_pairs", "headers", "host", "host_key", "method", "query_pairs", "query_string")

    def __init__(self, method: str, host: str | None, headers: Iterable, query_string: bytes) -> None:
        self.method = method
        self.host = host
        self.headers = headers
        self.query_string = query_string
        # Parsed on first use only, like the headers and query string.
        self.host_key: str | None = None  # "" when there is no host: matches no host rule
        self.header_pairs: set | None = None
        self.query_pairs: set | None = None
        self.allow: set[str] = set()

    def pick(self, routes: tuple[_Route, ...], extra: object) -> Found | None:
        """The first of ``routes`` that accepts the request; note near misses."""
        for route in routes:
            if not (route.plain or self.satisfies(route)):
                continue
            if route.methods is None or self.method in route.methods:
                return route.result(extra)
            self.allow |= route.methods
        return None

    def satisfies(self, route: _Route) -> bool:
        if route.host is not None:
            if self.host_key is None:
                self.host_key = "" if self.host is None else normalize_host(self.host)
            host = self.host_key
            if route.wildcard:
                if not (host.endswith(route.host) and len(host) > len(route.host)):
                    return False
            elif host != route.host:
                return False
        if route.headers:
            if self.header_pairs is None:
                self.header_pairs = {(bytes(n), bytes(v)) for n, v in self.headers}
            if not route.headers <= self.header_pairs:
                return False
        if route.query:
            if self.query_pairs is None:
                raw = self.query_string.decode("utf-8", "replace")
                self.query_pairs = set(parse_qsl(raw, keep_blank_values=True))
            if not route.query <= self.query_pairs:
                return False
        return True


class Router:
    """Compiles route specs once; :meth:`match` answers one request."""

    __slots__ = ("_exact", "_prefix_heads", "_prefixes", "_regexes", "_root_prefix", "_trie")

    def __init__(self, specs: Sequence[RouteSpec]) -> None:
        exact: dict[str, list[_Route]] = {}
        prefixes: dict[str, list[_Route]] = {}
        regexes: list[_Route] = []
        trie: _Node | None = None
        shared: dict = {}
        for spec in sorted(specs, key=lambda s: s.index):
            path = compile_path(spec.index, spec.kind, spec.pattern)
            route = _Route(spec, path, shared)
            if path.kind == "exact":
                exact.setdefault(path.key, []).append(route)
            elif path.kind == "prefix":
                prefixes.setdefault(path.key, []).append(route)
            elif path.kind == "regex":
                regexes.append(route)
            else:
                if trie is None:
                    trie = _Node()
                node = trie
                for segment in path.key:
                    node = node.child(segment)
                node.routes += (route,)
        self._exact = {key: tuple(routes) for key, routes in exact.items()}
        self._trie = trie
        self._root_prefix = tuple(prefixes.pop("", ()))
        self._prefixes = {key: tuple(routes) for key, routes in prefixes.items()}
        # the first segments of the prefixes ("/api/v1" -> "api"), to skip the walk up a path's segments
        self._prefix_heads = frozenset(key.split("/", 2)[1] for key in self._prefixes)
        self._regexes = tuple(regexes)

    def match(
        self,
        method: str,
        path: str,
        host: str | None,
        headers: Iterable,
        query_string: bytes,
    ) -> Found | MethodNotAllowed | NotFound:
        """Route one request.

        ``host`` is the Host header (any port is ignored), ``headers`` the ASGI
        list of (lower-case name, value) byte pairs and ``query_string`` the
        raw ASGI query string.  Each of the three is only looked at when a
        candidate route has a matcher of that kind.
        """
        # Fast path: the first candidate in precedence order is unfiltered
        # and allows the method.  Anything else takes the full search.
        routes = self._exact.get(path)
        if routes is not None:
            route = routes[0]
            if route.plain and (route.methods is None or method in route.methods):
                return route.found
            return self._search(method, path, host, headers, query_string)
        if self._trie is not None and path.startswith("/"):
            segments = split_path(path)
            leaf = _next_leaf(segments, [(self._trie, 0)])
            if leaf is not None:
                route = leaf.routes[0]
                if route.plain and (route.methods is None or method in route.methods):
                    return route.result(segments)
                return self._search(method, path, host, headers, query_string)
        longest = self._longest_prefix(path, len(path))
        routes = self._root_prefix if longest is None else longest[0]
        if routes:
            route = routes[0]
            if route.plain and (route.methods is None or method in route.methods):
                return route.found
        elif not self._regexes:
            return NOT_FOUND  # no route's path matches
        return self._search(method, path, host, headers, query_string)

    def _longest_prefix(self, path: str, end: int) -> tuple[tuple[_Route, ...], int] | None:
        """The routes of the longest `path_prefix` (other than "/") that `path[:end]` starts with, on a
        segment boundary, and that prefix's length."""
        slash = path.find("/", 1)
        if (path[1:slash] if slash > 0 else path[1:]) not in self._prefix_heads:
            return None  # a path whose first segment begins no prefix (a 404 then costs what a hit does)
        while end > 0:
            routes = self._prefixes.get(path[:end])
            if routes is not None:
                return routes, end
            end = path.rfind("/", 0, end)
        return None

    def _search(
        self, method: str, path: str, host: str | None, headers: Iterable, query_string: bytes
    ) -> Found | MethodNotAllowed | NotFound:
        """Try every candidate in precedence order. The request's filters are only set up once
        there is a candidate: a path no route could match costs a walk of the tiers and no more."""
        search = None
        for routes, extra in self._candidates(path):
            if search is None:
                search = _Search(method, host, headers, query_string)
            if (found := search.pick(routes, extra)) is not None:
                return found
        if search is not None and search.allow:
            return MethodNotAllowed(tuple(sorted(search.allow)))
        return NOT_FOUND

    def _candidates(self, path: str) -> Iterator[tuple[tuple[_Route, ...], object]]:
        """(routes, what their result takes) whose path matches, tier by tier, in precedence order."""
        routes = self._exact.get(path)
        if routes is not None:
            yield routes, None
        if self._trie is not None and path.startswith("/"):
            segments = split_path(path)
            pending = [(self._trie, 0)]
            while (leaf := _next_leaf(segments, pending)) is not None:
                yield leaf.routes, segments
        end = len(path)
        while (longest := self._longest_prefix(path, end)) is not None:
            routes, end = longest
            yield routes, None
            end = path.rfind("/", 0, end)
        if self._root_prefix:
            yield self._root_prefix, None
        for route in self._regexes:
            groups = route.regex.fullmatch(path)
            if groups is not None:
                yield (route,), groups
