"""Unit tests of the router's precedence rule, matchers, errors and analysis."""

import dataclasses

import pytest

from gatewayd.routing import (
    NOT_FOUND,
    Finding,
    Found,
    MethodNotAllowed,
    NotFound,
    PathError,
    Router,
    RouteSpec,
    analyze,
)

GET = frozenset({"GET"})


def route(index, kind, pattern, methods=None, **kwargs):
    return RouteSpec(index, kind, pattern, methods, target=f"t{index}", **kwargs)


def match(routes, path, method="GET", host=None, headers=(), query=b""):
    return Router(routes).match(method, path, host, list(headers), query)


def hit(routes, path, **kwargs):
    """Index of the route chosen for the request, or the non-Found result."""
    result = match(routes, path, **kwargs)
    return result.spec.index if isinstance(result, Found) else result


class Explodes:
    """Stands in for a host, headers or query string that must not be looked at."""

    def __iter__(self):
        raise AssertionError("headers inspected")

    def __getattr__(self, name):
        raise AssertionError(f"{name} used")


# -- precedence ---------------------------------------------------------------


def test_exact_beats_template_beats_prefix_beats_regex():
    routes = [
        route(0, "regex", "/a/b"),
        route(1, "prefix", "/a"),
        route(2, "template", "/a/{x}"),
        route(3, "exact", "/a/b"),
    ]
    assert hit(routes, "/a/b") == 3
    assert hit(routes[:3], "/a/b") == 2
    assert hit(routes[:2], "/a/b") == 1
    assert hit(routes[:1], "/a/b") == 0


def test_exact_found_carries_target_spec_and_empty_params():
    routes = [route(0, "exact", "/v1/items")]
    result = match(routes, "/v1/items")
    assert result == Found("t0", {}, routes[0])
    with pytest.raises(TypeError):
        result.params["x"] = "y"  # shared between requests: read-only


def test_template_params():
    result = match([route(0, "template", "/v1/videos/{id}/frames/{n}")], "/v1/videos/42/frames/7")
    assert isinstance(result, Found)
    assert result.params == {"id": "42", "n": "7"}
    assert result.target == "t0"


def test_more_specific_template_wins_left_to_right():
    routes = [
        route(0, "template", "/{a}/b/c"),
        route(1, "template", "/a/{b}/c"),
        route(2, "template", "/a/b/{c}"),
        route(3, "template", "/{a}/{b}/{c}"),
    ]
    assert hit(routes, "/a/b/c") == 2
    assert hit(routes, "/a/x/c") == 1
    assert hit(routes, "/x/b/c") == 0
    assert hit(routes, "/x/y/z") == 3


def test_template_walk_backtracks_to_parameter_branch():
    routes = [route(0, "template", "/a/b/c"), route(1, "template", "/a/{x}/d")]
    assert hit(routes, "/a/b/d") == 1
    assert match(routes, "/a/b/d").params == {"x": "b"}


def test_same_shape_templates_keep_their_own_parameter_names():
    routes = [
        route(0, "template", "/v1/{id}", GET),
        route(1, "template", "/v1/{vid}", frozenset({"POST"})),
    ]
    assert match(routes, "/v1/9", method="POST").params == {"vid": "9"}


def test_parameter_never_matches_an_empty_segment():
    routes = [route(0, "template", "/a/{x}")]
    assert match(routes, "/a/") is NOT_FOUND
    assert hit([route(0, "template", "/a/{x}/{y}")], "/a//b") == NOT_FOUND


def test_trailing_slash_is_significant_for_exact_and_templates():
    routes = [route(0, "exact", "/a/"), route(1, "template", "/b/{x}/")]
    assert hit(routes, "/a/") == 0
    assert hit(routes, "/a") == NOT_FOUND
    assert hit(routes, "/b/1/") == 1
    assert hit(routes, "/b/1") == NOT_FOUND


def test_paths_are_case_sensitive():
    assert hit([route(0, "exact", "/Items")], "/items") == NOT_FOUND


def test_same_path_key_tried_in_file_order():
    routes = [route(1, "exact", "/a"), route(0, "exact", "/a")]
    assert hit(routes, "/a") == 0  # ordered by index, not by list position


