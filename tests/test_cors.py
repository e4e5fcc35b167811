"""The `cors` policy's decisions, without a server: origin matching (against a slow reference),
preflight answers, the headers of actual requests, the order of phases, and `check`'s findings."""

from __future__ import annotations

import asyncio
import re
import timeit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.dispatch.exchange import Exchange
from gatewayd.policies import Effects, Reject, Reply, route_steps
from gatewayd.policies import cors as cors_kind
from gatewayd.policies.auth import refused
from gatewayd.policies.cors import CACHE_SIZE, Cors, matches_pattern, parse_origin

APP = b"https://app.example.com"
SPEC = {
    "origins": ["https://app.example.com", "https://*.example.org", "http://localhost:3000"],
    "methods": ["GET", "PUT"],
    "headers": ["Authorization", "X-Custom"],
    "expose": ["X-Request-Id"],
    "max_age": "10m",
}


def headers_of(answer) -> dict[bytes, bytes]:
    pairs = answer.headers if hasattr(answer, "headers") else answer
    out: dict[bytes, bytes] = {}
    for name, value in pairs:
        assert name not in out, f"{name!r} twice"
        out[name] = value
    return out


# --- origins -------------------------------------------------------------------------------------------


def test_configured_origins_are_normalized_as_browsers_serialize_them():
    assert parse_origin("https://App.Example.com") == (APP, None)
    assert parse_origin("https://app.example.com:443") == (APP, None)
    assert parse_origin("http://app.example.com:80") == (b"http://app.example.com", None)
    assert parse_origin("http://app.example.com:443") == (b"http://app.example.com:443", None)
    assert parse_origin("https://*.Example.com") == (b"https://", b".example.com")
    assert parse_origin("https://*.example.com:8443") == (b"https://", b".example.com:8443")
    for bad in (
        "https://a..com",
        "https://.a.com",
        "https://a.com.",
        "https://a.com:0",
        "https://a.com:70000",
        "https://a.com/x",
    ):
        with pytest.raises(ValueError):
            parse_origin(bad)


@pytest.mark.parametrize(("origin", "allowed"), [
    (b"https://a.example.com", True),
    (b"https://a.b.example.com", True),
    (b"https://my-app_2.example.com", True),
    (b"https://example.com", False),  # the domain itself is not below it
    (b"https://.example.com", False),
    (b"https://a..example.com", False),
    (b"https://evil-example.com", False),
    (b"https://evil.com.example.com.evil.com", False),
    (b"https://a.example.com.", False),
    (b"http://a.example.com", False),  # another scheme
    (b"https://a.example.com:443", False),  # browsers never send the default port
    (b"https://a.example.com:8443", False),  # another port
    (b"https://x@a.example.com", False),
    (b"https://evil.com:1.example.com", False),
    (b"https://evil.com/.example.com", False),
    (b"https://A.example.com", False),  # not as a browser serializes it
    (b"null", False),
    (b"", False),
])  # fmt: skip
def test_pattern_admits_one_label_or_more_below_the_domain_only(origin, allowed):
    assert matches_pattern(origin, b"https://", b".example.com") is allowed


def test_pattern_with_a_port_needs_that_port():
    prefix, suffix = parse_origin("https://*.example.com:8443")
    assert matches_pattern(b"https://a.example.com:8443", prefix, suffix)
    assert not matches_pattern(b"https://a.example.com", prefix, suffix)
    assert not matches_pattern(b"https://a.example.com:84430", prefix, suffix)


def reference_allowed(origins: list[str], origin: str) -> bool:
    """Slow and plain: split the origin into scheme, host and port, and compare each part."""
    if "*" in origins:
        return True
    m = re.fullmatch(r"([a-z]+)://([^:/]*)(?::([0-9]+))?", origin)
    if m is None:
        return False
    scheme, host, port = m.group(1), m.group(2), m.group(3)
    if port is not None and (port.startswith("0") or int(port) in (0, {"http": 80, "https": 443}.get(scheme))):
        return False  # a browser would have left it out, or never sends it so
    for entry in origins:
        c = re.fullmatch(r"([a-z]+)://(\*\.)?([^:]+)(?::([0-9]+))?", entry)
        c_scheme, star, c_host, c_port = c.group(1), c.group(2), c.group(3).lower(), c.group(4)
        if c_port is not None and int(c_port) == {"http": 80, "https": 443}[c_scheme]:
            c_port = None
        if (c_scheme, c_port) != (scheme, port):
            continue
        if not star and host == c_host:
            return True
        if star and host.endswith("." + c_host):
            labels = host[: -len(c_host) - 1].split(".")
            if all(label and set(label) <= set("abcdefghijklmnopqrstuvwxyz0123456789-_") for label in labels):
                return True
    return False


