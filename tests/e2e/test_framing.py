"""Request framing and smuggling, on raw sockets, on both engines: each vector is sent with a second
request behind it on the same connection (`GET /next`), and the test asserts both the answers and
what the upstream saw.

A vector is either refused (400, or 501 for a transfer coding the gateway does not support: the
gateway's JSON error where the gateway answers; where the framing is in doubt, the connection is
closed after it, so `/next` is never read), or served as the one request it is, with `/next` then
served as the next request only where the connection stays open. Nothing in a body (`/smuggled`)
ever reaches the upstream as a request. Where an engine cannot give the stricter answer, the test
says so and asserts what it does instead (README, "Protocols and limits").
"""

from __future__ import annotations

import pytest
from rawhttp import Recorder, exchange

HOST_HEADER = b"Host: gw.test\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\n" + HOST_HEADER + b"\r\n"
NEXT = b"GET /next HTTP/1.1\r\n" + HOST_HEADER + b"\r\n"

CONFIG = """
version: 1
upstreams:
  rec: {{targets: ["{rec}"]}}
routes:
  - match: {{path_prefix: /, host: a.test}}
    respond: {{json: {{host: a}}}}
  - match: {{path_prefix: /}}
    upstream: rec
"""


def post(fields: bytes, body: bytes = b"") -> bytes:
    return b"POST /p HTTP/1.1\r\n" + HOST_HEADER + fields + b"\r\n" + body


def get(fields: bytes = b"", target: bytes = b"/p", version: bytes = b"HTTP/1.1", host: bytes = HOST_HEADER) -> bytes:
    return b"GET " + target + b" " + version + b"\r\n" + host + fields + b"\r\n"


class Refused:
    """`closes`: the connection is closed after the answer (a refused framing); otherwise `/next`
    is served after it."""

    def __init__(self, status: int = 400, closes: bool = True):
        self.status, self.closes = status, closes


class Served:
    """Answered 200 by the upstream, which saw `target` with `body` (and no Content-Length of
    `not_length`); `closes`: the connection is closed after the response."""

    def __init__(self, target: str = "/p", body: bytes = b"", closes: bool = False, not_length: str | None = None):
        self.target, self.body, self.closes, self.not_length = target, body, closes, not_length


CHUNKED = b"Transfer-Encoding: chunked\r\n"
HELLO = b"5\r\nhello\r\n0\r\n\r\n"