def test_filtered_out_candidate_falls_through_the_precedence_order():
    routes = [route(0, "exact", "/a", GET), route(1, "prefix", "/")]
    assert hit(routes, "/a", method="GET") == 0
    assert hit(routes, "/a", method="POST") == 1


def test_fall_through_within_same_key_then_next_tier():
    routes = [
        route(0, "exact", "/a", host="a.test"),
        route(1, "exact", "/a", GET),
        route(2, "template", "/{x}"),
    ]
    assert hit(routes, "/a", host="a.test", method="POST") == 0
    assert hit(routes, "/a", method="GET") == 1
    assert hit(routes, "/a", method="POST") == 2


# -- prefixes and regexes -----------------------------------------------------


@pytest.mark.parametrize("path", ["/v1", "/v1/", "/v1/x", "/v1/x/y"])
def test_prefix_matches_on_segment_boundaries(path):
    assert hit([route(0, "prefix", "/v1")], path) == 0


@pytest.mark.parametrize("path", ["/v10", "/v", "/", "/v2/v1"])
def test_prefix_does_not_match_inside_a_segment(path):
    assert hit([route(0, "prefix", "/v1")], path) == NOT_FOUND


def test_prefix_trailing_slash_is_ignored():
    assert hit([route(0, "prefix", "/v1/")], "/v1") == 0


def test_root_prefix_matches_everything():
    routes = [route(0, "prefix", "/")]
    for path in ["/", "/a", "/a/b/", "", "*"]:
        assert hit(routes, path) == 0


def test_longest_prefix_first():
    routes = [route(0, "prefix", "/"), route(1, "prefix", "/a"), route(2, "prefix", "/a/b")]
    assert hit(routes, "/a/b/c") == 2
    assert hit(routes, "/a/bc") == 1
    assert hit(routes, "/b") == 0


def test_regex_fullmatch_and_named_groups():
    routes = [route(0, "regex", r"/files/(?P<name>[^/]+)\.(?P<ext>txt|md)(?P<v>;v\d+)?")]
    assert match(routes, "/files/readme.md").params == {"name": "readme", "ext": "md"}
    assert match(routes, "/files/a.txt;v2").params == {"name": "a", "ext": "txt", "v": ";v2"}
    assert match(routes, "/files/readme.md/x") is NOT_FOUND
    assert match(routes, "/x/files/readme.md") is NOT_FOUND


def test_regexes_in_file_order():
    routes = [route(0, "regex", r"/a/.*"), route(1, "regex", r"/a/b")]
    assert hit(routes, "/a/b") == 0


# -- 404 / 405 ----------------------------------------------------------------


def test_not_found():
    result = match([route(0, "exact", "/a")], "/b")
    assert result is NOT_FOUND
    assert isinstance(result, NotFound)
    assert match([], "/") == NotFound()


def test_method_not_allowed_lists_union_of_matching_routes():
    routes = [
        route(0, "exact", "/a", frozenset({"PUT", "GET"})),
        route(1, "template", "/{x}", frozenset({"DELETE"})),
        route(2, "prefix", "/a", GET),
        route(3, "exact", "/b", frozenset({"PATCH"})),
    ]
    assert match(routes, "/a", method="POST") == MethodNotAllowed(("DELETE", "GET", "PUT"))


def test_method_not_allowed_ignores_routes_whose_filters_failed():
    routes = [
        route(0, "exact", "/a", GET),
        route(1, "exact", "/a", frozenset({"PUT"}), host="admin.test"),
    ]
    assert match(routes, "/a", method="POST") == MethodNotAllowed(("GET",))
    assert match(routes, "/a", method="POST", host="admin.test") == MethodNotAllowed(("GET", "PUT"))
    assert match(routes[1:], "/a", method="POST") is NOT_FOUND


def test_method_match_wins_over_earlier_method_mismatch():
    routes = [route(0, "exact", "/a", GET), route(1, "regex", "/a", frozenset({"POST"}))]
    assert hit(routes, "/a", method="POST") == 1


# -- host, header and query matchers ------------------------------------------