LABELS = st.sampled_from(["a", "app", "example", "com", "org", "evil-example", "", "EXAMPLE", "x_y", "a@b", "é", "1"])
HOSTS = st.lists(LABELS, min_size=1, max_size=4).map(".".join)
ORIGINS = st.one_of(
    st.tuples(
        st.sampled_from(["http", "https", "HTTPS", "ftp"]),
        st.sampled_from(["://", "://", ":/"]),
        HOSTS,
        st.sampled_from(["", "", ":443", ":80", ":8443", ":", ":08443", "/", "/x"]),
    ).map("".join),
    st.sampled_from(["null", "*", "", "https://app.example.com", "https://a.example.org"]),
)
CONFIGURED = st.lists(
    st.tuples(
        st.sampled_from(["http://", "https://"]),
        st.sampled_from(["", "*."]),
        st.sampled_from(["example.com", "app.example.com", "Example.org", "com", "a.example.org"]),
        st.sampled_from(["", ":443", ":80", ":8443"]),
    ).map("".join),
    min_size=1,
    max_size=4,
    unique=True,
)


@st.composite
def near(draw, origins: list[str]) -> str:
    """An origin made from a configured one: its `*` replaced by a host, then maybe changed a little."""
    origin = draw(st.sampled_from(origins)).replace("*", draw(HOSTS), 1)
    change = draw(st.sampled_from(["", "", "lower", "upper", "dot", "port", "scheme"]))
    if change == "lower":
        return origin.lower()
    if change == "upper":
        return origin.upper()
    if change == "dot":
        return origin + "."
    if change == "port":
        return origin + ":443"
    return origin.replace("https://", "http://") if change == "scheme" else origin


@settings(max_examples=500, deadline=None)
@given(CONFIGURED, st.booleans(), st.data())
def test_origin_decision_matches_the_reference(origins, star, data):
    origin = data.draw(st.one_of(ORIGINS, near(origins)))
    origins = [*origins, "*"] if star else origins
    cors = Cors({"origins": origins})
    for _ in range(2):  # the second time from the matched-origin cache
        found = cors.entry(origin.encode())
        assert (found is not None) == reference_allowed(origins, origin)
    if found is not None:  # the page is told its own origin, or `*`; never another one
        assert headers_of(found[0])[b"access-control-allow-origin"] == (b"*" if star else origin.encode())


def test_the_matched_origin_cache_is_bounded():
    cors = Cors({"origins": ["https://*.example.com"]})
    for i in range(CACHE_SIZE + 50):
        assert cors.entry(b"https://h%d.example.com" % i) is not None
        assert cors.entry(b"https://h%d.evil.com" % i) is None
    assert len(cors.matched) == CACHE_SIZE
    assert b"https://h0.example.com" not in cors.matched  # the oldest went first
    assert cors.entry(b"https://h0.example.com") is not None


# --- preflights and actual requests --------------------------------------------------------------------


def test_preflight_of_an_allowed_origin_is_precomputed():
    cors = Cors(SPEC)
    answer = cors.preflight(APP, b"PUT")
    assert isinstance(answer, Reply) and answer.status == 204
    assert answer is cors.preflight(APP, b"GET")  # one object per origin, built when the config compiled
    assert headers_of(answer) == {
        b"access-control-allow-origin": APP,
        b"access-control-allow-methods": b"GET, PUT",
        b"access-control-allow-headers": b"Authorization, X-Custom",
        b"access-control-max-age": b"600",
        b"vary": b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }
    pattern = cors.preflight(b"https://api.example.org", b"GET")
    assert headers_of(pattern)[b"access-control-allow-origin"] == b"https://api.example.org"


@pytest.mark.parametrize(("origin", "method", "why"), [
    (b"https://evil.com", b"GET", "origin"),
    (b"null", b"GET", "origin"),
    (b"https://app.example.com.evil.com", b"GET", "origin"),
    (APP, b"DELETE", "GET, PUT"),
    (APP, b"put", "GET, PUT"),  # methods are case-sensitive
])  # fmt: skip
def test_refused_preflight_is_a_403_without_cors_headers(origin, method, why):
    answer = Cors(SPEC).preflight(origin, method)
    assert isinstance(answer, Reject) and answer.status == 403 and why in answer.message
    assert not any(name.startswith(b"access-control-") for name, _ in answer.headers)


def test_requested_headers_are_never_reflected():
    """The answer lists the configured headers whatever was asked: the browser fails a request
    whose headers are not all there."""
    cors = Cors(SPEC)
    assert cors.preflight(APP, b"GET") is cors.preflight(APP, b"GET")
    assert b"Authorization, X-Custom" == headers_of(cors.preflight(APP, b"GET"))[b"access-control-allow-headers"]
    bare = Cors({"origins": ["https://app.example.com"]})
    assert headers_of(bare.preflight(APP, b"POST")).keys() == {
        b"access-control-allow-origin", b"access-control-allow-methods", b"vary",
    }  # fmt: skip
    assert headers_of(bare.preflight(APP, b"POST"))[b"access-control-allow-methods"] == b"GET, HEAD, POST"


