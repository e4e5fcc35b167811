"""HTTP caching conformance of gatewayd's response cache, written from the RFCs, section by section:
RFC 9111 (HTTP Caching), RFC 5861 (stale-while-revalidate, stale-if-error), RFC 9211
(Cache-Status), and RFC 9110 sections 13.1-13.2 and 15.4.5 (conditional requests, 304).

gatewayd runs as a shared cache in front of one origin: every path and method forwarded, `mode:
standard`, no `ttl`. The origin is scripted per path (tests/cache_origin.py) and records what it
receives, so each test checks behaviour first by what reached the origin (how many requests, which
conditional header fields) and by the response the client got, and only second by Cache-Status.

Each test names the rule it checks and its strength in the RFC: [MUST], [SHOULD], or [MAY] where
the RFC permits a behaviour that gatewayd's cache issue asks for. Every test runs on Granian; a
representative subset also runs on Hypercorn (and a few on a gateway with two workers).

Freshness lifetimes are 1-2 s and every wait is bounded. Tests that need stored responses to
expire are split by a bare `yield` (see `after_expiry`): their first halves run together, one wait
of STALE_WAIT_S serves them all, then each test resumes.
"""

from __future__ import annotations

import gzip
import inspect
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cache_origin import Origin, Reply, body_for, http_date
from conftest import ENGINES, free_port

CONFIG = """
version: 1
server:
  workers: 1
cache: {{l1_max: 64MiB, l2_max: 256MiB, max_object: 8MiB}}
upstreams:
  origin: {{targets: ["{origin}"]}}
policies:
  shared: {{cache: {{mode: standard}}}}
routes:
  - name: all
    match: {{path_prefix: /}}
    policies: [shared]
    upstream: origin
"""

both_engines = pytest.mark.parametrize("engine", list(ENGINES), indirect=True)
granian = pytest.mark.parametrize("engine", ["granian"], indirect=True)

STALE_WAIT_S = 1.1  # past a 1 s freshness lifetime
DAY = 86_400.0

FWD_REASONS = {"bypass", "method", "uri-miss", "vary-miss", "miss", "request", "stale", "partial"}


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def origin():
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def gw(gatewayd_module, origin):
    return gatewayd_module(CONFIG.format(origin=origin.url))


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


@pytest.fixture
def path(request, engine):
    """A path of this test alone (the origin outlives the gateway of each engine)."""
    return f"/{request.node.originalname}/{engine}-{uuid.uuid4().hex[:8]}"


# --- tests that wait for stored responses to expire ------------------------------------------------

EXPIRING: dict[str, tuple] = {}  # test name -> (its generator function, the engines it runs on)


def after_expiry(*engines: str):
    """A test in two halves split by a bare `yield`: what comes before (scripting the origin,
    storing responses) runs for every such test when the module's gateway for the engine starts
    (the `aged` fixture), then one wait of STALE_WAIT_S lets them all expire together, and the test
    runs what comes after. So their waits overlap, and the file stays fast. The generator takes any
    of `client`, `gw`, `origin` and `path`; its responses may be older than STALE_WAIT_S by the
    time it resumes, so freshness lifetimes meant to last are long (600 s)."""

    def mark(gen):
        EXPIRING[gen.__name__] = (gen, engines)

        def test(aged):
            run = aged[gen.__name__]
            if isinstance(run, BaseException):
                raise run
            try:
                next(run)
            except StopIteration:
                return
            pytest.fail("a test split by `yield` yields once")

        test.__name__ = test.__qualname__ = gen.__name__
        test.__doc__ = gen.__doc__
        return pytest.mark.parametrize("engine", list(engines), indirect=True)(test)

    return mark


@pytest.fixture(scope="module")
def aged(gw, origin, engine):
    """The first halves of this engine's tests split by `yield`, then one wait: {name: generator
    ready to resume, or the exception its first half raised}."""
    runs: dict[str, object] = {}
    with httpx.Client(base_url=gw.url, timeout=10.0) as client:
        fixtures = {"client": client, "gw": gw, "origin": origin}
        for name, (gen, engines) in EXPIRING.items():
            if engine not in engines:
                continue
            args = {k: v for k, v in fixtures.items() if k in inspect.signature(gen).parameters}
            run = gen(**args, path=f"/{name}/{engine}-{uuid.uuid4().hex[:8]}")
            try:
                next(run)
                runs[name] = run
            except StopIteration:
                runs[name] = AssertionError(f"{name} did not yield")
            except Exception as exc:  # noqa: BLE001 - reported by the test itself
                runs[name] = exc
        time.sleep(STALE_WAIT_S)
        yield runs


# --- helpers ------------------------------------------------------------------------------------


def cc(value: str) -> dict[str, str]:
    return {"Cache-Control": value}


def show(r: httpx.Response) -> str:
    """The response, for assertion messages."""
    head = "; ".join(
        f"{k}: {v}" for k, v in r.headers.multi_items() if k.lower() not in ("server-timing", "x-request-id")
    )
    return f"{r.status_code} [{head}] body={r.content[:80]!r}"


def saw(origin: Origin, target: str) -> str:
    """What the origin received at `target`, for assertion messages."""
    out = []
    for s in origin.seen(target):
        cond = {n: s.header(n) for n in ("if-none-match", "if-modified-since") if s.header(n) is not None}
        out.append(f"{s.method}{' ' + str(cond) if cond else ''} -> {s.status}")
    return f"origin saw {len(out)}: {out}"


def ages(r: httpx.Response) -> list[str]:
    return r.headers.get_list("age")


def age(r: httpx.Response) -> int | None:
    values = ages(r)
    if len(values) != 1 or not values[0].strip().isdigit():
        return None
    return int(values[0])


def reused(origin: Origin, p: str, r: httpx.Response) -> None:
    """`r` is the first reply to `p`, served from the cache: the origin saw one request."""
    assert r.content == body_for(p, 1) and origin.count(p) == 1, f"{saw(origin, p)} / {show(r)}"


def forwarded(origin: Origin, p: str, r: httpx.Response, n: int = 2) -> None:
    """`r` is the `n`th reply to `p`: the origin saw `n` requests and the last answer was passed on."""
    assert r.content == body_for(p, n) and origin.count(p) == n, f"{saw(origin, p)} / {show(r)}"


def again(client: httpx.Client, origin: Origin, p: str, *replies: Reply, headers=None) -> httpx.Response:
    """Script `p` with `replies`, GET it, then GET it again (with `headers`): the second response."""
    origin.script(p, *replies)
    client.get(p)
    return client.get(p, headers=headers)


def at_once(gw, p: str, n: int, headers=lambda i: None) -> list[tuple[httpx.Response, float]]:
    """`n` GETs of `p` at once, each on its own thread and connection (request i with `headers(i)`):
    [(response, seconds it took)] in order."""

    def one(i: int) -> tuple[httpx.Response, float]:
        with httpx.Client(base_url=gw.url, timeout=15.0) as c:
            started = time.monotonic()
            r = c.get(p, headers=headers(i))
            return r, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(one, range(n), timeout=30))