def test_exact_host_is_case_insensitive_and_ignores_port():
    routes = [route(0, "exact", "/", host="API.example.com")]
    assert hit(routes, "/", host="api.example.com") == 0
    assert hit(routes, "/", host="Api.Example.COM:8443") == 0
    assert hit(routes, "/", host="example.com") == NOT_FOUND
    assert hit(routes, "/", host=None) == NOT_FOUND


def test_wildcard_host():
    routes = [route(0, "exact", "/", host="*.example.com")]
    assert hit(routes, "/", host="a.example.com") == 0
    assert hit(routes, "/", host="a.b.EXAMPLE.com:80") == 0
    assert hit(routes, "/", host="example.com") == NOT_FOUND
    assert hit(routes, "/", host="badexample.com") == NOT_FOUND


def test_ipv6_host_port_is_stripped():
    assert hit([route(0, "exact", "/", host="[::1]")], "/", host="[::1]:8080") == 0


def test_header_matchers_all_must_be_present():
    routes = [route(0, "exact", "/", headers=(("x-version", "2"), ("x-tenant", "acme")))]
    both = [(b"x-tenant", b"acme"), (b"x-version", b"2")]
    assert hit(routes, "/", headers=both) == 0
    assert hit(routes, "/", headers=both[:1]) == NOT_FOUND
    assert hit(routes, "/", headers=[(b"x-tenant", b"acme"), (b"x-version", b"3")]) == NOT_FOUND


def test_header_matcher_accepts_any_occurrence():
    routes = [route(0, "exact", "/", headers=(("x-v", "2"),))]
    assert hit(routes, "/", headers=[(b"x-v", b"1"), (b"x-v", b"2")]) == 0


def test_query_matchers():
    routes = [route(0, "exact", "/", query=(("v", "2"), ("debug", "")))]
    assert hit(routes, "/", query=b"v=2&debug") == 0
    assert hit(routes, "/", query=b"debug=&v=1&v=2") == 0
    assert hit(routes, "/", query=b"v=%32&debug=") == 0
    assert hit(routes, "/", query=b"v=2") == NOT_FOUND


def test_host_headers_and_query_untouched_without_matchers():
    router = Router([route(0, "exact", "/a", GET), route(1, "template", "/{x}"), route(2, "prefix", "/")])
    for path in ["/a", "/b", "/b/c"]:
        assert isinstance(router.match("POST", path, Explodes(), Explodes(), Explodes()), Found)
    assert Router([route(0, "exact", "/a", GET)]).match("POST", "/a", Explodes(), Explodes(), Explodes()) == (
        MethodNotAllowed(("GET",))
    )


def test_headers_untouched_when_host_already_fails():
    router = Router([route(0, "exact", "/", host="a.test", headers=(("x", "1"),))])
    assert router.match("GET", "/", "b.test", Explodes(), b"") is NOT_FOUND


# -- compile errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("/a/{", "must be a literal or a whole {name} parameter"),
        ("/a/{1x}", "invalid parameter name '1x'"),
        ("/a/x{id}", "must be a literal or a whole {name} parameter"),
        ("/a/{id}x", "must be a literal or a whole {name} parameter"),
        ("/a/{}", "invalid parameter name ''"),
        ("/a/{id}/{id}", "parameter 'id' used twice"),
        ("a/{id}", 'must start with "/"'),
    ],
)
def test_bad_templates(pattern, words):
    with pytest.raises(PathError) as caught:
        Router([route(0, "exact", "/ok"), route(7, "template", pattern)])
    assert caught.value.index == 7
    assert words in caught.value.message
    assert str(caught.value).startswith("route 7: ")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (route(3, "regex", "/a/(?P<x>"), "invalid regex"),
        (route(3, "regex", "/a/(?P<1>x)"), "invalid regex"),
        (route(3, "exact", "a"), 'must start with "/"'),
        (route(3, "prefix", ""), 'must start with "/"'),
        (route(3, "glob", "/a"), "unknown route kind"),
        (route(3, "exact", "/", host="a.*.com"), "invalid host"),
        (route(3, "exact", "/", host="*"), "invalid host"),
        (route(3, "exact", "/", host="a.com:80"), "must not carry a port"),
    ],
)
def test_other_compile_errors(spec, words):
    with pytest.raises(PathError) as caught:
        Router([spec])
    assert caught.value.index == 3
    assert words in caught.value.message