def test_star_answers_star_and_credentials_answer_the_origin():
    star = Cors({"origins": ["*"], "headers": ["X-Custom"]})
    for origin in (APP, b"null", b"https://anything.test"):
        assert headers_of(star.preflight(origin, b"GET"))[b"access-control-allow-origin"] == b"*"
        assert headers_of(star.actual(origin))[b"access-control-allow-origin"] == b"*"
    with_credentials = Cors(
        {"origins": ["https://app.example.com"], "credentials": True, "expose": ["X-Request-Id", "ETag"]}
    )
    assert headers_of(with_credentials.preflight(APP, b"GET"))[b"access-control-allow-credentials"] == b"true"
    assert headers_of(with_credentials.actual(APP)) == {
        b"access-control-allow-origin": APP,
        b"access-control-allow-credentials": b"true",
        b"access-control-expose-headers": b"X-Request-Id, ETag",
        b"vary": b"Origin",
    }
    with pytest.raises(ValueError):
        Cors({"origins": ["*"], "credentials": True})


def test_actual_requests_always_vary_on_origin():
    cors = Cors(SPEC)
    assert headers_of(cors.actual(None)) == {b"vary": b"Origin"}
    assert headers_of(cors.actual(b"https://evil.com")) == {b"vary": b"Origin"}
    assert headers_of(cors.actual(APP)) == {
        b"access-control-allow-origin": APP, b"access-control-expose-headers": b"X-Request-Id", b"vary": b"Origin",
    }  # fmt: skip


# --- the compiled step, on an exchange --------------------------------------------------------------------


def exchange(method: str = "GET", headers=()) -> Exchange:
    scope = {
        "type": "http",
        "method": method,
        "path": "/x",
        "query_string": b"",
        "headers": [(b"host", b"api"), *headers],
    }
    return Exchange(scope, None, None, 0, b"rid", False)


class Sent:
    def __init__(self):
        self.messages = []

    async def __call__(self, message):
        self.messages.append(message)

    def start(self):
        status, headers = self.messages[0]["status"], self.messages[0]["headers"]
        return status, {k: v for k, v in headers}


def test_compiled_effects():
    effects = cors_kind.compile_policy(SPEC, None, "browser")
    assert effects.preflight and len(effects.steps) == 1 and effects.steps[0][0] == 0
    assert b"access-control-allow-origin" in effects.response_headers.drop
    upstream = [
        (b"content-type", b"text/plain"),
        (b"access-control-allow-origin", b"*"),
        (b"access-control-max-age", b"9"),
    ]
    assert effects.response_headers.apply(upstream) == [(b"content-type", b"text/plain")]


def test_step_answers_preflights_and_adds_headers_to_other_requests():
    step = cors_kind.compile_policy(SPEC).steps[0][1]
    ex = exchange("OPTIONS", [(b"origin", APP), (b"access-control-request-method", b"PUT")])
    answer = step(ex, 0.0)
    assert isinstance(answer, Reply) and answer.status == 204 and ex.extra is None
    ex = exchange("OPTIONS", [(b"origin", b"https://evil.com"), (b"access-control-request-method", b"PUT")])
    assert step(ex, 0.0).status == 403
    for method, headers, expected in [
        ("GET", [(b"origin", APP)], APP),
        ("OPTIONS", [(b"origin", APP)], APP),  # no Access-Control-Request-Method: not a preflight
        ("GET", [], None),
        ("OPTIONS", [(b"access-control-request-method", b"GET")], None),  # no Origin: not a CORS request
        ("GET", [(b"origin", b"https://evil.com")], None),
    ]:
        ex = exchange(method, headers)
        assert step(ex, 0.0) is None
        extra = dict(ex.extra)
        assert extra[b"vary"] == b"Origin" and extra.get(b"access-control-allow-origin") == expected