class Checks:
    """Several independent checks in one test (they share one wait): all are reported together."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failed.append(message)

    def done(self) -> None:
        if self.failed:
            pytest.fail("\n".join(self.failed), pytrace=False)


# --- RFC 8941 lists, for Cache-Status -----------------------------------------------------------


class SFError(ValueError):
    pass


class Token(str):
    """An RFC 8941 token (a str subclass, to tell it from a string)."""


def parse_sf_list(text: str) -> list[tuple[object, dict[str, object]]]:
    """An RFC 8941 section 4.2.1 List: [(item or inner list, parameters)]; SFError if malformed."""
    s, i = text, 0

    def sp(i: int) -> int:
        while i < len(s) and s[i] == " ":
            i += 1
        return i

    def ows(i: int) -> int:
        while i < len(s) and s[i] in " \t":
            i += 1
        return i

    def bare(i: int):
        if i >= len(s):
            raise SFError("item expected at end")
        c = s[i]
        if c == "-" or c.isdigit():
            j = i + 1 if c == "-" else i
            k = j
            while k < len(s) and (s[k].isdigit() or s[k] == "."):
                k += 1
            num = s[j:k]
            if not num or not num[0].isdigit() or num.count(".") > 1:
                raise SFError(f"bad number at {i}")
            if "." in num:
                whole, frac = num.split(".")
                if len(whole) > 12 or not 1 <= len(frac) <= 3:
                    raise SFError(f"bad decimal at {i}")
                return float(s[i:k]), k
            if len(num) > 15:
                raise SFError(f"integer too long at {i}")
            return int(s[i:k]), k
        if c == '"':
            out, k = [], i + 1
            while k < len(s):
                ch = s[k]
                if ch == "\\":
                    if k + 1 >= len(s) or s[k + 1] not in '"\\':
                        raise SFError(f"bad escape at {k}")
                    out.append(s[k + 1])
                    k += 2
                    continue
                if ch == '"':
                    return "".join(out), k + 1
                if not " " <= ch <= "~":
                    raise SFError(f"bad string character at {k}")
                out.append(ch)
                k += 1
            raise SFError("unterminated string")
        if c.isalpha() or c == "*":
            k = i + 1
            while k < len(s) and (s[k].isalnum() or s[k] in "!#$%&'*+-.^_`|~:/"):
                k += 1
            return Token(s[i:k]), k
        if c == ":":
            k = s.find(":", i + 1)
            if k < 0:
                raise SFError("unterminated byte sequence")
            return s[i + 1 : k].encode(), k + 1
        if c == "?":
            if s[i + 1 : i + 2] in ("0", "1"):
                return s[i + 1] == "1", i + 2
            raise SFError(f"bad boolean at {i}")
        raise SFError(f"unexpected {c!r} at {i}")

    def params(i: int):
        out: dict[str, object] = {}
        while i < len(s) and s[i] == ";":
            i = sp(i + 1)
            if i >= len(s) or not (s[i].islower() or s[i] == "*"):
                raise SFError(f"bad parameter key at {i}")
            k = i + 1
            while k < len(s) and (s[k].islower() or s[k].isdigit() or s[k] in "_-.*"):
                k += 1
            key, i = s[i:k], k
            value: object = True
            if i < len(s) and s[i] == "=":
                value, i = bare(i + 1)
            out[key] = value
        return out, i

    def member(i: int):
        if i < len(s) and s[i] == "(":
            items, i = [], i + 1
            while True:
                i = sp(i)
                if i < len(s) and s[i] == ")":
                    i += 1
                    break
                item, i = bare(i)
                p, i = params(i)
                items.append((item, p))
                if i < len(s) and s[i] not in " )":
                    raise SFError(f"bad inner list at {i}")
            p, i = params(i)
            return (items, p), i
        item, i = bare(i)
        p, i = params(i)
        return (item, p), i

    out: list[tuple[object, dict[str, object]]] = []
    i = sp(0)
    if i == len(s):
        return out
    for _ in range(1000):
        m, i = member(i)
        out.append(m)
        i = ows(i)
        if i == len(s):
            return out
        if s[i] != ",":
            raise SFError(f"',' expected at {i} in {text!r}")
        i = ows(i + 1)
        if i == len(s):
            raise SFError("trailing comma")
    raise SFError("too many members")


def cache_status(r: httpx.Response) -> list[tuple[object, dict[str, object]]]:
    """The Cache-Status list (its field lines combined, RFC 9110 section 5.3)."""
    return parse_sf_list(", ".join(r.headers.get_list("cache-status")))


PARAMETER_TYPES = {  # RFC 9211 section 2.1-2.8
    "hit": lambda v: v is True or v is False,
    "fwd": lambda v: isinstance(v, Token),
    "fwd-status": lambda v: type(v) is int,
    "ttl": lambda v: type(v) is int,
    "stored": lambda v: v is True or v is False,
    "collapsed": lambda v: v is True or v is False,
    "key": lambda v: type(v) is str,
    "detail": lambda v: isinstance(v, str),
}


def ours(r: httpx.Response) -> dict[str, object] | None:
    """The parameters of gatewayd's Cache-Status member (the last one naming it), or None when there
    is none; an AssertionError when the field is not an RFC 8941 List or a parameter of RFC 9211
    has the wrong type."""
    if not r.headers.get_list("cache-status"):
        return None
    try:
        members = cache_status(r)
    except SFError as exc:
        raise AssertionError(f"Cache-Status is not an RFC 8941 List ({exc}): {show(r)}") from None
    mine = [p for item, p in members if item == "gatewayd"]
    if not mine:
        return None
    wrong = [k for k, ok in PARAMETER_TYPES.items() if k in mine[-1] and not ok(mine[-1][k])]
    assert not wrong, f"RFC 9211 parameters of the wrong type {wrong}: {show(r)}"
    return mine[-1]


# --- RFC 9111 section 3: storing responses ------------------------------------------------------


@both_engines
def test_3_fresh_response_is_stored_and_reused(client, origin, path):
    """Section 3 and 4 [MAY store; gatewayd's issue]: a fresh 200 with max-age is served from the
    cache, with an Age field (section 4 [MUST]: "a cache MUST generate an Age header field")."""
    origin.script(path, Reply(200, cc("max-age=60"), "the body"))
    first = client.get(path)
    second = client.get(path)
    assert first.status_code == 200 and first.content == b"the body", show(first)
    assert second.status_code == 200 and second.content == b"the body", show(second)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(second)
    assert age(second) is not None, f"a hit needs exactly one Age with a non-negative integer: {show(second)}"


@both_engines
def test_3_no_store_response_is_not_stored(client, origin, path):
    """Section 3 [MUST NOT store] and 5.2.2.5: a response with no-store (even with max-age)."""
    origin.script(path, Reply(200, cc("max-age=60, no-store")))
    client.get(path)
    b = client.get(path)
    forwarded(origin, path, b)


@both_engines
def test_3_private_response_is_not_stored_by_a_shared_cache(client, origin, path):
    """Section 3 [MUST NOT store, shared cache] and 5.2.2.7: private (unqualified)."""
    b = again(client, origin, path, Reply(200, cc("private, max-age=60")))
    forwarded(origin, path, b)


@granian
def test_3_qualified_private_field_is_not_stored(client, origin, path):
    """Section 5.2.2.7 [MUST NOT store the named fields, shared cache]: with private="X-Secret" the
    rest may be stored, the named field never; a cache may also treat it as unqualified private."""
    b = again(
        client,
        origin,
        path,
        Reply(200, {"Cache-Control": 'max-age=60, private="X-Secret"', "X-Secret": "s3cret", "X-Open": "o"}),
    )
    if origin.count(path) == 1:
        assert "x-secret" not in b.headers and b.headers.get("x-open") == "o", show(b)


@granian
def test_5_2_2_4_qualified_no_cache_field_is_not_reused_without_validation(client, origin, path):
    """Section 5.2.2.4 [MUST NOT send the named fields without revalidation]: no-cache="X-Volatile";
    a cache may also treat it as unqualified no-cache (and validate every time)."""
    b = again(
        client, origin, path, Reply(200, {"Cache-Control": 'max-age=60, no-cache="X-Volatile"', "X-Volatile": "v1"})
    )
    if origin.count(path) == 1:
        assert "x-volatile" not in b.headers, show(b)


@granian
def test_5_2_1_5_no_store_request_is_not_stored(client, origin, path):
    """Section 5.2.1.5 [MUST NOT store any response to it]: request no-store."""
    origin.script(path, Reply(200, cc("max-age=60")))
    a = client.get(path, headers=cc("no-store"))
    b = client.get(path)
    assert a.status_code == 200, show(a)
    assert origin.count(path) == 2, saw(origin, path) + " / " + show(b)


@granian
@pytest.mark.parametrize("status", [302, 307, 500, 403])
def test_3_status_not_heuristically_cacheable_is_not_reused(client, origin, path, status):
    """Sections 3 and 4.2.2 [MUST NOT]: without explicit freshness, a status that is not
    heuristically cacheable (RFC 9110 section 15.1) is not reused, Last-Modified or not."""
    headers = {"Last-Modified": http_date(time.time() - 10 * DAY)}
    if status in (302, 307):
        headers["Location"] = "/elsewhere"
    b = again(client, origin, path, Reply(status, headers))
    assert b.status_code == status, show(b)
    assert origin.count(path) == 2, saw(origin, path) + " / " + show(b)


@granian
@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501])
def test_4_2_2_heuristically_cacheable_status_with_last_modified_is_reused(client, origin, path, status):
    """Section 4.2.2 [MAY; gatewayd's issue: heuristic freshness where the RFC allows it]: a status
    heuristically cacheable by default (RFC 9110 section 15.1) with a Last-Modified ten days old
    and no explicit freshness gets a heuristic lifetime (10% of the interval: a day)."""
    headers = {"Last-Modified": http_date(time.time() - 10 * DAY)}
    if status in (300, 301, 308):
        headers["Location"] = "/elsewhere"
    origin.script(path, Reply(status, headers))
    a = client.get(path)
    b = client.get(path)
    assert a.status_code == status and b.status_code == status, show(b)
    assert b.content == a.content, show(b)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(b)
    if status == 204:
        assert "content-length" not in b.headers, f"RFC 9110 8.6 [MUST NOT send Content-Length in a 204]: {show(b)}"


@granian
def test_4_2_2_no_heuristic_freshness_without_last_modified(client, origin, path):
    """Section 4.2.2 (gatewayd's choice in the brief: heuristics only from Last-Modified): a 200
    with neither explicit freshness nor Last-Modified is forwarded again."""
    b = again(client, origin, path, Reply(200, {"ETag": '"h1"'}, validate=False))
    assert origin.count(path) == 2, saw(origin, path) + " / " + show(b)


@granian
def test_3_explicit_freshness_makes_a_302_reusable(client, origin, path):
    """Section 3 [MAY]: any final status the cache understands is storable with explicit
    freshness; a 302 with max-age=60 is reused."""
    b = again(client, origin, path, Reply(302, {"Cache-Control": "max-age=60", "Location": "/there"}))
    assert b.status_code == 302 and b.headers.get("location") == "/there", show(b)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(b)


@both_engines
def test_3_1_connection_named_and_hop_by_hop_fields_are_not_stored(client, origin, path):
    """Section 3.1 and RFC 9110 section 7.6.1 [MUST]: the Connection field and the fields it names
    are not forwarded nor stored; other fields, unrecognised ones included, are stored [MUST]. A
    chunked origin response is served whole from the cache."""
    origin.script(
        path,
        Reply(
            200,
            [
                ("Cache-Control", "max-age=60"),
                ("Connection", "X-Hop-A"),
                ("X-Hop-A", "1"),
                ("Keep-Alive", "timeout=30"),
                ("X-Unknown-Kept", "yes"),
            ],
            "chunked body of a cached response",
            chunked=True,
        ),
    )
    a = client.get(path)
    b = client.get(path)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(b)
    for r in (a, b):
        assert r.content == b"chunked body of a cached response", show(r)
        assert "x-hop-a" not in r.headers and "keep-alive" not in r.headers, show(r)
        assert r.headers.get("x-unknown-kept") == "yes", show(r)


@both_engines
def test_3_1_a_stored_chunked_response_served_over_http2(gw, origin, path):
    """Section 3.1 (Transfer-Encoding and the fields Connection names are not stored) seen over
    HTTP/2, where RFC 9113 section 8.2.2 forbids connection-specific fields: a response stored from
    a chunked HTTP/1.1 answer is a well-formed HTTP/2 response (prior knowledge, cleartext)."""
    origin.script(
        path,
        Reply(
            200, [("Cache-Control", "max-age=60"), ("Connection", "X-Hop-C"), ("X-Hop-C", "1")], "over h2", chunked=True
        ),
    )
    with httpx.Client(base_url=gw.url, timeout=10.0, http1=False, http2=True) as h2:
        got = [h2.get(path) for _ in range(2)]
    for r in got:
        assert r.http_version == "HTTP/2" and r.status_code == 200 and r.content == b"over h2", show(r)
        assert not {"transfer-encoding", "connection", "x-hop-c", "keep-alive"} & set(r.headers), show(r)
    assert origin.count(path) == 1, saw(origin, path)


@both_engines
def test_rfc9110_8_6_a_stored_204_has_no_content_length(client, origin, path):
    """RFC 9110 section 8.6 [MUST NOT send Content-Length in a 204] and 15.3.5: a 204 with max-age
    served from the cache has no content and no Content-Length."""
    origin.script(path, Reply(204, cc("max-age=60")))
    for r in (client.get(path), client.get(path)):
        assert r.status_code == 204 and r.content == b"" and "content-length" not in r.headers, show(r)
    assert origin.count(path) == 1, saw(origin, path)


def raw_fields(r: httpx.Response) -> dict[bytes, list[bytes]]:
    """The response's field lines as received: {lower-case name: [values]}."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in r.headers.raw:
        out.setdefault(name.lower(), []).append(value)
    return out


@granian
def test_3_1_repeated_fields_are_stored_as_received(client, origin, path):
    """Section 3.1 [MUST include all received header fields when storing]: a field in two lines
    comes back on a hit with both values; two Set-Cookie lines (which cannot be combined, RFC 9110
    section 5.3) too, when a response with Set-Cookie is stored at all (a cache may decline to)."""
    plain, cookies = f"{path}/plain", f"{path}/set-cookie"
    fields = [("Cache-Control", "max-age=60"), ("X-Multi", "one"), ("X-Multi", "two")]
    origin.script(plain, Reply(200, fields))
    origin.script(cookies, Reply(200, [*fields, ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/")]))
    for p in (plain, cookies):
        for r in (client.get(p), client.get(p)):
            raw = raw_fields(r)
            assert b",".join(raw.get(b"x-multi", [])).replace(b" ", b"") == b"one,two", show(r)
            if p == cookies:
                assert raw.get(b"set-cookie") == [b"a=1; Path=/", b"b=2; Path=/"], show(r)
    assert origin.count(plain) == 1, saw(origin, plain)


@granian
def test_3_1_an_obs_text_field_value_is_passed_on_and_stored(client, origin, path):
    """Section 3.1 [MUST include all received header fields] and RFC 9110 section 5.5 (a field value
    may hold obs-text octets, which a recipient treats as opaque data): a value with the octet 0xE9 is
    passed on and comes back on a hit."""
    origin.script(path, Reply(200, [("Cache-Control", "max-age=60"), ("X-Latin", "caf\xe9")]))
    for r in (client.get(path), client.get(path)):
        assert r.status_code == 200 and raw_fields(r).get(b"x-latin") == [b"caf\xe9"], show(r)
    assert origin.count(path) == 1, saw(origin, path)


@granian
def test_5_2_2_6_no_transform_content_is_served_as_stored(client, origin, path):
    """Section 5.2.2.6 [MUST NOT transform the content] and 3: a gzip-coded response is stored and
    served with its coding and its bytes."""
    coded = gzip.compress(b"the original content " * 50)
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60, no-transform", "Content-Encoding": "gzip"}, coded))
    miss, hit = client.get(path), client.get(path)
    assert origin.count(path) == 1, saw(origin, path)
    for r in (miss, hit):
        assert r.headers.get("content-encoding") == "gzip" and r.content == b"the original content " * 50, show(r)


@granian
def test_3_a_304_to_a_client_conditional_is_not_stored_as_the_response(client, origin, path):
    """Section 4.3.2 [MUST NOT evaluate preconditions when nothing is stored] and section 3: a
    client's If-None-Match on an empty cache reaches the origin; its 304 is passed on, and the next
    unconditional request gets the full 200."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"c1"'}, "full body"))
    a = client.get(path, headers={"If-None-Match": '"c1"'})
    assert a.status_code == 304 and a.content == b"", show(a)
    b = client.get(path)
    assert b.status_code == 200 and b.content == b"full body", show(b) + " / " + saw(origin, path)


@granian
@pytest.mark.parametrize(
    "fields",
    [
        [("Cache-Control", "max-age=60"), ("Cache-Control", "private")],
        [("Cache-Control", "s-maxage=60, private")],
        [("Cache-Control", "public, max-age=60, no-store")],
        [("Cache-Control", "max-age=60"), ("Cache-Control", "no-store")],
        [("Cache-Control", "max-age=60, PRIVATE")],
        [("Cache-Control", "max-age=60, No-Store")],
    ],
    ids=[
        "private-in-a-second-line",
        "private-with-s-maxage",
        "no-store-with-public",
        "no-store-in-a-second-line",
        "private-upper-case",
        "no-store-mixed-case",
    ],
)
def test_3_the_most_restrictive_directive_wins(client, origin, path, fields):
    """Section 3 [MUST NOT store] with section 4.2.1 ("the most restrictive directive should be
    honored") and RFC 9110 section 5.3 (field lines combine)."""
    b = again(client, origin, path, Reply(200, fields))
    forwarded(origin, path, b)


@granian
def test_3_must_understand_with_an_unknown_status_is_not_stored(client, origin, path):
    """Section 3 [MUST NOT store unless the cache understands the status code, when must-understand
    is present] and 5.2.2.3: an unknown status 299 with must-understand and max-age."""
    b = again(client, origin, path, Reply(299, cc("max-age=60, must-understand")))
    assert b.status_code == 299, show(b)
    forwarded(origin, path, b)


@granian
def test_3_3_an_incomplete_response_is_not_served(client, origin, path):
    """Section 3.3 and 3.4 [MUST NOT use an incomplete response to answer a request for the whole]:
    the origin's connection closes halfway through the content; the next request gets the whole."""
    origin.script(
        path, Reply(200, cc("max-age=60"), b"x" * 1000, truncate=True), Reply(200, cc("max-age=60"), b"y" * 1000)
    )
    try:
        client.get(path)
    except httpx.HTTPError:
        pass
    b = client.get(path)
    assert b.status_code == 200 and b.content == b"y" * 1000, show(b) + " / " + saw(origin, path)
    assert origin.count(path) == 2, saw(origin, path)


@granian
def test_3_4_a_206_is_not_served_as_the_whole(client, origin, path):
    """Sections 3.3, 3.4 and 4 [MUST NOT send a partial response without marking it 206, nor use it
    for a request of the whole]: a 206 to a Range request, then a plain GET."""
    origin.script(
        path,
        Reply(
            206,
            {"Cache-Control": "max-age=60", "Content-Range": "bytes 0-4/10", "ETag": '"r1"'},
            "01234",
            validate=False,
        ),
        Reply(200, {"Cache-Control": "max-age=60", "ETag": '"r1"'}, "0123456789", validate=False),
    )
    a = client.get(path, headers={"Range": "bytes=0-4"})
    assert a.status_code == 206 and a.content == b"01234", show(a)
    b = client.get(path)
    assert b.status_code == 200 and b.content == b"0123456789", show(b) + " / " + saw(origin, path)


@granian
def test_3_large_responses_stored_whole_and_over_max_object_passed_on(client, origin, path):
    """Section 3 (a cache MAY decline to store) and the cache's max_object (8 MiB): 1 MiB is stored
    and served whole; 9 MiB is passed on whole and not stored."""
    small, large = f"{path}/1mib", f"{path}/9mib"
    one, nine = bytes(range(256)) * 4096, b"z" * (9 * 1024 * 1024)
    origin.script(small, Reply(200, cc("max-age=60"), one))
    origin.script(large, Reply(200, cc("max-age=60"), nine))
    for p, content, sent in ((small, one, 1), (large, nine, 2)):
        for _ in range(2):
            r = client.get(p)
            assert r.status_code == 200 and r.content == content, (p, r.status_code, len(r.content))
        assert origin.count(p) == sent, saw(origin, p)


# --- RFC 9111 section 3.5: Authorization ------------------------------------------------------


@granian
def test_3_5_response_to_authorized_request_is_not_reused(client, origin, path):
    """Section 3.5 [MUST NOT]: a shared cache does not reuse a response to a request with
    Authorization (max-age only) for any later request, with or without Authorization."""
    origin.script(path, Reply(200, cc("max-age=60")))
    client.get(path, headers={"Authorization": "Bearer alice"})
    b = client.get(path, headers={"Authorization": "Bearer alice"})
    c = client.get(path)
    assert origin.count(path) == 3, saw(origin, path) + " / " + show(b) + " / " + show(c)
    assert c.content == body_for(path, 3), show(c)


@granian
@pytest.mark.parametrize("directives", ["public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"])
def test_3_5_authorized_response_reused_when_explicitly_allowed(client, origin, path, directives):
    """Section 3.5 [MAY]: public, s-maxage or must-revalidate allow a shared cache to reuse a
    response to a request with Authorization."""
    origin.script(path, Reply(200, cc(directives)))
    client.get(path, headers={"Authorization": "Bearer alice"})
    b = client.get(path, headers={"Authorization": "Bearer alice"})
    assert b.status_code == 200 and b.content == body_for(path, 1), show(b)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(b)


# --- RFC 9111 section 4: constructing responses from caches -----------------------------------


@both_engines
def test_4_post_is_written_through_and_never_served_from_cache(client, origin, path):
    """Section 4 [MUST write through unsafe methods]: POST goes to the origin every time, and a
    GET is not answered with a POST's response."""
    origin.script(path, Reply(200, cc("max-age=60")))
    client.post(path, content=b"one")
    b = client.post(path, content=b"two")
    c = client.get(path)
    assert origin.count(path, "POST") == 2, saw(origin, path) + " / " + show(b)
    assert [s.body for s in origin.seen(path, "POST")] == [b"one", b"two"]
    assert origin.count(path, "GET") == 1 and c.content == body_for(path, 3), saw(origin, path) + " / " + show(c)
    status = ours(b)
    assert status is None or "hit" not in status, show(b)


@both_engines
def test_4_cache_key_includes_the_query(client, origin, path):
    """Section 4 [MUST: the target URI matches], query included."""
    p1, p2 = f"{path}?a=1", f"{path}?a=2"
    origin.script(p1, Reply(200, cc("max-age=60")))
    origin.script(p2, Reply(200, cc("max-age=60")))
    r1, r2, r1b = client.get(p1), client.get(p2), client.get(p1)
    assert r1.content == body_for(p1, 1) and r2.content == body_for(p2, 1), show(r1) + " / " + show(r2)
    assert r1b.content == body_for(p1, 1), show(r1b)
    assert origin.count(p1) == 1 and origin.count(p2) == 1, saw(origin, p1) + saw(origin, p2)


@granian
def test_4_cache_key_keeps_the_query_as_sent(client, origin, path):
    """Section 4 [MUST: the target URI matches]: reordered parameters make another URI (RFC 3986
    section 6.2.3 and RFC 9110 section 4.2.3 license no such normalisation for http)."""
    targets = [f"{path}?a=1&b=2", f"{path}?b=2&a=1", f"{path}?a=1", path]
    for t in targets:
        origin.script(t, Reply(200, cc("max-age=60")))
    got = [client.get(t) for t in targets]
    for t, r in zip(targets, got):
        assert r.content == body_for(t, 1) and origin.count(t) == 1, f"{t}: {show(r)} / {saw(origin, t)}"


@both_engines
def test_4_head_is_answered_from_a_stored_get(client, origin, path):
    """Section 4 (a stored GET response satisfies HEAD) and RFC 9110 section 9.3.2: HEAD gets the
    header section of the stored GET response, without content, and nothing goes upstream."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"h1"', "X-Tag": "t"}, "0123456789"))
    client.get(path)
    h = client.head(path)
    assert h.status_code == 200 and h.content == b"", show(h)
    assert h.headers.get("etag") == '"h1"' and h.headers.get("x-tag") == "t", show(h)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(h)
    assert h.headers.get("content-length") in (None, "10"), f"RFC 9110 8.6 [MUST NOT unless GET's length]: {show(h)}"
    assert age(h) is not None, f"section 4 [MUST generate Age]: {show(h)}"


@granian
def test_4_a_get_collapsed_onto_a_head_gets_content(gw, origin, path):
    """Sections 3 and 4: a GET arriving while a HEAD for the same URI is in flight is not answered
    with the HEAD's (empty) response."""
    origin.script(path, Reply(200, cc("max-age=60"), "the content", delay=0.5))
    with ThreadPoolExecutor(max_workers=2) as pool, httpx.Client(base_url=gw.url, timeout=10.0) as c1:
        head = pool.submit(c1.head, path)
        assert origin.wait_for(path, 1, timeout=5.0), saw(origin, path)
        with httpx.Client(base_url=gw.url, timeout=10.0) as c2:
            g = c2.get(path)
        h = head.result(timeout=10)
    assert h.status_code == 200 and h.content == b"", show(h)
    assert g.status_code == 200 and g.content == b"the content", show(g) + " / " + saw(origin, path)


@granian
def test_4_a_head_response_is_not_served_to_a_get(client, origin, path):
    """Sections 3 and 4: a response to HEAD has no content, so a later GET is not answered with it."""
    origin.script(path, Reply(200, cc("max-age=60"), "the content"))
    h = client.head(path)
    g = client.get(path)
    assert h.status_code == 200 and h.content == b"", show(h)
    assert g.status_code == 200 and g.content == b"the content", show(g) + " / " + saw(origin, path)
    assert origin.count(path, "GET") == 1, saw(origin, path)


@granian
def test_4_collapsed_misses_send_one_request(client, gw, origin, path):
    """Section 4 [MAY collapse requests; gatewayd's issue: concurrent misses send one request]:
    10 concurrent GETs of a missing key, the origin slow to answer."""
    origin.script(path, Reply(200, cc("max-age=60"), delay=1.0))

    got = [r for r, _ in at_once(gw, path, 10)]
    assert all(r.status_code == 200 and r.content == body_for(path, 1) for r in got), [show(r) for r in got]
    assert origin.count(path) == 1, saw(origin, path)


@granian
def test_3_5_collapsed_requests_do_not_share_an_authorized_response(client, gw, origin, path):
    """Section 3.5 [MUST NOT use a response to a request with Authorization for other requests] and
    4, also when requests are collapsed: requests without Authorization arriving while one with
    it is in flight get their own response."""
    origin.script(path, Reply(200, cc("max-age=60"), lambda seen: f"auth={seen.header('authorization')}", delay=0.6))
    got = at_once(gw, path, 4, headers=lambda i: {"Authorization": "Bearer alice"} if i == 0 else None)
    assert got[0][0].content == b"auth=Bearer alice", show(got[0][0])
    for r, _ in got[1:]:
        assert r.content == b"auth=None", show(r) + " / " + saw(origin, path)


@granian
def test_4_3_2_a_request_collapsed_onto_a_client_conditional_gets_the_whole(gw, origin, path):
    """Sections 4 and 4.3.2: a client's conditional request on an empty cache goes upstream as it
    is, and its 304 says nothing to an unconditional request waiting on it, which gets a 200 with
    the content."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"x"'}, "whole body", delay=0.5))
    with ThreadPoolExecutor(max_workers=1) as pool, httpx.Client(base_url=gw.url, timeout=10.0) as c1:
        conditional = pool.submit(c1.get, path, headers={"If-None-Match": '"x"'})
        assert origin.wait_for(path, 1, timeout=5.0), saw(origin, path)
        with httpx.Client(base_url=gw.url, timeout=10.0) as c2:
            whole = c2.get(path)
        first = conditional.result(timeout=10)
    assert first.status_code in (200, 304), show(first)
    assert whole.status_code == 200 and whole.content == b"whole body", show(whole) + " / " + saw(origin, path)


@granian
def test_4_cache_key_includes_the_authority_and_a_case_sensitive_path(client, origin, path):
    """Section 4 [MUST: the target URI matches]: another Host is another URI, and paths are
    case-sensitive (RFC 3986 section 6.2.2.1)."""
    origin.script(path, Reply(200, cc("max-age=60")))
    a = client.get(path, headers={"Host": "a.example"})
    b = client.get(path, headers={"Host": "b.example"})
    assert a.content == body_for(path, 1) and b.content == body_for(path, 2), show(a) + " / " + show(b)
    upper = path.replace("test_4", "TEST_4", 1)
    origin.script(upper, Reply(200, cc("max-age=60")))
    c = client.get(upper)
    assert c.content == body_for(upper, 1) and origin.count(upper) == 1, show(c)


@granian
def test_rfc9110_9_3_7_options_is_not_cached(client, origin, path):
    """RFC 9110 section 9.3.7: responses to OPTIONS are not cacheable."""
    origin.script(path, Reply(200, cc("max-age=60")))
    client.options(path)
    b = client.options(path)
    forwarded(origin, path, b)


@granian
@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, cc("private, max-age=60"), delay=0.3),
        Reply(200, cc("no-store"), delay=0.3),
        Reply(500, {}, delay=0.3),
    ],
    ids=["private", "no-store", "500-without-freshness"],
)
def test_4_collapsed_requests_forwarded_when_the_response_cannot_be_reused(client, gw, origin, path, reply):
    """Section 4 [MUST]: "if the cache cannot use the returned response for some or all of the
    collapsed requests, it will need to forward the requests": a response that cannot be reused is
    never given to the other waiting requests; each is forwarded and gets its own response."""
    origin.script(path, reply)
    got = [r for r, _ in at_once(gw, path, 4)]
    assert origin.count(path) == 4, saw(origin, path)
    assert len({r.content for r in got}) == 4, [show(r) for r in got]


@granian
def test_4_collapsed_requests_survive_the_first_client_leaving(gw, origin, path):
    """Section 4 (collapsed requests; gatewayd's issue: waiters get the same response): the client
    whose request went upstream gives up before the origin answers; the requests collapsed onto it
    still get the response."""
    origin.script(path, Reply(200, cc("max-age=60"), "the body", delay=1.0))

    def impatient() -> None:
        with httpx.Client(base_url=gw.url, timeout=0.3) as c:
            try:
                c.get(path)
            except httpx.TimeoutException:
                pass

    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(impatient)
        assert origin.wait_for(path, 1, timeout=5.0), saw(origin, path)
        got = at_once(gw, path, 3)
        first.result(timeout=10)
    assert all(r.status_code == 200 and r.content == b"the body" for r, _ in got), [show(r) for r, _ in got]


# --- RFC 9111 section 4.1: Vary ---------------------------------------------------------------


def lang_body(seen) -> str:
    return f"lang={seen.header('x-lang')}"


@both_engines
def test_4_1_vary_matching_request_is_a_hit(client, origin, path):
    """Section 4.1 [MAY reuse when the nominated fields match]."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body))
    client.get(path, headers={"X-Lang": "en"})
    b = client.get(path, headers={"X-Lang": "en"})
    assert b.content == b"lang=en", show(b)
    assert origin.count(path) == 1, saw(origin, path) + " / " + show(b)


@both_engines
def test_4_1_vary_mismatch_is_forwarded(client, origin, path):
    """Section 4.1 [MUST NOT reuse unless the nominated fields match]: another value, and a field
    absent in one request and present in the other."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body))
    a = client.get(path, headers={"X-Lang": "en"})
    b = client.get(path, headers={"X-Lang": "fr"})
    c = client.get(path)
    assert a.content == b"lang=en" and b.content == b"lang=fr", show(b)
    assert c.content == b"lang=None", show(c)
    assert origin.count(path) == 3, saw(origin, path)


@granian
def test_4_1_vary_absent_field_then_present(client, origin, path):
    """Section 4.1 [MUST]: a field absent from the first request only matches a request where it is
    also absent."""
    b = again(
        client,
        origin,
        path,
        Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body),
        headers={"X-Lang": "de"},
    )
    assert b.content == b"lang=de", show(b)
    assert origin.count(path) == 2, saw(origin, path)


@granian
def test_4_1_vary_empty_value_is_not_absence(client, origin, path):
    """Section 4.1 [MUST]: a field absent from the first request matches only where it is absent;
    sent with an empty value, it is present."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body))
    client.get(path)
    b = client.get(path, headers={"X-Lang": ""})
    assert b.content == b"lang=" and origin.count(path) == 2, show(b) + " / " + saw(origin, path)


@granian
@pytest.mark.parametrize("vary", ["*", "X-Lang, *"])
def test_4_1_vary_star_never_matches(client, origin, path, vary):
    """Section 4.1 [MUST]: a stored response with Vary: * (alone or in a list) always fails to match."""
    b = again(client, origin, path, Reply(200, {"Cache-Control": "max-age=60", "Vary": vary}))
    assert b.content == body_for(path, 2), show(b)
    assert origin.count(path) == 2, saw(origin, path)


@granian
def test_4_1_vary_on_several_fields(client, origin, path):
    """Section 4.1 [MUST]: all nominated fields must match (two Vary field lines, lower-case names
    in one, empty list elements in the other, which RFC 9110 section 5.6.1 says to ignore);
    normalisation of values is not required, so values are sent identically."""
    origin.script(path, Reply(200, [("Cache-Control", "max-age=60"), ("Vary", " , X-A,,"), ("Vary", "x-b")]))
    client.get(path, headers={"X-A": "1", "X-B": "1"})
    same = client.get(path, headers={"X-A": "1", "X-B": "1"})
    assert same.content == body_for(path, 1) and origin.count(path) == 1, saw(origin, path) + " / " + show(same)
    other = client.get(path, headers={"X-A": "1", "X-B": "2"})
    assert other.content == body_for(path, 2) and origin.count(path) == 2, saw(origin, path) + " / " + show(other)


@granian
def test_4_1_concurrent_requests_are_not_collapsed_across_vary(client, gw, origin, path):
    """Section 4 and 4.1 [MUST NOT reuse across a Vary mismatch], also for collapsed requests."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body, delay=0.5))

    got = at_once(gw, path, 6, headers=lambda i: {"X-Lang": ["en", "fr"][i % 2]})
    for i, (r, _) in enumerate(got):
        assert r.content == f"lang={['en', 'fr'][i % 2]}".encode(), (i, show(r))
    assert 2 <= origin.count(path) <= 6, saw(origin, path)


# --- RFC 9111 section 4.2: freshness ----------------------------------------------------------


@after_expiry("granian")
def test_4_2_max_age_fresh_then_stale(client, origin, path):
    """Section 4.2 and 5.2.2.1 [MUST NOT reuse stale without validation]: fresh while age is below
    max-age, then forwarded."""
    # a Date up to 1 s ahead: apparent_age is 0, so the response is fresh for a whole second
    origin.script(path, Reply(200, cc("max-age=1"), date=time.time() + 0.999))
    client.get(path)
    fresh = client.get(path)
    assert fresh.content == body_for(path, 1) and origin.count(path) == 1, saw(origin, path) + " / " + show(fresh)
    yield  # the stored responses expire
    stale = client.get(path)
    assert stale.content == body_for(path, 2), show(stale)
    assert origin.count(path) == 2, saw(origin, path)


@after_expiry("granian")
def test_4_2_1_s_maxage_wins_over_max_age_for_a_shared_cache(client, origin, path):
    """Section 4.2.1 and 5.2.2.10 [MUST]: a shared cache takes s-maxage before max-age, whether
    shorter or longer."""
    shorter, longer = f"{path}/shorter", f"{path}/longer"
    origin.script(shorter, Reply(200, cc("max-age=60, s-maxage=1")))
    origin.script(longer, Reply(200, cc("max-age=1, s-maxage=600")))
    client.get(shorter), client.get(longer)
    yield  # the stored responses expire
    a, b = client.get(shorter), client.get(longer)
    checks = Checks()
    checks.check(origin.count(shorter) == 2, f"s-maxage=1 beats max-age=60: {saw(origin, shorter)} / {show(a)}")
    checks.check(
        origin.count(longer) == 1 and b.content == body_for(longer, 1),
        f"s-maxage=600 beats max-age=1: {saw(origin, longer)} / {show(b)}",
    )
    checks.done()


@granian
def test_5_2_2_1_max_age_zero_is_stale_at_once(client, origin, path):
    """Section 5.2.2.1 [MUST NOT reuse stale]: max-age=0 (and s-maxage=0 over max-age=60); a
    Last-Modified does not make it heuristically fresh (4.2.2 [MUST NOT use heuristics when an
    explicit expiration time is present])."""
    zero, s_zero = f"{path}/zero", f"{path}/s-zero"
    old = http_date(time.time() - 10 * DAY)
    origin.script(zero, Reply(200, {"Cache-Control": "max-age=0", "Last-Modified": old}, validate=False))
    origin.script(s_zero, Reply(200, {"Cache-Control": "max-age=60, s-maxage=0", "Last-Modified": old}, validate=False))
    for p in (zero, s_zero):
        client.get(p)
        b = client.get(p)
        assert origin.count(p) == 2 and b.content == body_for(p, 2), saw(origin, p) + " / " + show(b)


@granian
def test_5_3_expires_in_the_future_is_fresh(client, origin, path):
    """Section 4.2.1 and 5.3: without max-age, the lifetime is Expires minus Date."""
    now = time.time()
    b = again(client, origin, path, Reply(200, {"Expires": http_date(now + 60), "Date": http_date(now)}))
    reused(origin, path, b)


@granian
@pytest.mark.parametrize("expires", ["past", "0", "not a date", "-1"])
def test_5_3_expired_or_invalid_expires_is_stale(client, origin, path, expires):
    """Section 5.3 [MUST]: "A cache recipient MUST interpret invalid date formats, especially the
    value 0, as representing a time in the past"; an Expires in the past is stale. With a
    Last-Modified ten days old: an explicit expiration time is present, so no heuristic (4.2.2)."""
    value = http_date(time.time() - 60) if expires == "past" else expires
    last_modified = http_date(time.time() - 10 * DAY)
    b = again(client, origin, path, Reply(200, {"Expires": value, "Last-Modified": last_modified}, validate=False))
    forwarded(origin, path, b)


def rfc850_date(when: float) -> str:
    return time.strftime("%A, %d-%b-%y %H:%M:%S GMT", time.gmtime(when))


def asctime_date(when: float) -> str:
    return time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(when))


@granian
@pytest.mark.parametrize("form", [rfc850_date, asctime_date], ids=["rfc850", "asctime"])
def test_rfc9110_5_6_7_obsolete_date_forms_are_accepted(client, origin, path, form):
    """RFC 9110 section 5.6.7 [MUST accept all three HTTP-date formats]: an Expires 60 s ahead in an
    obsolete form is fresh; an If-Modified-Since in it, equal to Last-Modified, gets a 304."""
    now = time.time()
    modified = now - 3600
    origin.script(path, Reply(200, {"Expires": form(now + 60), "Last-Modified": http_date(modified)}))
    client.get(path)
    b = client.get(path)
    reused(origin, path, b)
    r = client.get(path, headers={"If-Modified-Since": form(modified)})
    assert r.status_code == 304 and origin.count(path) == 1, show(r) + " / " + saw(origin, path)


@granian
@pytest.mark.parametrize("directive", ["max-age=60", "s-maxage=60"])
def test_5_3_max_age_wins_over_expires(client, origin, path, directive):
    """Section 5.3 [MUST]: with max-age (or s-maxage, for a shared cache) present, a recipient MUST
    ignore Expires."""
    b = again(client, origin, path, Reply(200, {"Cache-Control": directive, "Expires": http_date(time.time() - 60)}))
    reused(origin, path, b)


@after_expiry("granian")
def test_4_2_1_expires_lifetime_is_relative_to_date(client, origin, path):
    """Section 4.2.1 [MUST: lifetime = Expires - Date] and 4.2.3: an origin whose clock is 100 s
    ahead sends Date = its now and Expires = Date + 1: a 1 s lifetime, though Expires is 101 s
    ahead of the cache's clock."""
    ahead = time.time() + 100
    origin.script(path, Reply(200, {"Date": http_date(ahead), "Expires": http_date(ahead + 1)}))
    client.get(path)
    yield  # the stored responses expire
    b = client.get(path)
    forwarded(origin, path, b)


@granian
def test_4_2_3_upstream_age_counts_toward_current_age(client, origin, path):
    """Section 4.2.3 [MUST]: corrected_age_value includes the received Age; section 4 [MUST]: the
    Age sent on a hit is the current age (one Age field, the origin's replaced)."""
    young, old = f"{path}/young", f"{path}/old"
    origin.script(young, Reply(200, {"Cache-Control": "max-age=60", "Age": "30"}))
    origin.script(old, Reply(200, {"Cache-Control": "max-age=60", "Age": "70"}))
    client.get(young)
    hit = client.get(young)
    assert origin.count(young) == 1, saw(origin, young) + " / " + show(hit)
    assert ages(hit) and len(ages(hit)) == 1 and age(hit) is not None and 30 <= age(hit) <= 33, show(hit)
    client.get(old)
    b = client.get(old)
    assert origin.count(old) == 2, f"Age 70 > max-age 60 is stale: {saw(origin, old)} / {show(b)}"


@granian
def test_5_1_age_given_as_a_list_or_invalid(client, origin, path):
    """Section 5.1 [SHOULD]: an Age given as a list counts its first member; an invalid Age is
    ignored (and a hit still carries a valid Age of its own)."""
    listed, invalid = f"{path}/listed", f"{path}/invalid"
    origin.script(listed, Reply(200, {"Cache-Control": "max-age=60", "Age": "30, 10"}))
    origin.script(invalid, Reply(200, {"Cache-Control": "max-age=60", "Age": "abc"}))
    client.get(listed), client.get(invalid)
    a, b = client.get(listed), client.get(invalid)
    checks = Checks()
    checks.check(age(a) is not None and 30 <= age(a) <= 33 and origin.count(listed) == 1, f"Age 30, 10: {show(a)}")
    checks.check(age(b) is not None and age(b) <= 3 and origin.count(invalid) == 1, f"Age abc: {show(b)}")
    checks.done()


@granian
def test_4_2_3_apparent_age_from_date_counts(client, origin, path):
    """Section 4.2.3 [MUST]: apparent_age = response_time - Date."""
    young, old = f"{path}/young", f"{path}/old"
    now = time.time()
    origin.script(young, Reply(200, cc("max-age=60"), date=now - 30))
    origin.script(old, Reply(200, cc("max-age=60"), date=now - 90))
    client.get(young)
    hit = client.get(young)
    assert origin.count(young) == 1, saw(origin, young) + " / " + show(hit)
    assert age(hit) is not None and 30 <= age(hit) <= 33, show(hit)
    client.get(old)
    b = client.get(old)
    assert origin.count(old) == 2, f"Date 90 s old > max-age 60 is stale: {saw(origin, old)} / {show(b)}"


@after_expiry("granian")
def test_4_2_3_date_in_the_future_does_not_extend_freshness(client, origin, path):
    """Section 4.2.3 [MUST]: apparent_age = max(0, response_time - Date), and the age then grows with
    resident time: an origin clock 60 s ahead does not make max-age=1 last 61 s."""
    origin.script(path, Reply(200, cc("max-age=1"), date=time.time() + 60))
    client.get(path)
    yield  # the stored responses expire
    b = client.get(path)
    forwarded(origin, path, b)


@after_expiry("granian")
def test_4_2_3_age_grows_on_hits(client, origin, path):
    """Section 4 and 5.1 [MUST]: a hit carries Age = current_age, which grows with resident time."""
    origin.script(path, Reply(200, cc("max-age=600")))
    client.get(path)
    first = client.get(path)
    yield  # the stored responses age
    second = client.get(path)
    assert origin.count(path) == 1, saw(origin, path)
    assert age(first) is not None and age(second) is not None, show(first) + " / " + show(second)
    assert age(second) >= age(first) + 1, f"{show(first)} then, at least 1.1 s later, {show(second)}"


@granian
def test_rfc9110_6_6_1_date_added_when_the_origin_sends_none(client, origin, path):
    """RFC 9110 section 6.6.1 [MUST]: a recipient with a clock appends a Date to a response without
    one that it caches or forwards."""
    origin.script(path, Reply(200, cc("max-age=60"), date=False))
    a = client.get(path)
    b = client.get(path)
    assert a.headers.get("date") and b.headers.get("date"), show(a) + " / " + show(b)


@granian
@pytest.mark.parametrize(
    "value",
    [
        "MAX-AGE=60",
        'max-age="60"',
        "public,max-age=60,  x-ext=1",
        'max-age=60, x-ext="a, no-store, private"',
        ", max-age=60,,  ,",
        "max-age=0060",
    ],
)
def test_5_2_cache_control_parsing(client, origin, path, value):
    """Section 5.2 [directives are case-insensitive; recipients ought to accept the quoted form;
    unknown extensions are ignored, section 5.2.3, including a quoted value holding commas and
    directive names (RFC 9110 section 5.6.4); empty list elements are ignored, RFC 9110 5.6.1]."""
    b = again(client, origin, path, Reply(200, cc(value)))
    reused(origin, path, b)


@granian
def test_5_2_cache_control_in_several_field_lines(client, origin, path):
    """Section 5.2 and RFC 9110 section 5.3: field lines combine (public + max-age=60)."""
    b = again(client, origin, path, Reply(200, [("Cache-Control", "public"), ("Cache-Control", "max-age=60")]))
    reused(origin, path, b)


@granian
@pytest.mark.parametrize(
    "fields",
    [
        [("Cache-Control", "max-age=abc")],
        [("Cache-Control", "max-age=-1")],
        [("Cache-Control", "max-age=6O")],
        [("Cache-Control", "max-age=0, max-age=60")],
        [("Cache-Control", "max-age=60, s-maxage=abc")],
        [("Expires", "0"), ("Expires", "Thu, 01 Jan 2099 00:00:00 GMT")],
    ],
    ids=[
        "not-a-number",
        "negative",
        "letter-O",
        "first-of-two-max-age-is-0",
        "s-maxage-not-a-number",
        "first-of-two-expires-is-invalid",
    ],
)
def test_4_2_1_invalid_or_repeated_freshness_is_stale(client, origin, path, fields):
    """Section 4.2.1 [SHOULD]: "caches are encouraged to consider responses that have invalid
    freshness information to be stale" (max-age not a delta-seconds, section 1.2.2), and with a
    directive or Expires given twice "either the first occurrence should be used or the response
    should be considered stale": here both ways it is stale."""
    b = again(client, origin, path, Reply(200, fields))
    assert origin.count(path) == 2, saw(origin, path) + " / " + show(b)


@granian
def test_1_2_2_delta_seconds_beyond_the_largest_integer(client, origin, path):
    """Section 1.2.2 [MUST consider a delta-seconds it cannot represent as 2^31 or the greatest
    integer it can represent]: max-age of 20 digits is fresh; an Age of 20 digits is stale."""
    huge = "9" * 20
    fresh, old = f"{path}/max-age", f"{path}/age"
    origin.script(fresh, Reply(200, cc(f"max-age={huge}")))
    origin.script(old, Reply(200, {"Cache-Control": "max-age=60", "Age": huge}))
    client.get(fresh), client.get(old)
    a, b = client.get(fresh), client.get(old)
    checks = Checks()
    checks.check(
        a.status_code == 200 and a.content == body_for(fresh, 1) and origin.count(fresh) == 1,
        f"huge max-age: {saw(origin, fresh)} / {show(a)}",
    )
    checks.check(
        b.status_code == 200 and b.content == body_for(old, 2) and origin.count(old) == 2,
        f"huge Age: {saw(origin, old)} / {show(b)}",
    )
    checks.done()


@granian
def test_4_2_2_no_heuristic_freshness_from_a_future_last_modified(client, origin, path):
    """Section 4.2.2 and RFC 9110 section 8.8.2 (a Last-Modified later than Date counts as Date):
    the interval since modification is not positive, so no heuristic lifetime: the second request
    goes to the origin (a validation is fine)."""
    b = again(client, origin, path, Reply(200, {"Last-Modified": http_date(time.time() + DAY)}))
    assert b.status_code == 200 and origin.count(path) == 2, f"{saw(origin, path)} / {show(b)}"


# --- RFC 9111 section 4.2.4 and 5.2.2.2/5.2.2.8/5.2.2.10: stale responses prohibited ---------


@after_expiry(*ENGINES)
def test_5_2_2_2_must_revalidate_gives_504_when_the_origin_is_down(client, origin, path):
    """Section 5.2.2.2 [MUST generate an error, SHOULD be 504] and 5.2.2.8 (proxy-revalidate), 5.2.2.10
    (s-maxage implies proxy-revalidate): a stale entry the origin cannot revalidate (its
    connection drops) is not served."""
    cases = {
        "must-revalidate": "max-age=1, must-revalidate",
        "proxy-revalidate": "max-age=1, proxy-revalidate",
        "s-maxage": "s-maxage=1",
    }
    for name, value in cases.items():
        origin.script(f"{path}/{name}", Reply(200, cc(value), "stored body"), Reply(drop=True))
        client.get(f"{path}/{name}")
    yield  # the stored responses expire
    checks = Checks()
    for name in cases:
        p = f"{path}/{name}"
        r = client.get(p)
        checks.check(r.content != b"stored body", f"{name}: stale served: {show(r)}")
        checks.check(r.status_code == 504, f"{name}: 504 expected: {show(r)} / {saw(origin, p)}")
    checks.done()


@after_expiry("granian")
def test_4_2_4_no_stale_when_prohibited_and_validation_fails(client, origin, path):
    """Section 4.2.4 [MUST NOT generate a stale response when a no-cache or must-revalidate directive
    prohibits it] and 5.2.2.2 [MUST NOT reuse without successful validation]: must-revalidate with
    the origin answering 500 passes an error on; no-cache (fresh by max-age) with the origin down
    is not answered from the stored response either."""
    mr, nc = f"{path}/must-revalidate-500", f"{path}/no-cache-down"
    origin.script(mr, Reply(200, cc("max-age=1, must-revalidate"), "stored body"), Reply(500, cc("no-store"), "error"))
    origin.script(
        nc, Reply(200, {"Cache-Control": "no-cache, max-age=60", "ETag": '"nc"'}, "stored body"), Reply(drop=True)
    )
    client.get(mr), client.get(nc)
    yield  # the stored responses expire
    checks = Checks()
    for p in (mr, nc):
        r = client.get(p)
        checks.check(r.content != b"stored body" and r.status_code >= 500, f"{p}: {show(r)} / {saw(origin, p)}")
    checks.done()


@after_expiry("granian")
def test_5_2_2_2_must_revalidate_overrides_max_stale(client, origin, path):
    """Section 5.2.2.2 [MUST NOT use stale, even with a request's max-stale], and for a shared cache
    5.2.2.8 (proxy-revalidate) and 5.2.2.10 (s-maxage implies proxy-revalidate)."""
    cases = {
        "must-revalidate": "max-age=1, must-revalidate",
        "proxy-revalidate": "max-age=1, proxy-revalidate",
        "s-maxage": "s-maxage=1",
    }
    for name, value in cases.items():
        origin.script(f"{path}/{name}", Reply(200, cc(value)))
        client.get(f"{path}/{name}")
    yield  # the stored responses expire
    checks = Checks()
    for name in cases:
        p = f"{path}/{name}"
        b = client.get(p, headers=cc("max-stale=600"))
        checks.check(b.content == body_for(p, 2) and origin.count(p) == 2, f"{name}: {show(b)} / {saw(origin, p)}")
    checks.done()


@granian
def test_5_2_2_2_must_revalidate_fresh_is_reused(client, origin, path):
    """Section 5.2.2.2: must-revalidate only concerns stale responses; a fresh one is reused."""
    b = again(client, origin, path, Reply(200, cc("max-age=60, must-revalidate")))
    reused(origin, path, b)


# --- RFC 9111 section 5.2.2.4 and 5.2.1: no-cache, request directives -------------------------


@both_engines
def test_5_2_2_4_no_cache_response_is_validated_every_time(client, origin, path):
    """Section 5.2.2.4 [MUST NOT reuse without successful validation], even with max-age=60: each
    request reaches the origin; a stored copy is validated with its ETag [section 4.3.1 MUST]."""
    origin.script(path, Reply(200, {"Cache-Control": "no-cache, max-age=60", "ETag": '"n1"'}, "no-cache body"))
    for _ in range(3):
        r = client.get(path)
        assert r.status_code == 200 and r.content == b"no-cache body", show(r)
    assert origin.count(path) == 3, saw(origin, path)
    later = origin.seen(path)[1:]
    if any(s.conditional for s in later):
        assert all(s.header("if-none-match") == '"n1"' for s in later), saw(origin, path)


@granian
@pytest.mark.parametrize("value", ["no-cache", "NO-CACHE", 'x-ext="a, b", no-cache'])
def test_5_2_1_4_request_no_cache_is_forwarded(client, origin, path, value):
    """Section 5.2.1.4: a request's no-cache: not answered from the cache without validation
    (directive names are case-insensitive; a quoted extension value may hold commas)."""
    b = again(client, origin, path, Reply(200, cc("max-age=60")), headers=cc(value))
    forwarded(origin, path, b)


@after_expiry("granian")
def test_5_2_1_1_request_max_age_and_1_3_min_fresh(client, origin, path):
    """Section 5.2.1.1 (request max-age=0, the stored response aged 1 s: validated, with its ETag)
    and 5.2.1.3 (min-fresh=120 on a 60 s lifetime: forwarded)."""
    p_age, p_fresh = f"{path}/max-age", f"{path}/min-fresh"
    origin.script(p_age, Reply(200, {"Cache-Control": "max-age=600", "ETag": '"m1"'}, "m1 body"))
    origin.script(p_fresh, Reply(200, cc("max-age=60")))
    client.get(p_age), client.get(p_fresh)
    b = client.get(p_fresh, headers=cc("min-fresh=120"))
    checks = Checks()
    checks.check(
        origin.count(p_fresh) == 2 and b.content == body_for(p_fresh, 2),
        f"min-fresh=120: {saw(origin, p_fresh)} / {show(b)}",
    )
    yield  # the stored responses age
    a = client.get(p_age, headers=cc("max-age=0"))
    checks.check(origin.count(p_age) == 2, f"max-age=0: {saw(origin, p_age)} / {show(a)}")
    checks.check(a.status_code == 200 and a.content == b"m1 body", f"max-age=0: {show(a)}")
    if origin.count(p_age) == 2:
        checks.check(
            origin.seen(p_age)[1].header("if-none-match") == '"m1"', f"validated with the ETag: {saw(origin, p_age)}"
        )
    checks.done()


@granian
@pytest.mark.parametrize("value", ["max-age=30", "min-fresh=10", "max-stale=5"])
def test_5_2_1_request_directives_a_fresh_entry_satisfies(client, origin, path, value):
    """Section 5.2.1.1-5.2.1.3: a fresh entry aged about 0 s of 60 s satisfies request max-age=30,
    min-fresh=10 and max-stale=5, and is answered from the cache."""
    b = again(client, origin, path, Reply(200, cc("max-age=60")), headers=cc(value))
    reused(origin, path, b)


@after_expiry("granian")
def test_5_2_1_2_max_stale_accepts_a_stale_response(client, origin, path):
    """Section 5.2.1.2 and 4.2.4 [MAY: stale explicitly permitted by the client]: max-stale=60 and
    max-stale without a value; max-stale=0 accepts none [MUST NOT serve stale]."""
    valued, bare, zero = f"{path}/valued", f"{path}/bare", f"{path}/zero"
    for p in (valued, bare, zero):
        origin.script(p, Reply(200, cc("max-age=1")))
        client.get(p)
    yield  # the stored responses expire
    checks = Checks()
    for p, value in ((valued, "max-stale=600"), (bare, "max-stale")):
        r = client.get(p, headers=cc(value))
        checks.check(r.content == body_for(p, 1) and origin.count(p) == 1, f"{value}: {saw(origin, p)} / {show(r)}")
    r = client.get(zero, headers=cc("max-stale=0"))
    checks.check(
        r.content == body_for(zero, 2) and origin.count(zero) == 2,
        f"max-stale=0 accepts no staleness: {saw(origin, zero)} / {show(r)}",
    )
    checks.done()


@granian
def test_5_2_1_7_only_if_cached_with_a_vary_mismatch(client, origin, path):
    """Section 5.2.1.7 [SHOULD] with 4.1: only-if-cached, and the stored response varies on a field
    this request sends otherwise: nothing usable, so 504, and nothing goes upstream."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body))
    client.get(path, headers={"X-Lang": "en"})
    r = client.get(path, headers={"X-Lang": "fr", "Cache-Control": "only-if-cached"})
    assert r.status_code == 504 and origin.count(path) == 1, show(r) + " / " + saw(origin, path)


@after_expiry("granian")
def test_5_2_1_7_only_if_cached(client, origin, path):
    """Section 5.2.1.7 [SHOULD]: only-if-cached gets a stored response consistent with the request,
    or 504; nothing goes upstream."""
    empty, fresh, stale = f"{path}/empty", f"{path}/fresh", f"{path}/stale"
    origin.script(empty, Reply(200, cc("max-age=60")))
    origin.script(fresh, Reply(200, cc("max-age=600")))
    origin.script(stale, Reply(200, cc("max-age=1")))
    client.get(fresh), client.get(stale)
    checks = Checks()
    r = client.get(empty, headers=cc("only-if-cached"))
    checks.check(r.status_code == 504 and origin.count(empty) == 0, f"nothing stored: {show(r)} / {saw(origin, empty)}")
    r = client.get(fresh, headers=cc("only-if-cached"))
    checks.check(
        r.status_code == 200 and r.content == body_for(fresh, 1) and origin.count(fresh) == 1,
        f"fresh: {show(r)} / {saw(origin, fresh)}",
    )
    yield  # the stored responses expire
    r = client.get(stale, headers=cc("only-if-cached"))
    checks.check(r.status_code == 504 and origin.count(stale) == 1, f"stale: {show(r)} / {saw(origin, stale)}")
    r = client.get(stale, headers=cc("only-if-cached, max-stale=600"))
    checks.check(
        r.status_code == 200 and r.content == body_for(stale, 1) and origin.count(stale) == 1,
        f"stale, with max-stale (consistent with the request): {show(r)} / {saw(origin, stale)}",
    )
    checks.done()


# --- RFC 9111 section 4.3: validation ---------------------------------------------------------


@after_expiry(*ENGINES)
def test_4_3_stale_entry_validated_with_etag_and_freshened_by_304(client, origin, path):
    """Section 4.3.1 [MUST send If-None-Match with the stored ETag], 4.3.3 and 4.3.4 (a 304 freshens
    the stored response, which answers the request), 3.2 [MUST: header fields of the 304 replace
    the stored ones, the others and the stored content stay]."""
    origin.script(
        path,
        Reply(
            200,
            {"Cache-Control": "max-age=1", "ETag": '"v1"', "X-Version": "1", "X-Only-In-200": "kept"},
            "version one",
        ),
        Reply(
            200,
            {"Cache-Control": "max-age=60", "ETag": '"v1"', "X-Version": "2"},
            "not sent: the request is conditional",
        ),
    )
    client.get(path)
    yield  # the stored responses expire
    b = client.get(path)
    assert origin.count(path) == 2, saw(origin, path)
    assert origin.seen(path)[1].header("if-none-match") == '"v1"', saw(origin, path)
    assert b.status_code == 200 and b.content == b"version one", show(b) + " / " + saw(origin, path)
    assert b.headers.get("x-version") == "2" and b.headers.get("x-only-in-200") == "kept", show(b)
    c = client.get(path)
    assert origin.count(path) == 2, f"freshened by the 304 (max-age=60): {saw(origin, path)} / {show(c)}"
    assert c.content == b"version one" and c.headers.get("x-version") == "2", show(c)


@after_expiry("granian")
def test_4_3_1_stale_entry_validated_with_last_modified(client, origin, path):
    """Section 4.3.1 [SHOULD send If-Modified-Since with the stored Last-Modified, MUST send the
    stored entity tag, weak ones included]: 304 -> the stored content."""
    modified = http_date(time.time() - 3600)
    lm_only, weak_and_lm = f"{path}/lm", f"{path}/weak"
    origin.script(lm_only, Reply(200, {"Cache-Control": "max-age=1", "Last-Modified": modified}, "lm body"))
    origin.script(
        weak_and_lm, Reply(200, {"Cache-Control": "max-age=1", "Last-Modified": modified, "ETag": 'W/"w"'}, "lm body")
    )
    client.get(lm_only), client.get(weak_and_lm)
    yield  # the stored responses expire
    checks = Checks()
    for p in (lm_only, weak_and_lm):
        b = client.get(p)
        checks.check(b.status_code == 200 and b.content == b"lm body", f"{p}: {show(b)}")
        checks.check(
            origin.count(p) == 2 and origin.seen(p)[1].header("if-modified-since") == modified,
            f"If-Modified-Since with the stored Last-Modified: {saw(origin, p)}",
        )
    if origin.count(weak_and_lm) == 2:
        checks.check(
            origin.seen(weak_and_lm)[1].header("if-none-match") == 'W/"w"',
            f"If-None-Match with the weak tag as stored [MUST]: {saw(origin, weak_and_lm)}",
        )
    checks.done()


@after_expiry("granian")
def test_4_3_3_full_response_to_validation_replaces_the_entry(client, origin, path):
    """Section 4.3.3: a full response to the validation request is used and replaces the stored one;
    when it is no-store, nothing is left to reuse [section 3 MUST NOT store, 4.2.4 MUST NOT reuse
    stale] and the next request goes upstream."""
    cases = {"max-age=600": True, "no-store": False}
    for directives in cases:
        origin.script(
            f"{path}/{directives}",
            Reply(200, {"Cache-Control": "max-age=1", "ETag": '"old"'}, "old body"),
            Reply(200, {"Cache-Control": directives, "ETag": '"new"'}, "new body", validate=False),
            Reply(200, {"Cache-Control": directives, "ETag": '"new"'}, "third body", validate=False),
        )
        client.get(f"{path}/{directives}")
    yield  # the stored responses expire
    checks = Checks()
    for directives, stored in cases.items():
        p = f"{path}/{directives}"
        b, c = client.get(p), client.get(p)
        checks.check(
            b.content == b"new body" and c.content == (b"new body" if stored else b"third body"),
            f"{directives}: {show(b)} then {show(c)} / {saw(origin, p)}",
        )
        checks.check(origin.count(p) == (2 if stored else 3), f"{directives}: {saw(origin, p)}")
    checks.done()


@after_expiry("granian")
def test_3_2_excepted_fields_of_a_304_are_not_applied(client, origin, path):
    """Section 3.2 [MUST NOT update Content-Length, nor fields excepted from storage by section 3.1]:
    an origin's 304 with Content-Length: 0 and a Connection-named field freshens the entry, whose
    content and length stay, and the named field is not stored."""
    origin.script(
        path,
        Reply(200, {"Cache-Control": "max-age=1", "ETag": '"v1"'}, "version one"),
        Reply(
            304,
            [
                ("Cache-Control", "max-age=60"),
                ("ETag", '"v1"'),
                ("Content-Length", "0"),
                ("Connection", "X-Hop-B"),
                ("X-Hop-B", "1"),
            ],
            validate=False,
        ),
    )
    client.get(path)
    yield  # the stored responses expire
    for _ in range(2):
        b = client.get(path)
        assert b.status_code == 200 and b.content == b"version one", show(b) + " / " + saw(origin, path)
        assert "x-hop-b" not in b.headers, show(b)
    assert origin.count(path) == 2, saw(origin, path)


@granian
def test_5_1_age_restarts_after_validation(client, origin, path):
    """Section 5.1 (Age: the time since the response was generated or validated at the origin) and
    4.3.4: after a 304 two seconds into the entry's life, a hit's Age counts from the validation."""
    origin.script(
        path,
        Reply(200, {"Cache-Control": "max-age=1", "ETag": '"a1"'}),
        Reply(200, {"Cache-Control": "max-age=60", "ETag": '"a1"'}),
    )
    client.get(path)
    time.sleep(2.1)
    client.get(path)
    c = client.get(path)
    assert origin.count(path) == 2 and origin.seen(path)[1].conditional, saw(origin, path)
    assert age(c) is not None and age(c) <= 1, show(c)


@after_expiry("granian")
def test_4_3_2_client_conditional_on_a_stale_entry_is_validated(client, origin, path):
    """Section 4.3.2 and 4 [MUST NOT answer from a stale entry without validation]: a client's
    matching If-None-Match on a stale entry goes to the origin, whose 304 reaches the client."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=1", "ETag": '"a"'}, "a body"))
    client.get(path)
    yield  # the stored responses expire
    r = client.get(path, headers={"If-None-Match": '"a"'})
    assert origin.count(path) == 2 and '"a"' in (origin.seen(path)[1].header("if-none-match") or ""), saw(origin, path)
    assert r.status_code == 304 and r.content == b"", show(r)


@after_expiry("granian")
def test_4_3_2_validation_304_for_the_caches_tag_gives_the_client_a_200(client, origin, path):
    """Section 4.3.2 and 4.3.3: a client's If-None-Match naming another tag, on a stale entry the
    origin confirms (304 for the stored tag), gets the stored response as a 200, not a 304."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=1", "ETag": '"a"'}, "a body"))
    client.get(path)
    yield  # the stored responses expire
    r = client.get(path, headers={"If-None-Match": '"b"'})
    assert r.status_code == 200 and r.content == b"a body", show(r) + " / " + saw(origin, path)


@after_expiry("granian")
def test_4_3_5_head_on_a_stale_entry_never_leaves_an_empty_get(client, origin, path):
    """Section 4.3.5 and 3: a HEAD on a stale stored GET may be forwarded (and may freshen the
    entry), but a later GET still gets content: a HEAD response has none to store."""
    origin.script(
        path, Reply(200, cc("max-age=1"), "one", validate=False), Reply(200, cc("max-age=60"), "two!", validate=False)
    )
    client.get(path)
    yield  # the stored responses expire
    h = client.head(path)
    g = client.get(path)
    assert h.status_code == 200 and h.content == b"", show(h)
    assert g.status_code == 200 and g.content in (b"one", b"two!"), show(g) + " / " + saw(origin, path)
    if g.content == b"one":
        assert origin.seen(path)[-1].method == "HEAD", f"stale content served without validation: {saw(origin, path)}"


@after_expiry("granian")
def test_4_3_validation_of_one_variant_serves_that_variant(client, origin, path):
    """Sections 4.1, 4.3.1 and 4.3.4 [MUST NOT reuse across a Vary mismatch]: two stale variants
    (Vary: X-Lang, an entity tag each); validating one (304 naming its tag) serves that one, and
    the other variant's request gets its own."""
    origin.script(
        path,
        Reply(
            200,
            lambda seen: {"Cache-Control": "max-age=1", "Vary": "X-Lang", "ETag": f'"{seen.header("x-lang")}"'},
            lang_body,
        ),
    )
    client.get(path, headers={"X-Lang": "en"}), client.get(path, headers={"X-Lang": "fr"})
    yield  # the stored responses expire
    fr = client.get(path, headers={"X-Lang": "fr"})
    en = client.get(path, headers={"X-Lang": "en"})
    assert fr.content == b"lang=fr" and fr.headers.get("etag") == '"fr"', show(fr) + " / " + saw(origin, path)
    assert en.content == b"lang=en" and en.headers.get("etag") == '"en"', show(en) + " / " + saw(origin, path)


@after_expiry("granian")
def test_4_3_4_a_304_naming_another_strong_tag_updates_nothing(client, origin, path):
    """Section 4.3.4 [MUST NOT use the new response to update any stored response when none has its
    strong validator]: a stale entry tagged "a" validated by a 304 tagged "b" is not freshened, so
    it is served neither now nor later (a new full response, or an error, is)."""
    origin.script(
        path,
        Reply(200, {"Cache-Control": "max-age=1", "ETag": '"a"'}, "a body"),
        Reply(304, {"Cache-Control": "max-age=600", "ETag": '"b"'}, validate=False),
        Reply(200, {"Cache-Control": "max-age=600", "ETag": '"b"'}, "b body", validate=False),
    )
    client.get(path)
    yield  # the stored responses expire
    got = [client.get(path) for _ in range(2)]
    assert all(r.content != b"a body" for r in got), "\n".join([show(r) for r in got] + [saw(origin, path)])


@after_expiry("granian")
def test_3_2_a_304_that_makes_the_entry_private_or_no_store_stops_reuse(client, origin, path):
    """Sections 3.2 (the 304's Cache-Control replaces the stored one) and 3 [a shared cache MUST NOT
    store private or no-store responses]: once a validation's 304 says private (or no-store), the
    entry is not reused; the next request goes to the origin."""
    for directive in ("private", "no-store"):
        origin.script(
            f"{path}/{directive}",
            Reply(200, {"Cache-Control": "max-age=1", "ETag": '"p"'}, "p body"),
            Reply(200, {"Cache-Control": f"{directive}, max-age=600", "ETag": '"p"'}, "p body"),
        )
        client.get(f"{path}/{directive}")
    yield  # the stored responses expire
    checks = Checks()
    for directive in ("private", "no-store"):
        p = f"{path}/{directive}"
        a, b = client.get(p), client.get(p)
        checks.check(a.content == b"p body" and b.content == b"p body", f"{directive}: {show(a)} then {show(b)}")
        checks.check(origin.count(p) == 3, f"{directive}: not reused after the 304: {saw(origin, p)}")
    checks.done()


# --- RFC 9111 section 4.3.2, RFC 9110 sections 13.1, 13.2, 15.4.5: client conditionals ---------


@both_engines
def test_4_3_2_if_none_match_answered_304_from_the_cache(client, origin, path):
    """RFC 9110 13.1.2 and 15.4.5, RFC 9111 4.3.2: a matching If-None-Match on a fresh entry gets a
    304 without content, carrying ETag, Date, Cache-Control, Expires, Vary and Content-Location as a
    200 would [MUST]; nothing goes upstream."""
    origin.script(
        path,
        Reply(
            200,
            {
                "Cache-Control": "max-age=60",
                "ETag": '"e1"',
                "Vary": "X-Lang",
                "Expires": http_date(time.time() + 60),
                "Content-Location": f"{path}/cl",
            },
            "e1 body",
        ),
    )
    client.get(path, headers={"X-Lang": "en"})
    r = client.get(path, headers={"X-Lang": "en", "If-None-Match": '"e1"'})
    assert r.status_code == 304 and r.content == b"", show(r)
    assert origin.count(path) == 1, saw(origin, path)
    for name in ("etag", "date", "cache-control", "expires", "vary", "content-location"):
        assert r.headers.get(name), f"304 lacks {name}: {show(r)}"
    assert r.headers.get("content-length") in (None, "7"), f"RFC 9110 8.6 [MUST NOT unless the 200's length]: {show(r)}"


@granian
@pytest.mark.parametrize(
    ("stored", "sent", "status"),
    [
        ('W/"w1"', '"w1"', 304),
        ('W/"w1"', 'W/"w1"', 304),
        ('"s1"', 'W/"s1"', 304),
        ('"s1"', '"x", "s1"', 304),
        ('"s1"', "*", 304),
        ('"s1"', ',"s1" ,,', 304),
        ('"a,b"', '"a,b"', 304),
        ('"a,b"', '"a", "b"', 200),
        ('"s1"', '"S1"', 200),
    ],
)
def test_rfc9110_13_1_2_if_none_match_weak_comparison(client, origin, path, stored, sent, status):
    """RFC 9110 13.1.2 [MUST use the weak comparison function]; a list, and *; an entity tag may
    hold a comma (RFC 9110 section 8.8.3, etagc), and tags compare case-sensitively; empty list
    elements are ignored (RFC 9110 section 5.6.1)."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": stored}, "the body"))
    client.get(path)
    r = client.get(path, headers={"If-None-Match": sent})
    assert r.status_code == status and r.content == (b"" if status == 304 else b"the body"), show(r)
    assert origin.count(path) == 1, saw(origin, path)


@granian
def test_rfc9110_13_1_2_if_none_match_not_matching_gets_the_stored_200(client, origin, path):
    """RFC 9110 13.1.2: a condition that is true (no tag matches) gets the normal 200."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"e1"'}, "e1 body"))
    client.get(path)
    r = client.get(path, headers={"If-None-Match": '"other"'})
    assert r.status_code == 200 and r.content == b"e1 body", show(r)
    assert origin.count(path) == 1, saw(origin, path)


@granian
def test_rfc9110_13_1_3_if_modified_since_from_the_cache(client, origin, path):
    """RFC 9110 13.1.3 and 13.2.2, RFC 9111 4.3.2: If-Modified-Since against the stored
    Last-Modified: same date -> 304; an earlier date -> 200; an invalid date, or a field of more
    than one member (two field lines), is ignored [MUST]; with an If-None-Match present it is
    ignored [MUST]."""
    modified = time.time() - 3600
    origin.script(
        path,
        Reply(200, {"Cache-Control": "max-age=60", "Last-Modified": http_date(modified), "ETag": '"i1"'}, "ims body"),
    )
    client.get(path)
    checks = Checks()
    r = client.get(path, headers={"If-Modified-Since": http_date(modified)})
    checks.check(r.status_code == 304 and r.content == b"", f"same date: {show(r)}")
    r = client.get(path, headers={"If-Modified-Since": http_date(modified - 60)})
    checks.check(r.status_code == 200 and r.content == b"ims body", f"earlier date: {show(r)}")
    r = client.get(path, headers={"If-Modified-Since": "yesterday"})
    checks.check(r.status_code == 200 and r.content == b"ims body", f"invalid date: {show(r)}")
    now = http_date(time.time())
    r = client.get(path, headers=[("If-Modified-Since", now), ("If-Modified-Since", now)])
    checks.check(r.status_code == 200 and r.content == b"ims body", f"more than one member: {show(r)}")
    r = client.get(path, headers={"If-Modified-Since": http_date(time.time()), "If-None-Match": '"no"'})
    checks.check(r.status_code == 200 and r.content == b"ims body", f"If-None-Match takes precedence: {show(r)}")
    checks.check(origin.count(path) == 1, saw(origin, path))
    checks.done()


@granian
def test_4_3_2_if_modified_since_against_the_date_without_last_modified(client, origin, path):
    """Section 4.3.2 [SHOULD use the stored Date when there is no Last-Modified]: Date 100 s ago,
    If-Modified-Since now -> 304."""
    origin.script(path, Reply(200, cc("max-age=600"), date=time.time() - 100))
    client.get(path)
    r = client.get(path, headers={"If-Modified-Since": http_date()})
    assert r.status_code == 304 and r.content == b"", show(r)
    assert origin.count(path) == 1, saw(origin, path)


@granian
def test_rfc9110_14_range_request_on_a_stored_response(client, origin, path):
    """RFC 9110 section 14.2 and 15.3.7: a Range request on a stored whole response gets either the
    206 with that range and Content-Range, or the whole 200 (a server MAY ignore Range)."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"g"'}, "0123456789", validate=False))
    client.get(path)
    r = client.get(path, headers={"Range": "bytes=2-4"})
    if r.status_code == 206:
        assert r.content == b"234" and r.headers.get("content-range") == "bytes 2-4/10", show(r)
    else:
        assert r.status_code == 200 and r.content == b"0123456789", show(r)


@granian
def test_rfc9110_13_1_5_if_range_not_matching_gets_the_whole(client, origin, path):
    """RFC 9110 section 13.1.5 [MUST ignore Range when If-Range does not match]: a Range request
    whose If-Range names another entity tag gets the whole stored response as a 200."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "ETag": '"g"'}, "0123456789", validate=False))
    client.get(path)
    r = client.get(path, headers={"Range": "bytes=2-4", "If-Range": '"other"'})
    assert r.status_code == 200 and r.content == b"0123456789", show(r)


# --- RFC 9111 section 4.4: invalidation -------------------------------------------------------


def stored(client, origin, p: str) -> None:
    """Script `p` fresh for 60 s and store it."""
    origin.script(p, Reply(200, cc("max-age=60")))
    client.get(p)


@both_engines
def test_4_4_post_invalidates_the_target_uri(client, origin, path):
    """Section 4.4 [MUST invalidate the target URI on a non-error response to an unsafe method]."""
    stored(client, origin, path)
    client.post(path, content=b"x")
    b = client.get(path)
    assert origin.count(path, "GET") == 2 and b.content == body_for(path, 3), saw(origin, path) + " / " + show(b)


@granian
@pytest.mark.parametrize(
    ("method", "status"), [("PUT", 201), ("DELETE", 204), ("PATCH", 200), ("POST", 303), ("REPORTX", 200)]
)
def test_4_4_unsafe_methods_invalidate(client, origin, path, method, status):
    """Section 4.4 [MUST]: any unsafe method, or one of unknown safety, answered 2xx or 3xx."""
    origin.script(
        path,
        Reply(200, cc("max-age=60")),
        Reply(status, {"Location": "/somewhere"} if status == 303 else {}),
        Reply(200, cc("max-age=60")),
    )
    client.get(path)
    u = client.request(method, path, content=b"x")
    assert u.status_code == status, show(u)
    b = client.get(path)
    assert origin.count(path, "GET") == 2 and b.content == body_for(path, 3), saw(origin, path) + " / " + show(b)


@granian
def test_4_4_invalidation_removes_every_variant(client, origin, path):
    """Section 4.4 [MUST: invalidate means remove all stored responses whose target URI matches]:
    two Vary variants, then a POST without the varying field."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang"}, lang_body))
    client.get(path, headers={"X-Lang": "en"}), client.get(path, headers={"X-Lang": "fr"})
    assert origin.count(path, "GET") == 2, saw(origin, path)
    client.post(path, content=b"x")
    client.get(path, headers={"X-Lang": "en"}), client.get(path, headers={"X-Lang": "fr"})
    assert origin.count(path, "GET") == 4, saw(origin, path)


@granian
@pytest.mark.parametrize("status", [500, 404])
def test_4_4_error_response_does_not_invalidate(client, origin, path, status):
    """Section 4.4: invalidation follows a non-error (2xx, 3xx) response; an error response leaves
    the stored response in place (gatewayd's design)."""
    origin.script(path, Reply(200, cc("max-age=60")), Reply(status, cc("no-store")), Reply(200, cc("max-age=60")))
    client.get(path)
    u = client.post(path, content=b"x")
    assert u.status_code == status, show(u)
    b = client.get(path)
    assert origin.count(path, "GET") == 1 and b.content == body_for(path, 1), saw(origin, path) + " / " + show(b)


@granian
@pytest.mark.parametrize(("field", "absolute"), [("Location", False), ("Content-Location", False), ("Location", True)])
def test_4_4_location_of_the_same_origin_invalidated(client, gw, origin, path, field, absolute):
    """Section 4.4 [MAY; gatewayd's issue]: Location and Content-Location of the same origin, as a
    path or as an absolute URI naming the gateway's authority (the origin of the target URI)."""
    target = f"{path}/item"
    stored(client, origin, target)
    origin.script(path, Reply(201, {field: f"{gw.url}{target}" if absolute else target}))
    client.post(path, content=b"x")
    b = client.get(target)
    assert origin.count(target) == 2, saw(origin, target) + " / " + show(b)


@granian
@pytest.mark.parametrize("other", ["host", "port", "scheme"])
def test_4_4_location_of_another_origin_not_invalidated(client, origin, path, gw, other):
    """Section 4.4 [MUST NOT invalidate a URI of a different origin]: Location and Content-Location
    with the same path on another host, another port, or another scheme (RFC 9110 section 4.3.1: the
    origin is scheme, host and port)."""
    target = f"{path}/item"
    stored(client, origin, target)
    elsewhere = {
        "host": f"http://other.example{target}",
        "port": f"http://127.0.0.1:{free_port()}{target}",
        "scheme": f"https://127.0.0.1:{gw.port}{target}",
    }[other]
    origin.script(path, Reply(201, {"Location": elsewhere, "Content-Location": elsewhere}))
    client.post(path, content=b"x")
    b = client.get(target)
    assert origin.count(target) == 1 and b.content == body_for(target, 1), saw(origin, target) + " / " + show(b)


# --- RFC 5861: stale-while-revalidate and stale-if-error -------------------------------------


@after_expiry(*ENGINES)
def test_rfc5861_3_stale_while_revalidate_serves_stale_and_refreshes_once(client, gw, origin, path):
    """RFC 5861 section 3 [MAY serve stale while revalidating in the background]: concurrent
    requests on a stale entry within the window get the stale response at once (the origin takes
    1.5 s), exactly one refresh goes upstream, and its response is served afterwards."""
    origin.script(
        path,
        Reply(200, cc("max-age=1, stale-while-revalidate=600")),
        Reply(200, cc("max-age=60"), delay=1.5),
    )
    client.get(path)
    yield  # the stored responses expire

    got = at_once(gw, path, 5)
    for r, took in got:
        assert r.status_code == 200 and r.content == body_for(path, 1), show(r)
        assert age(r) is not None and age(r) >= 1, f"a stale response from the cache has its Age: {show(r)}"
        assert took < 1.0, f"the stale response waited {took:.2f} s for the refresh: {show(r)}"
    assert origin.wait_for(path, 2, timeout=5.0, answered=True), saw(origin, path)
    time.sleep(0.3)
    assert origin.count(path) == 2, f"one background refresh: {saw(origin, path)}"
    after = client.get(path)
    assert after.content == body_for(path, 2), show(after) + " / " + saw(origin, path)
    assert origin.count(path) == 2, saw(origin, path)


@after_expiry(*ENGINES)
def test_rfc5861_4_stale_if_error_serves_stale_on_error(client, origin, path):
    """RFC 5861 section 4 [MAY serve stale on an error, within the window]: origin answering 500,
    503, or dropping the connection; a 404 is no such error (500, 502, 503, 504) and is passed on."""
    cases = {
        "500": Reply(500, cc("no-store")),
        "503": Reply(503, cc("no-store")),
        "down": Reply(drop=True),
        "404": Reply(404, cc("no-store"), "gone now"),
    }
    for name, error in cases.items():
        origin.script(f"{path}/{name}", Reply(200, cc("max-age=1, stale-if-error=600"), "good body"), error)
        client.get(f"{path}/{name}")
    yield  # the stored responses expire
    checks = Checks()
    for name in cases:
        p = f"{path}/{name}"
        r = client.get(p)
        if name == "404":
            checks.check(
                r.status_code == 404 and r.content == b"gone now",
                f"a 404 is not an error here: {show(r)} / {saw(origin, p)}",
            )
        else:
            checks.check(r.status_code == 200 and r.content == b"good body", f"{name}: {show(r)} / {saw(origin, p)}")
            checks.check(age(r) is not None and age(r) >= 1, f"{name}: a stale response has its Age: {show(r)}")
        # (a dropped kept-alive connection is the one case the upstream client sends a GET again, on a new one)
        tries = (2, 3) if name == "down" else (2,)
        checks.check(origin.count(p) in tries, f"{name}: the cache tried the origin: {saw(origin, p)}")
    checks.done()


@after_expiry("granian")
def test_rfc5861_3_background_revalidation_with_a_304(client, origin, path):
    """RFC 5861 section 3 with RFC 9111 4.3.4 and 3.2: the background revalidation of a stale
    entry with an ETag may be conditional; a 304 freshens the stored response (new fields, same
    content), which later requests get from the cache."""
    origin.script(
        path,
        Reply(
            200, {"Cache-Control": "max-age=1, stale-while-revalidate=600", "ETag": '"r"', "X-Version": "1"}, "r body"
        ),
        Reply(200, {"Cache-Control": "max-age=600", "ETag": '"r"', "X-Version": "2"}, "r body", delay=0.3),
    )
    client.get(path)
    yield  # the stored responses expire
    stale = client.get(path)
    assert stale.content == b"r body", show(stale)
    assert origin.wait_for(path, 2, timeout=5.0, answered=True), saw(origin, path)
    time.sleep(0.3)
    after = client.get(path)
    assert after.content == b"r body" and after.headers.get("x-version") == "2", show(after) + " / " + saw(origin, path)
    assert origin.count(path) == 2, saw(origin, path)


@after_expiry("granian")
def test_rfc5861_3_request_no_cache_is_not_answered_stale(client, origin, path):
    """RFC 9111 5.2.1.4 (the client prefers a validated response) over RFC 5861 section 3: a stale
    entry within its stale-while-revalidate window is not served to a request with no-cache; the
    request waits for the origin."""
    origin.script(
        path, Reply(200, cc("max-age=1, stale-while-revalidate=600")), Reply(200, cc("max-age=60"), delay=0.3)
    )
    client.get(path)
    yield  # the stored responses expire
    b = client.get(path, headers=cc("no-cache"))
    assert b.content == body_for(path, 2) and origin.count(path) == 2, show(b) + " / " + saw(origin, path)


@granian
def test_rfc5861_3_and_4_windows_count_from_expiry(client, origin, path):
    """RFC 5861 sections 3 and 4 (the value is the upper limit of staleness, the time since the
    response became stale) and RFC 9111 4.2.4 [MUST NOT serve stale beyond it]. 2.2 s after a
    max-age=1 response: with a window of 1 s, stale-while-revalidate no longer applies (the request
    waits for the origin) nor stale-if-error (the origin's error is passed on); with a window of
    2 s both still apply (1.2 s stale), though the response is 2.2 s old (older than the window)."""
    cases = {
        "swr-2": (cc("max-age=1, stale-while-revalidate=2"), Reply(200, cc("max-age=60"), delay=0.3), True),
        "sie-2": (cc("max-age=1, stale-if-error=2"), Reply(500, cc("no-store"), "origin error"), True),
        "swr-1": (cc("max-age=1, stale-while-revalidate=1"), Reply(200, cc("max-age=60"), delay=0.3), False),
        "sie-1": (cc("max-age=1, stale-if-error=1"), Reply(500, cc("no-store"), "origin error"), False),
    }
    for name, (first, then, _) in cases.items():
        # a Date up to 1 s ahead: apparent_age is 0, so the age is the time since the response came
        origin.script(f"{path}/{name}", Reply(200, first, "first body", date=time.time() + 0.999), then)
        client.get(f"{path}/{name}")
    time.sleep(2.2)
    checks = Checks()
    for name, (_, then, stale_ok) in cases.items():
        p = f"{path}/{name}"
        r = client.get(p)
        expected = b"first body" if stale_ok else (then.body.encode() if then.body else body_for(p, 2))
        checks.check(
            r.content == expected,
            f"{name}: {'stale' if stale_ok else 'no stale'} expected: {show(r)} / {saw(origin, p)}",
        )
    for name in ("swr-2",):
        origin.wait_for(f"{path}/{name}", 2, timeout=3.0, answered=True)
    checks.done()


@after_expiry("granian")
def test_rfc5861_4_stale_if_error_in_the_request(client, origin, path):
    """RFC 5861 section 4 [MAY]: stale-if-error as a request directive."""
    origin.script(path, Reply(200, cc("max-age=1"), "good body"), Reply(500, cc("no-store"), "origin error"))
    client.get(path)
    yield  # the stored responses expire
    b = client.get(path, headers=cc("stale-if-error=600"))
    assert b.status_code == 200 and b.content == b"good body", show(b) + " / " + saw(origin, path)


# --- RFC 9211: Cache-Status -------------------------------------------------------------------


@both_engines
def test_rfc9211_cache_status_on_miss_and_hit(client, origin, path):
    """RFC 9211 sections 2 and 2.1-2.4: a List (RFC 8941) with one member, gatewayd's, a token; a
    miss has fwd (a registered reason) and no hit, a hit has hit and no fwd, ttl an Integer."""
    origin.script(path, Reply(200, cc("max-age=60")))
    miss = client.get(path)
    hit = client.get(path)
    for r in (miss, hit):
        values = r.headers.get_list("cache-status")
        assert values, f"no Cache-Status: {show(r)}"
        members = cache_status(r)
        assert [item for item, _ in members] == ["gatewayd"] and isinstance(members[0][0], Token), show(r)
    m, h = ours(miss), ours(hit)
    assert m is not None and h is not None, show(miss) + " / " + show(hit)
    assert m.get("fwd") in FWD_REASONS and "hit" not in m, show(miss)
    assert isinstance(m.get("fwd"), Token), show(miss)
    assert h.get("hit") is True and "fwd" not in h, show(hit)
    if "ttl" in h:
        assert isinstance(h["ttl"], int) and 55 <= h["ttl"] <= 60, show(hit)
    if "fwd-status" in m:
        assert m["fwd-status"] == 200, show(miss)


@after_expiry("granian")
def test_rfc9211_stale_revalidation_is_fwd_stale(client, origin, path):
    """RFC 9211 section 2.2: a stale entry sent forward for validation has fwd=stale; fwd-status,
    when present, is the origin's 304."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=1", "ETag": '"s1"'}))
    client.get(path)
    yield  # the stored responses expire
    r = client.get(path)
    status = ours(r)
    assert status is not None and status.get("fwd") == "stale", show(r)
    assert status.get("fwd-status", 304) == 304, show(r)


@granian
def test_rfc9211_upstream_cache_status_is_preserved(client, origin, path):
    """RFC 9211 section 2 [SHOULD preserve the existing value; the member of the cache closest to
    the origin comes first; each cache adds one member]: on the miss and on the hit, the origin's
    member then gatewayd's, once (the member a miss added is not stored with the response)."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Cache-Status": "originproxy; fwd=uri-miss"}))
    miss, hit = client.get(path), client.get(path)
    for r in (miss, hit):
        assert [item for item, _ in cache_status(r)] == ["originproxy", "gatewayd"], show(r)
    assert ours(hit).get("hit") is True, show(hit)


@granian
@pytest.mark.parametrize(
    ("case", "reasons"),
    [
        ("post", {"method", "bypass"}),
        ("vary-mismatch", {"vary-miss", "miss"}),
        ("request-no-cache", {"request"}),
        ("conditional-from-cache", None),
    ],
)
def test_rfc9211_fwd_reasons_and_hits(client, origin, path, case, reasons):
    """RFC 9211 section 2.2 (the fwd values: method for an unsafe method, vary-miss when a stored
    response for the URI does not match, request when request directives forbid a fresh stored
    response) and 2.1 (a 304 the cache makes from a stored response is a hit)."""
    origin.script(path, Reply(200, {"Cache-Control": "max-age=60", "Vary": "X-Lang", "ETag": '"f"'}))
    client.get(path, headers={"X-Lang": "en"})
    if case == "post":
        r = client.post(path, content=b"x")
    elif case == "vary-mismatch":
        r = client.get(path, headers={"X-Lang": "fr"})
    elif case == "request-no-cache":
        r = client.get(path, headers={"X-Lang": "en", "Cache-Control": "no-cache"})
    else:
        r = client.get(path, headers={"X-Lang": "en", "If-None-Match": '"f"'})
        assert r.status_code == 304, show(r)
    status = ours(r)
    assert status is not None, show(r)
    if reasons is None:
        assert status.get("hit") is True and "fwd" not in status, show(r)
    else:
        assert "hit" not in status and status.get("fwd") in reasons, show(r)


@after_expiry("granian")
def test_rfc9211_stale_served_while_revalidating_is_a_hit(client, origin, path):
    """RFC 9211 section 2.1 and 2.2: a stale response served at once (RFC 5861 section 3) was not
    forwarded: hit, no fwd (hit and fwd are exclusive); ttl, when present, is not positive."""
    origin.script(path, Reply(200, cc("max-age=1, stale-while-revalidate=600")))
    client.get(path)
    yield  # the stored responses expire
    r = client.get(path)
    assert r.content == body_for(path, 1), show(r)
    status = ours(r)
    assert status is not None and status.get("hit") is True and "fwd" not in status, show(r)
    assert status.get("ttl", 0) <= 0, show(r)
    origin.wait_for(path, 2, timeout=5.0, answered=True)


# --- the same rules with two workers (an L1 per worker, a shared L2) ----------------------------


@pytest.fixture(scope="module")
def gw2(gatewayd_module, origin):
    """A gateway with two workers: each connection lands on either (SO_REUSEPORT)."""
    return gatewayd_module(CONFIG.format(origin=origin.url).replace("workers: 1", "workers: 2"))


def on_new_connections(gw, p: str, n: int, method: str = "GET") -> list[httpx.Response]:
    """`n` requests one after another, each on a connection of its own (so spread over workers)."""
    out = []
    for _ in range(n):
        with httpx.Client(base_url=gw.url, timeout=10.0) as c:
            out.append(c.request(method, p))
    return out


@granian
def test_workers_4_4_invalidation_reaches_every_worker(gw2, origin, path):
    """Section 4.4 [MUST invalidate] for the gateway as a whole: after a POST answered 2xx, no
    worker serves the stored response again."""
    origin.script(path, Reply(200, cc("max-age=60")))
    before = on_new_connections(gw2, path, 6)
    assert all(r.content == body_for(path, 1) for r in before), [show(r) for r in before]
    on_new_connections(gw2, path, 1, "POST")
    after = on_new_connections(gw2, path, 8)
    served_invalidated = [show(r) for r in after if r.content == body_for(path, 1)]
    assert not served_invalidated, served_invalidated + [saw(origin, path)]


@granian
def test_workers_4_2_3_age_and_freshening_are_shared(gw2, origin, path):
    """Section 4.2.3 and 4 [MUST: Age is the current age] and 4.3.4 for the gateway as a whole: a hit
    from either worker counts the age from when the origin answered, and once one worker has
    validated a stale entry (304 with new fields), no worker serves the old stale one."""
    aged, validated = f"{path}/aged", f"{path}/validated"
    origin.script(aged, Reply(200, cc("max-age=60")))
    origin.script(
        validated,
        Reply(200, {"Cache-Control": "max-age=1", "ETag": '"w1"', "X-Version": "1"}),
        Reply(200, {"Cache-Control": "max-age=60", "ETag": '"w1"', "X-Version": "2"}),
    )
    on_new_connections(gw2, aged, 1), on_new_connections(gw2, validated, 4)
    time.sleep(STALE_WAIT_S)
    checks = Checks()
    for r in on_new_connections(gw2, aged, 6):
        checks.check(r.content == body_for(aged, 1) and age(r) is not None and age(r) >= 1, f"aged: {show(r)}")
    for r in on_new_connections(gw2, validated, 8):
        checks.check(r.headers.get("x-version") == "2", f"validated: {show(r)} / {saw(origin, validated)}")
    checks.check(
        origin.count(aged) == 1, f"one origin request for the workers together (issue 9: L2): {saw(origin, aged)}"
    )
    checks.done()