# -- result values ------------------------------------------------------------


def test_results_are_frozen_values():
    found = match([route(0, "template", "/{x}")], "/1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.target = "other"
    assert found == Found("t0", {"x": "1"}, found.spec)
    assert MethodNotAllowed(("GET",)) == MethodNotAllowed(("GET",))


# -- analyze ------------------------------------------------------------------


def test_analyze_clean_table():
    routes = [
        route(0, "exact", "/a", GET),
        route(1, "exact", "/a", frozenset({"POST"})),
        route(2, "template", "/a/{id}"),
        route(3, "template", "/b/{id}"),
        route(4, "prefix", "/"),
    ]
    assert analyze(routes) == []


def test_analyze_duplicate():
    routes = [route(0, "exact", "/a", GET, headers=(("x", "1"),)), route(1, "exact", "/a", GET, headers=(("x", "1"),))]
    assert analyze(routes) == [Finding(1, "route can never match: duplicate of route 0", 0)]


def test_analyze_shadowed():
    routes = [
        route(0, "prefix", "/api", frozenset({"GET", "POST"})),
        route(1, "prefix", "/api/", GET, headers=(("x", "1"),), query=(("q", "1"),)),
        route(2, "exact", "/h", host="*.example.com"),
        route(3, "exact", "/h", host="API.example.com"),
        route(4, "exact", "/h"),
    ]
    assert analyze(routes) == [
        Finding(1, "route can never match: shadowed by route 0 (same path, matches a superset of requests)", 0),
        Finding(3, "route can never match: shadowed by route 2 (same path, matches a superset of requests)", 2),
    ]


def test_analyze_narrower_earlier_route_does_not_shadow():
    routes = [
        route(0, "exact", "/a", GET),
        route(1, "exact", "/a"),
        route(2, "exact", "/b", host="a.test"),
        route(3, "exact", "/b"),
        route(4, "exact", "/c", headers=(("x", "1"),)),
        route(5, "exact", "/c", headers=(("y", "1"),)),
        route(6, "template", "/{x}", GET),
        route(7, "exact", "/d", GET),  # different path key: exact runs first
    ]
    assert analyze(routes) == []


def test_analyze_regex_after_catch_all_prefix():
    routes = [
        route(0, "regex", "/a/.*"),
        route(1, "prefix", "/"),
        route(2, "regex", "/b/.*"),
    ]
    message = 'route can never match: regexes are tried after prefixes and route 1 (prefix "/") matches every request'
    assert analyze(routes) == [Finding(0, message, 1), Finding(2, message, 1)]


def test_analyze_regex_only_partly_covered_by_root_prefix():
    routes = [route(0, "prefix", "/", GET), route(1, "regex", ".*"), route(2, "regex", "/.*", GET, host="a.test")]
    assert analyze(routes) == [
        Finding(
            2,
            'route can never match: regexes are tried after prefixes and route 0 (prefix "/") '
            "matches a superset of requests",
            0,
        )
    ]


def test_analyze_reports_one_reason_per_unreachable_route():
    routes = [route(0, "prefix", "/"), route(1, "regex", ".*"), route(2, "regex", ".*")]
    assert [(f.index, f.related) for f in analyze(routes)] == [(1, 0), (2, 1)]


def test_analyze_template_problems():
    routes = [
        route(0, "template", "/v1/{id}", GET),
        route(1, "template", "/v1/{vid}", frozenset({"POST"})),
        route(2, "template", "/v2/{a}/{a}"),
        route(3, "regex", "("),
    ]
    findings = analyze(routes)
    assert findings[0] == Finding(1, "conflicting path parameters with route 0: {vid} vs {id}", 0)
    assert (findings[1].index, findings[1].related) == (2, None)
    assert "parameter 'a' used twice" in findings[1].message
    assert (findings[2].index, findings[2].related) == (3, None)
    assert "invalid regex" in findings[2].message
    assert len(findings) == 3


def test_analyze_messages_have_no_trailing_period():
    routes = [route(0, "exact", "/a"), route(1, "exact", "/a"), route(2, "template", "/{x}/{x}")]
    assert all(not f.message.endswith(".") for f in analyze(routes))