def test_preflight_runs_before_auth_and_errors_carry_the_cors_headers():
    calls = []

    def authenticate(ex, now):
        calls.append(ex)
        return refused(b"Bearer", "unknown key")

    # listed before cors: the phases, not the order of the route's policies, decide
    effects = Effects(authenticators=((authenticate, b"Bearer"),)).then(cors_kind.compile_policy(SPEC))
    steps, phases = route_steps(effects)
    assert phases == (b"cors", b"auth")

    def run(ex):
        for step in steps:
            answer = step(ex, 0.0)
            if answer is not None:
                return answer

    preflight = exchange("OPTIONS", [(b"origin", APP), (b"access-control-request-method", b"PUT")])
    assert run(preflight).status == 204 and calls == []
    ex = exchange("PUT", [(b"origin", APP), (b"authorization", b"Bearer nope")])
    ex.send = sent = Sent()
    answer = run(ex)
    assert calls == [ex] and answer.status == 401
    asyncio.run(answer.send(ex))
    status, headers = sent.start()
    assert status == 401 and headers[b"access-control-allow-origin"] == APP and headers[b"vary"] == b"Origin"
    assert headers[b"access-control-expose-headers"] == b"X-Request-Id" and b"www-authenticate" in headers


# --- check ---------------------------------------------------------------------------------------------

CONFIG = """\
version: 1
policies:
  browser:
    cors:
      credentials: {credentials}
      origins:
        - https://app.example.com
        - {origin}
      headers: [X-Custom, {header}]
routes:
  - match: {{path: /x}}
    policies: [browser]
    respond: {{body: x}}
"""


def problems(tmp_path, **values) -> list[tuple[int, int, str]]:
    fields = {"credentials": "false", "origin": "https://b.example.com", "header": "X-Other", **values}
    try:
        load_bytes(CONFIG.format(**fields).encode(), str(tmp_path / "gateway.yaml"))
    except ConfigError as exc:
        return [(p.location.line, p.location.column, p.message) for p in exc.problems]
    return []


def test_check_accepts_a_good_policy(tmp_path):
    assert problems(tmp_path) == []
    assert problems(tmp_path, origin='"*"') == []
    assert problems(tmp_path, header='"*"') == []


def test_check_locates_star_with_credentials_at_its_origins_item(tmp_path):
    (found,) = problems(tmp_path, credentials="true", origin='"*"')
    assert found[:2] == (8, 11) and "credentials" in found[2]


@pytest.mark.parametrize(("origin", "words"), [
    ("https://app.example.com:443", "same origin as 'https://app.example.com'"),
    ("https://APP.example.com", "same origin"),
    ("https://a..example.com", "empty label"),
    ("https://a.example.com:99999", "port out of range"),
])  # fmt: skip
def test_check_locates_origins_that_cannot_match_as_written(tmp_path, origin, words):
    (found,) = problems(tmp_path, origin=origin)
    assert found[:2] == (8, 11) and words in found[2], found


def test_check_says_star_is_no_header_wildcard_with_credentials(tmp_path):
    (found,) = problems(tmp_path, credentials="true", header='"*"')
    assert found[0] == 9 and "not a wildcard" in found[2]


# --- cost ----------------------------------------------------------------------------------------------

BROWSER_HEADERS = [
    (b"host", b"api.example.com"), (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64)"), (b"accept", b"*/*"),
    (b"accept-language", b"en-GB,en;q=0.9"), (b"accept-encoding", b"gzip, deflate, br"),
    (b"referer", b"https://app.example.com/"), (b"sec-fetch-mode", b"cors"), (b"sec-fetch-site", b"cross-site"),
    (b"x-custom", b"1"),
]  # fmt: skip


def step_costs(number: int = 100_000) -> dict[str, float]:
    """ns per call of the compiled step, less the cost of resetting the exchange between calls."""
    step = cors_kind.compile_policy(SPEC).steps[0][1]
    cases = {
        "allowed origin": exchange("GET", [*BROWSER_HEADERS[:5], (b"origin", APP), *BROWSER_HEADERS[5:]]),
        "pattern origin": exchange(
            "GET", [*BROWSER_HEADERS[:5], (b"origin", b"https://a.example.org"), *BROWSER_HEADERS[5:]]
        ),
        "no origin": exchange("GET", BROWSER_HEADERS),
        "preflight": exchange(
            "OPTIONS", [*BROWSER_HEADERS[:5], (b"origin", APP), (b"access-control-request-method", b"PUT")]
        ),
    }
    costs = {}
    for label, ex in cases.items():

        def call(ex=ex):
            ex.extra = None
            step(ex, 0.0)

        def reset(ex=ex):
            ex.extra = None

        best = min(timeit.repeat(call, number=number, repeat=5)) / number
        empty = min(timeit.repeat(reset, number=number, repeat=5)) / number
        costs[label] = (best - empty) * 1e9
    return costs


def test_step_cost_stays_within_a_few_microseconds():
    costs = step_costs(20_000)
    print({k: f"{v:.0f} ns" for k, v in costs.items()})
    assert max(costs.values()) < 3_000, costs  # about 0.3 us each when the machine is quiet


if __name__ == "__main__":
    for label, ns in step_costs().items():
        print(f"{label:>15}: {ns:5.0f} ns per call")
