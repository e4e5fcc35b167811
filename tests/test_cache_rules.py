"""The cache's decisions as pure functions: Cache-Control parsing, freshness and age (RFC 9111
section 4.2), what may be stored (section 3), what a request may use (section 4 and 5.2.1),
conditional requests answered from a stored response, the L1's bounds and the shared tier's form."""

from __future__ import annotations

import math

import pytest

from gatewayd.cache import directives
from gatewayd.cache.admission import Rules, admit
from gatewayd.cache.conditional import headers_304, not_modified, validates
from gatewayd.cache.entry import Entry
from gatewayd.cache.freshness import (
    FRESH,
    NO_RULES,
    REVALIDATE_LATER,
    STALE_OK,
    VALIDATE,
    RequestRules,
    initial_age,
    judge,
    lifetime,
    may_serve_on_error,
)  # fmt: skip
from gatewayd.cache.l1 import L1
from gatewayd.cache.request import View, compile_query, selection

T = 1_800_000_000.0  # "now" in these tests
DATE = b"Fri, 15 Jan 2027 08:00:00 GMT"  # = T
assert directives is not None


def fields(**headers) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode() if isinstance(v, str) else v) for k, v in headers.items()]


def stored(status=200, rules=Rules(), request=NO_RULES, foreign_auth=False, consumer=None, at=T, **headers):
    return admit(rules, request, foreign_auth, status, fields(date=DATE, **headers),
                 request_time=at, response_time=at, consumer=consumer, url=b"/x")  # fmt: skip


# --- Cache-Control --------------------------------------------------------------------------------


def test_directives_are_case_insensitive_first_wins_and_quoted_arguments_unquoted():
    cc = directives.parse([b'Max-Age=60, s-maxage="30", private="Set-Cookie, X-A", no-cache', b"max-age=5"])
    assert cc == {"max-age": "60", "s-maxage": "30", "private": "Set-Cookie, X-A", "no-cache": None}
    assert directives.field_names(cc["private"]) == {b"set-cookie", b"x-a"}


@pytest.mark.parametrize("arg, expected", [("10", 10), ("0", 0), ("-1", None), ("1.5", None), ("abc", None),
                                           ("", None), (None, None), ("99999999999", 2147483648)])  # fmt: skip
def test_delta_seconds(arg, expected):
    assert directives.seconds(arg) == expected


# --- freshness lifetime and age (section 4.2) -------------------------------------------------------


def test_s_maxage_wins_over_max_age_which_wins_over_expires():
    both = {"s-maxage": "10", "max-age": "100"}
    assert lifetime(200, both, b"Fri, 15 Jan 2027 09:00:00 GMT", T, None, T) == 10
    assert lifetime(200, {"max-age": "100"}, b"Fri, 15 Jan 2027 09:00:00 GMT", T, None, T) == 100
    assert lifetime(200, {}, b"Fri, 15 Jan 2027 09:00:00 GMT", T, None, T) == 3600


def test_invalid_max_age_or_expires_is_stale():
    assert lifetime(200, {"max-age": "soon"}, None, T, None, T) == 0
    assert lifetime(200, {}, b"0", T, None, T) == 0


def test_heuristic_freshness_only_for_heuristically_cacheable_statuses_or_public():
    last_modified = T - 1000
    assert lifetime(200, {}, None, T, last_modified, T) == pytest.approx(100)
    assert lifetime(404, {}, None, T, last_modified, T) == pytest.approx(100)
    assert lifetime(302, {}, None, T, last_modified, T) is None
    assert lifetime(302, {"public": None}, None, T, last_modified, T) == pytest.approx(100)
    assert lifetime(200, {}, None, T, None, T) is None  # nothing to base a heuristic on
    assert lifetime(200, {}, None, T, None, T, default_ttl=30) == 30  # the policy's `ttl`


def test_initial_age_counts_the_origins_age_the_trip_and_a_date_in_the_past():
    assert initial_age(None, T, T - 0.5, T) == pytest.approx(0.5)
    assert initial_age(b"10", T, T - 0.5, T) == pytest.approx(10.5)
    assert initial_age(None, T - 30, T, T) == pytest.approx(30)  # Date 30 s ago: apparent age
    assert initial_age(b"nonsense", T, T, T) == 0
    assert initial_age(b"30, 10", T, T, T) == 30  # a list: its first member


# --- what a request may use (sections 4 and 5.2.1) --------------------------------------------------


def test_judge_fresh_then_stale():
    entry = stored(cache_control="max-age=10")
    assert judge(entry, NO_RULES, T + 5) == FRESH
    assert judge(entry, NO_RULES, T + 11) == VALIDATE


