"""Router.match against a slow, obviously-correct reference matcher.

The reference sorts the routes by the documented precedence and scans them
linearly.  Route tables are drawn from tiny alphabets so that routes collide
(same keys, overlapping templates and prefixes) on most examples.
"""

import re
from itertools import product
from urllib.parse import parse_qsl, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.routing import (
    Found,
    MethodNotAllowed,
    NotFound,
    Router,
    RouteSpec,
    analyze,
)

METHODS = ["GET", "POST", "PUT"]
REGEXES = {  # pattern -> a path it matches
    r"/a/(?P<x>[^/]+)": "/a/b",
    r"/.*": "/c/c",
    r"/(?P<first>[ab])(?P<rest>/.*)?": "/b",
    r"/b/?": "/b/",
    r"(?P<all>.*)": "/a//",
}
HOST_RULES = [None, "api.example.com", "*.example.com", "*.api.example.com", "API.example.com"]

# -- reference matcher ----------------------------------------------------------


def ref_path_params(spec, path):
    """Params if the route's path matches ``path``, else None."""
    if spec.kind == "exact":
        return {} if path == spec.pattern else None
    if spec.kind == "prefix":
        prefix = spec.pattern.rstrip("/")
        return {} if prefix == "" or path == prefix or path.startswith(prefix + "/") else None
    if spec.kind == "regex":
        m = re.fullmatch(spec.pattern, path)
        return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}
    if not path.startswith("/"):
        return None
    wanted, got = spec.pattern.split("/")[1:], path.split("/")[1:]
    if len(wanted) != len(got):
        return None
    params = {}
    for w, g in zip(wanted, got):
        if w.startswith("{"):
            if g == "":
                return None
            params[w[1:-1]] = g
        elif w != g:
            return None
    return params


def ref_precedence(spec):
    if spec.kind == "exact":
        return (0,)
    if spec.kind == "template":
        return (1, tuple(seg.startswith("{") for seg in spec.pattern.split("/")))
    if spec.kind == "prefix":
        return (2, -len(spec.pattern.rstrip("/")))
    return (3,)


def ref_host_ok(rule, host):
    if rule is None:
        return True
    if host is None:
        return False
    host, rule = host.split(":")[0].lower(), rule.lower()
    if rule.startswith("*."):
        return host.endswith(rule[1:]) and host != rule[2:]
    return host == rule


def ref_match(specs, method, path, host, headers, query_string):
    query = parse_qsl(query_string.decode(), keep_blank_values=True)
    allow = set()
    for spec in sorted(specs, key=lambda s: (ref_precedence(s), s.index)):
        params = ref_path_params(spec, path)
        if params is None or not ref_host_ok(spec.host, host):
            continue
        if not all((n.encode(), v.encode()) in headers for n, v in spec.headers):
            continue
        if not all(pair in query for pair in spec.query):
            continue
        if spec.methods is None or method in spec.methods:
            return ("found", spec.index, params)
        allow |= spec.methods
    return ("405", tuple(sorted(allow))) if allow else ("404",)


def outcome(result):
    if isinstance(result, Found):
        return ("found", result.spec.index, dict(result.params))
    if isinstance(result, MethodNotAllowed):
        return ("405", result.allow)
    assert isinstance(result, NotFound)
    return ("404",)


# -- strategies -----------------------------------------------------------------
# Everything is drawn with sampled_from from small precomputed menus: cheap to
# generate, and collisions between routes are the common case.


def joined(segments):
    return "/" + "/".join(segments)


def numbered(segments):
    """Give each parameter a position suffix, so no template repeats a name."""
    return [s.replace("}", f"{i}}}") for i, s in enumerate(segments)]


def upto(alphabet, depth):
    return [list(p) for n in range(depth + 1) for p in product(alphabet, repeat=n)]