# name: (bytes sent before SMUGGLED, expected answer, source)
VECTORS = {
    "Content-Length and Transfer-Encoding": (
        post(b"Content-Length: 4\r\n" + CHUNKED, HELLO), Served(body=b"hello", closes=True, not_length="4"),
        "RFC 9112 section 6.1: read as chunked, then close",
    ),
    "Transfer-Encoding, then a longer Content-Length": (
        post(CHUNKED + b"Content-Length: 60\r\n", HELLO), Served(body=b"hello", closes=True, not_length="60"),
        "RFC 9112 section 6.1",
    ),
    "two different Content-Lengths": (post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"), Refused(), "RFC 9112 section 6.3"),
    "the same Content-Length twice": (
        post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"), Served(body=b"hello"),
        "RFC 9112 section 6.3 allows one value for the same repeated (hyper merges them, unseen by the gateway)",
    ),
    "Content-Length: 5, 5": (post(b"Content-Length: 5, 5\r\n", b"hello"), Refused(), "RFC 9112 section 6.3"),
    "Content-Length: +5": (post(b"Content-Length: +5\r\n", b"hello"), Refused(), "RFC 9110 section 8.6"),
    "Content-Length: -1": (post(b"Content-Length: -1\r\n"), Refused(), "RFC 9110 section 8.6"),
    "Content-Length: 0x5": (post(b"Content-Length: 0x5\r\n", b"hello"), Refused(), "RFC 9110 section 8.6"),
    "obs-fold": (get(b"X-A: a\r\n b\r\n"), Refused(), "RFC 9112 section 5.2"),
    "obs-fold in Transfer-Encoding": (post(b"Transfer-Encoding:\r\n chunked\r\n", HELLO), Refused(), "RFC 9112 section 5.2"),
    "HTTP/1.2": (get(version=b"HTTP/1.2"), Refused(), "RFC 9112 section 2.3 (the stricter answer: Granian's)"),
    "HTTP/2.0 in an HTTP/1 request line": (get(version=b"HTTP/2.0"), Refused(), "RFC 9112 section 2.3"),
    "a bare LF in a value": (get(b"X-A: a\nb\r\n"), Refused(), "RFC 9112 section 2.2"),
    "a bare CR in a value": (get(b"X-A: a\rb\r\n"), Refused(), "RFC 9112 section 2.2; Apache CVE-2016-8743"),
    "NUL in a value": (get(b"X-A: a\x00b\r\n"), Refused(), "Envoy CVE-2019-9900"),
    "DEL in a value": (get(b"X-A: a\x7fb\r\n"), Refused(), "RFC 9110 section 5.5"),
    "a control character in a value": (get(b"X-A: a\x01b\r\n"), Refused(), "RFC 9110 section 5.5"),
    "a space in a field name": (get(b"X A: a\r\n"), Refused(), "RFC 9112 section 5"),
    "whitespace before the colon": (post(b"Transfer-Encoding : chunked\r\nContent-Length: 3\r\n", b"0\r\n\r\n"), Refused(), "RFC 9112 section 5.1"),
    "an empty field name": (get(b": x\r\n"), Refused(), "HAProxy CVE-2023-25725"),
    "a vertical tab before chunked": (post(b"Transfer-Encoding: \x0bchunked\r\n", HELLO), Refused(), "RFC 9110 section 5.5"),
    "Transfer-Encoding: gzip, chunked": (post(b"Transfer-Encoding: gzip, chunked\r\n", HELLO), Refused(501), "RFC 9112 section 6.1"),
    "Transfer-Encoding: chunked, identity": (post(b"Transfer-Encoding: chunked, identity\r\n", HELLO), Refused(), "RFC 9112 section 6.3"),
    "Transfer-Encoding: xchunked": (post(b"Transfer-Encoding: xchunked\r\n", HELLO), Refused(), "RFC 9112 section 6.3"),
    "Transfer-Encoding twice, chunked first": (post(CHUNKED + b"Transfer-Encoding: x\r\n", HELLO), Refused(), "RFC 9112 section 6.3"),
    "Transfer-Encoding in HTTP/1.0": (
        b"POST /p HTTP/1.0\r\n" + HOST_HEADER + CHUNKED + b"\r\n" + HELLO, Refused(), "RFC 9112 section 6.1",
    ),
    "chunk size zz": (post(CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1"),
    "chunk size 2^76": (post(CHUNKED, b"10000000000000000000\r\nhello\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1 (hyper: 64 bits)"),
    "chunk size 0x5": (post(CHUNKED, b"0x5\r\nhello\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1"),
    "20 KiB of chunk extensions": (post(CHUNKED, b"5;" + b"a" * 20000 + b"\r\nhello\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1.1 (hyper: 16 KiB)"),
    "a chunk line ended by a bare LF": (post(CHUNKED, b"5\nhello\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1"),
    "chunk data longer than its size": (post(CHUNKED, b"5\r\nhelloXX\r\n0\r\n\r\n"), Refused(), "RFC 9112 section 7.1"),
    "two Host headers": (get(host=b"Host: b.test\r\nHost: a.test\r\n"), Refused(), "RFC 9112 section 3.2"),
    "no Host": (get(host=b""), Refused(), "RFC 9112 section 3.2"),
    "an empty Host": (get(host=b"Host:\r\n"), Refused(), "RFC 9112 section 3.2; RFC 9110 section 4.2.1"),
    "a Host with a space": (get(host=b"Host: a b\r\n"), Refused(), "RFC 9112 section 3.2"),
    "a Host with userinfo": (get(host=b"Host: u@a.test\r\n"), Refused(), "RFC 9110 section 7.2"),
    "asterisk-form": (b"OPTIONS * HTTP/1.1\r\n" + HOST_HEADER + b"\r\n", Refused(closes=False), "RFC 9112 section 3.2.4"),
    "authority-form in a GET": (get(target=b"gw.test:80"), Refused(closes=False), "RFC 9112 section 3.2.3"),
    "whitespace before a chunk extension": (
        post(CHUNKED, b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), Served(body=b"hello"), "RFC 9112 section 7.1.1 (BWS)",
    ),
    "a trailer field": (post(CHUNKED, b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), Served(body=b"hello"), "RFC 9112 section 7.1.2"),
    "obs-fold in a trailer field": (post(CHUNKED, b"5\r\nhello\r\n0\r\nX-T: 1\r\n 2\r\n\r\n"), Refused(), "RFC 9112 section 5.2"),
    "a body that holds a request": (
        get(b"Content-Length: %d\r\n" % len(SMUGGLED)) + SMUGGLED, Served(body=SMUGGLED), "CL.0 request smuggling",
    ),
    "bare LF line ends": (b"GET /p HTTP/1.1\n" + HOST_HEADER.replace(b"\r\n", b"\n") + b"\n", Served(), "RFC 9112 section 2.2"),
}
# what an engine cannot refuse: (engine, vector) -> what it does instead (README, "Protocols and limits")
ENGINE_ANSWERS = {
    ("granian", "absolute-form, another Host"): Served(target="/p"),
    ("granian", "absolute-form"): Served(target="/p"),
}
VECTORS["absolute-form, another Host"] = (
    get(target=b"http://a.test/p", host=HOST_HEADER), Refused(closes=False), "RFC 9112 section 3.2.2 (the target's authority would win)",
)
VECTORS["absolute-form"] = (get(target=b"http://gw.test/p"), Refused(closes=False), "RFC 9112 section 3.2.2")


@pytest.fixture(scope="module")
def rec():
    r = Recorder()
    yield r
    r.close()


@pytest.fixture(scope="module")
def gw(gatewayd_module, rec):
    return gatewayd_module(CONFIG.format(rec=rec.url))


@pytest.mark.parametrize("name", VECTORS)
def test_request_framing(gw, rec, name):
    data, expected, source = VECTORS[name]
    expected = ENGINE_ANSWERS.get((gw.engine, name), expected)
    before = len(rec.seen)
    closes = expected.closes
    got = exchange(gw.port, data + NEXT, expect=1 if closes else 2, wait_close=3.0 if closes else 0, timeout=8.0)
    targets = [s.target for s in rec.seen[before:]]
    assert "/smuggled" not in targets, (name, source, targets)
    assert got.responses, (name, source, got.raw[:200])
    first = got.responses[0]
    if isinstance(expected, Refused):
        assert first.status == expected.status, (name, source, got.raw[:300])
        if first.body or gw.engine == "hypercorn":  # Granian's own refusals of a head have no body
            assert first.json()["error"] in ("bad_request", "bad_path", "unsupported_transfer_encoding"), (name, first)
        # the request itself at most, cut off when its body broke (the upstream never saw it whole)
        assert targets in ([], ["/p"]) if closes else targets == ["/next"], (name, source, targets)
    else:
        assert first.status == 200, (name, source, got.raw[:300])
        seen = rec.seen[before]
        assert (seen.target, seen.body) == (expected.target, expected.body), (name, seen)
        if expected.not_length is not None:
            assert seen.header("content-length") != expected.not_length, (name, seen.headers)
        assert targets == [expected.target] + ([] if closes else ["/next"]), (name, source, targets)
    if closes:
        assert got.closed and len(got.responses) == 1, (name, source, got.raw[:300])
    else:
        assert [r.status for r in got.responses][1:] == [200], (name, source, got.raw[:300])


def test_an_absolute_form_target_is_routed_by_granian_by_its_host_header(gw, rec):
    """The one vector Granian cannot refuse: its ASGI scope carries the path of an absolute-form
    target (`raw_path` is the URI's path) and the Host header, never the target's authority, so the
    gateway cannot see that they differ. It routes by Host, and the upstream gets the origin form."""
    if gw.engine != "granian":
        pytest.skip("Hypercorn refuses absolute-form targets")
    got = exchange(gw.port, get(target=b"http://gw.test/p", host=b"Host: a.test\r\n"))
    assert got.status == 200 and got.responses[0].json() == {"host": "a"}


@pytest.mark.parametrize(
    "headers, status",
    [
        (["Host: b.test", "Host: a.test"], 400),
        (["Host:"], 400),
        (["Host: a b"], 400),
        (["Host: u@a.test"], 400),
        (["Host: gw.test", "Content-Length: 5", "Content-Length: 6"], 400),
        (["Host: gw.test", "Content-Length: +5"], 400),
        (["Host: gw.test", "Transfer-Encoding: gzip, chunked"], 501),
        (["Host: gw.test", "Transfer-Encoding: chunked, identity"], 400),
        (["Host: gw.test"], "match"),
    ],
)
def test_explain_refuses_a_head_as_the_server_does(tmp_path, headers, status):
    import contextlib
    import io
    import json
    import types

    from gatewayd.cli import commands

    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(rec="http://127.0.0.1:9"))
    args = types.SimpleNamespace(file=str(config), method="POST", target="/p", header=headers, format="json")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        commands.explain(args)
    assert json.loads(out.getvalue())["result"] == status


@pytest.mark.parametrize("version, closes", [("1.1", True), ("1.0", True), ("2", False), ("3", False)])
def test_a_refused_framing_closes_http1_connections_only(version, closes):
    """HTTP/2 and 3 forbid the Connection header (RFC 9113 section 8.2.2); their streams are framed."""
    import asyncio

    from gatewayd.dispatch.exchange import Exchange
    from gatewayd.dispatch.refusals import TWO_LENGTHS

    sent = []

    async def send(message):
        sent.append(message)

    ex = Exchange({"http_version": version}, None, send, 0, b"rid", False)
    asyncio.run(TWO_LENGTHS.send(ex))
    assert sent[0]["status"] == 400
    assert ((b"connection", b"close") in sent[0]["headers"]) is closes