def test_request_directives():
    entry = stored(cache_control="max-age=10")
    cc = lambda value: RequestRules.of(directives.parse([value]), False)
    assert judge(entry, cc(b"no-cache"), T + 1) == VALIDATE
    assert judge(entry, cc(b"max-age=2"), T + 3) == VALIDATE
    assert judge(entry, cc(b"max-age=5"), T + 3) == FRESH
    assert judge(entry, cc(b"min-fresh=8"), T + 3) == VALIDATE
    assert judge(entry, cc(b"max-stale=5"), T + 12) == STALE_OK
    assert judge(entry, cc(b"max-stale"), T + 1000) == STALE_OK
    assert judge(entry, cc(b"max-stale=1"), T + 12) == VALIDATE
    assert judge(entry, RequestRules.of({}, True), T + 1) == VALIDATE  # Pragma: no-cache, no Cache-Control


def test_must_revalidate_and_no_cache_never_serve_stale():
    must = stored(cache_control="max-age=1, must-revalidate, stale-while-revalidate=60, stale-if-error=60")
    any_stale = RequestRules.of({"max-stale": None}, False)
    assert judge(must, any_stale, T + 5) == VALIDATE
    assert not may_serve_on_error(must, T + 5)
    no_cache = stored(cache_control="max-age=60, no-cache")
    assert judge(no_cache, NO_RULES, T + 1) == VALIDATE


def test_stale_while_revalidate_and_stale_if_error_windows():
    entry = stored(cache_control="max-age=1, stale-while-revalidate=10, stale-if-error=100")
    assert judge(entry, NO_RULES, T + 5) == REVALIDATE_LATER
    assert judge(entry, NO_RULES, T + 12) == VALIDATE
    assert may_serve_on_error(entry, T + 50) and not may_serve_on_error(entry, T + 102)
    asks_more = RequestRules.of(directives.parse([b"stale-if-error=200"]), False)
    assert may_serve_on_error(entry, T + 150, asks_more) and not may_serve_on_error(entry, T + 150)
    from_config = stored(rules=Rules(swr=3.0, sie=4.0), cache_control="max-age=1")
    assert (from_config.swr, from_config.sie) == (3.0, 4.0)


# --- what may be stored (section 3) -------------------------------------------------------------


@pytest.mark.parametrize("headers, reason", [
    ({"cache_control": "no-store, max-age=60"}, "no-store"),
    ({"cache_control": "private, max-age=60"}, "private"),
    ({"cache_control": "max-age=60", "set_cookie": "a=b"}, "set-cookie"),
    ({"cache_control": "max-age=60", "vary": "Accept, *"}, "vary-star"),
    ({}, "no-freshness"),
])  # fmt: skip
def test_not_stored(headers, reason):
    assert stored(**headers) == reason


def test_not_stored_partial_or_not_modified_or_for_a_request_with_no_store():
    assert stored(status=206, cache_control="max-age=60") == "status"
    assert stored(status=304, cache_control="max-age=60") == "status"
    assert stored(request=RequestRules(no_store=True), cache_control="max-age=60") == "request-no-store"


def test_authorization_needs_public_s_maxage_or_must_revalidate():
    assert stored(foreign_auth=True, cache_control="max-age=60") == "authorization"
    for cc in ("max-age=60, public", "s-maxage=60", "max-age=60, must-revalidate"):
        assert isinstance(stored(foreign_auth=True, cache_control=cc), Entry)


def test_a_response_without_freshness_but_with_a_validator_is_stored_stale():
    entry = stored(etag='"v1"')
    assert entry.lifetime == 0 and judge(entry, NO_RULES, T) == VALIDATE


def test_stored_fields_leave_out_age_and_the_fields_private_or_no_cache_name():
    entry = stored(cache_control='max-age=60, private="x-secret", no-cache="x-other"', age="3", x_secret="s",
                   x_other="o", x_kept="k")  # fmt: skip
    names = {n for n, _ in entry.headers}
    assert b"x-kept" in names and not names & {b"age", b"x-secret", b"x-other"}
    assert entry.initial_age == 3


def test_a_response_without_date_gets_one():
    entry = admit(Rules(), NO_RULES, False, 200, fields(cache_control="max-age=5"), request_time=T, response_time=T,
                  consumer=None, url=b"/x")  # fmt: skip
    assert entry.header(b"date") == DATE


def test_ttl_mode_ignores_the_origins_freshness_but_not_private():
    rules = Rules(mode="ttl", ttl=30.0)
    assert stored(rules=rules, cache_control="no-cache, max-age=0").lifetime == 30
    assert stored(rules=rules, cache_control="private") == "private"
    assert stored(rules=rules, status=404) == "status"