ROUTE_PATHS = [
    [("exact", joined(p)) for p in upto(["a", "b", ""], 2)],
    [("template", joined(numbered(p))) for p in upto(["a", "{x}", "{y}"], 3)],
    [("prefix", p) for p in ["/", "/a", "/a/", "/b", "/a/b"]],
    [("regex", p) for p in REGEXES],
]
METHOD_RULES = [None, *map(frozenset, [{"GET"}, {"POST"}, {"GET", "POST"}, {"PUT"}, {"GET", "PUT", "POST"}])]
HEADER_RULES = [(), (("x-v", "1"),), (("x-v", "2"),), (("x-t", "a"),), (("x-v", "1"), ("x-t", "a"))]
QUERY_RULES = [(), (("v", "1"),), (("t", "a"),), (("v", ""),), (("v", "1"), ("t", "a"))]

route_rules = st.tuples(
    st.one_of(*map(st.sampled_from, ROUTE_PATHS)),
    st.sampled_from(METHOD_RULES),
    st.sampled_from(HOST_RULES),
    st.sampled_from(HEADER_RULES),
    st.sampled_from(QUERY_RULES),
)
route_tables = st.lists(route_rules, max_size=10).map(
    lambda rules: [
        RouteSpec(i, kind, pattern, methods, host, headers, query, target=i)
        for i, ((kind, pattern), methods, host, headers, query) in enumerate(rules)
    ]
)

REQUEST_PATHS = [*(joined(p) for p in upto(["a", "b", "c", ""], 3)), "", "*"]
REQUEST_HOSTS = [None, "api.example.com", "API.example.com:8443", "x.api.example.com", "example.com", "o.org"]
REQUEST_HEADERS = [[], [(b"x-v", b"1")], [(b"x-v", b"2"), (b"x-t", b"a")], [(b"x-v", b"1"), (b"x-v", b"2")],
                   [(b"x-t", b"a"), (b"x-v", b"1")], [(b"x-t", b"b")]]
REQUEST_QUERIES = [b"", b"v=1", b"v=2&t=a", b"v=1&v=2", b"t=a&v=", b"v", b"t=%61&v=1"]

random_requests = st.lists(
    st.tuples(
        st.sampled_from([*METHODS, "DELETE"]),
        st.sampled_from(REQUEST_PATHS),
        st.sampled_from(REQUEST_HOSTS),
        st.sampled_from(REQUEST_HEADERS),
        st.sampled_from(REQUEST_QUERIES),
    ),
    min_size=1,
    max_size=8,
)


def requests_for(spec):
    """Requests that satisfy every matcher of ``spec``: one with an allowed method, one with DELETE."""
    if spec.kind == "template":
        path = re.sub(r"\{\w+\}", "a", spec.pattern)
    elif spec.kind == "prefix":
        path = spec.pattern.rstrip("/") + "/c"
    elif spec.kind == "regex":
        path = REGEXES[spec.pattern]
    else:
        path = spec.pattern
    host = None
    if spec.host is not None:
        host = "q" + spec.host[1:] if spec.host.startswith("*") else spec.host.upper() + ":80"
    headers = [(n.encode(), v.encode()) for n, v in spec.headers]
    query = urlencode(spec.query).encode()
    method = "GET" if spec.methods is None else min(spec.methods)
    return [(method, path, host, headers, query), ("DELETE", path, host, headers, query)]


def all_requests(specs, randoms):
    return randoms + [request for spec in specs for request in requests_for(spec)]


# -- properties -----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(route_tables, random_requests)
def test_router_agrees_with_reference(specs, randoms):
    router = Router(specs)
    for method, path, host, headers, query in all_requests(specs, randoms):
        expected = ref_match(specs, method, path, host, headers, query)
        assert outcome(router.match(method, path, host, headers, query)) == expected, (method, path, host)


@settings(max_examples=300, deadline=None)
@given(route_tables, random_requests)
def test_routes_reported_unreachable_never_match(specs, randoms):
    unreachable = {f.index for f in analyze(specs) if f.message.startswith("route can never match")}
    router = Router(specs)
    for request in all_requests(specs, randoms):
        result = router.match(*request)
        assert not (isinstance(result, Found) and result.spec.index in unreachable)