def test_a_public_response_is_shared_by_consumers_others_are_theirs():
    assert stored(consumer="acme", cache_control="max-age=60").consumer == "acme"
    assert stored(consumer="acme", cache_control="max-age=60, public").consumer is None


def test_tags_from_the_tag_header():
    assert stored(cache_control="max-age=5", surrogate_key="b a, c").tags == (b"a", b"b", b"c")


# --- conditional requests (section 4.3.2) -------------------------------------------------------


def test_if_none_match_uses_weak_comparison_and_wins_over_if_modified_since():
    entry = stored(cache_control="max-age=5", etag='W/"v1"', last_modified="Fri, 15 Jan 2027 07:00:00 GMT")
    assert not_modified(entry, b'"v0", "v1"', None)
    assert not_modified(entry, b"*", None)
    assert not not_modified(entry, b'"v2"', b"Fri, 15 Jan 2027 09:00:00 GMT")
    assert not_modified(entry, None, b"Fri, 15 Jan 2027 07:00:00 GMT")
    assert not not_modified(entry, None, b"Fri, 15 Jan 2027 06:00:00 GMT")
    assert {n for n, _ in headers_304(entry)} == {b"cache-control", b"etag", b"last-modified", b"date"}
    assert not_modified(stored(cache_control="max-age=5", etag='"a,b"'), b'"a,b"', None)  # a comma inside a tag
    assert not not_modified(entry, None, b"")  # If-Modified-Since given twice: ignored


def test_a_304_updates_only_the_response_its_validator_names():
    strong = stored(cache_control="max-age=5", etag='"a"', last_modified="Fri, 15 Jan 2027 07:00:00 GMT")
    assert validates(strong, fields(etag='"a"')) and validates(strong, fields(etag='W/"a"'))
    assert not validates(strong, fields(etag='"b"'))
    weak = stored(cache_control="max-age=5", etag='W/"a"')
    assert not validates(weak, fields(etag='"a"'))  # a strong tag names a strong validator
    assert validates(strong, fields(last_modified="Fri, 15 Jan 2027 07:00:00 GMT"))
    assert not validates(strong, fields(last_modified="Fri, 15 Jan 2027 07:30:00 GMT"))
    assert validates(strong, fields(cache_control="max-age=60"))


# --- request view and key -----------------------------------------------------------------------


def test_request_view_reads_rules_validators_and_key_fields_in_one_pass():
    view = View(fields(host="A.test", cache_control="max-age=0", if_none_match='"x"', accept_language="en"),
                frozenset({b"accept-language"}))  # fmt: skip
    assert view.host == b"a.test" and view.rules.max_age == 0 and view.if_none_match == b'"x"'
    assert view.fields == {b"accept-language": b"en"}
    assert View(fields(host="a"), frozenset()).rules is NO_RULES


def test_key_query_keeps_the_named_parameters_sorted():
    pick = compile_query(["sort", "page"])
    assert pick(b"utm=1&page=2&sort=name") == pick(b"sort=name&page=2") == b"page=2&sort=name"
    assert compile_query(None) is None


def test_vary_selection_joins_lines_and_marks_absent_fields():
    headers = fields(accept_encoding="gzip,  br")
    assert selection(headers, (b"accept-encoding", b"accept-language")) == (b"gzip,br", None)


# --- L1 and the shared tier's form --------------------------------------------------------------


def entry_of(size: int, url: bytes = b"/x") -> Entry:
    return stored(cache_control="max-age=60").replace(body=b"x" * size, url=url)


def test_l1_evicts_an_unvisited_node_first_within_its_bytes():
    l1 = L1(max_bytes=8 * 2000)
    for i in range(8):
        l1.put(b"k%d" % i, b"ns", entry_of(1500, b"/%d" % i), ())
    l1.node(b"k0")  # used: kept
    l1.put(b"k9", b"ns", entry_of(1500, b"/9"), ())
    assert l1.used <= l1.max_bytes
    assert l1.node(b"k0") is not None and l1.node(b"k1") is None
    assert l1.drop_url(b"/0") == 1 and l1.node(b"k0") is None


def test_l1_refuses_objects_over_an_eighth_of_it():
    l1 = L1(max_bytes=8000)
    l1.put(b"big", b"ns", entry_of(2000), ())
    assert len(l1) == 0


def test_entry_round_trips_through_the_shared_tier_form():
    entry = stored(cache_control="max-age=60", etag='"e"', vary="Accept").replace(body=b"abc", selected=(b"x",))
    back = Entry.loads(entry.dumps())
    assert back.headers == entry.headers and back.body == b"abc" and back.selected == (b"x",)
    assert math.isclose(back.stale_at, entry.stale_at)
    assert Entry.loads(b"garbage") is None
