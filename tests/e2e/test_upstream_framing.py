"""The upstream side of framing, on both engines: an upstream that answers with broken framing gives
the client a 502 (or, once the response has started streaming, a response cut off by a closed
connection, and one line in the log), and never a mixed-up response: the request after it, on the
gateway's pooled upstream connections, gets its own answer. Also the upstream's pace: a slow head
gets 504 and frees its connection, a body that stalls past `timeouts.read` is cut off, a slow upload
does not count against the response timeout, and a kept-alive connection that the upstream closed is
not the request's failure."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
from rawhttp import HOST, Recorder, exchange, parse_responses, request

CONFIG = """
version: 1
server:
  http: auto
upstreams:
  rec: {{targets: ["{rec}"], max_connections: 2, timeouts: {{response: 5s}}}}
  impatient: {{targets: ["{rec}"], max_connections: 1, timeouts: {{response: 400ms}}, retries: {{attempts: 1}}}}
  stalling: {{targets: ["{rec}"], max_connections: 1, timeouts: {{read: 300ms}}}}
routes:
  - match: {{path_prefix: /stalling}}
    upstream: stalling
  - match: {{path_prefix: /impatient}}
    upstream: impatient
  - match: {{path_prefix: /}}
    upstream: rec
"""

OK_HEAD = b"HTTP/1.1 200 OK\r\n"

# path: (raw answer of the upstream, what the client gets: 502, or "cut" for a started response cut off,
# or the body of a 200). The upstream closes its connection after the answers that end cut off.
ANSWERS = {
    "two-lengths": (OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!", 502),
    "length-list": (OK_HEAD + b"Content-Length: 2, 3\r\n\r\nok!", 502),
    "bad-length": (OK_HEAD + b"Content-Length: x\r\n\r\nok", 502),
    "obs-fold": (OK_HEAD + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", 502),
    "nul-in-field": (OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nok", 502),
    "bad-status": (b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", 502),
    "not-http": (b"SSH-2.0-OpenSSH\r\n\r\n", 502),
    "longer-than-announced": (OK_HEAD + b"Content-Length: 2\r\n\r\nokEXTRA", b"ok"),
    "a-second-response": (OK_HEAD + b"Content-Length: 2\r\n\r\nok" + OK_HEAD + b"Content-Length: 5\r\n\r\nevil!", b"ok"),
    "shorter-than-announced": (OK_HEAD + b"Content-Length: 10\r\n\r\nok", "cut"),
    "bad-chunk": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\n", "cut"),
    "chunk-line-bare-lf": (OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n", "cut"),
    "cut-while-streaming": (OK_HEAD + b"Content-Length: 400000\r\n\r\n" + b"x" * 200000, "cut"),
    "length-and-chunked": (OK_HEAD + b"Content-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok"),
    "two-equal-lengths": (OK_HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok", 502),
    "oversized-head": (OK_HEAD + b"X-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\nok", 502),
    "switching-protocols": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\n", 502),
    "early-close": (None, 502),  # closed without a byte of answer, on a fresh connection
    "interim-first": (b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HEAD + b"Content-Length: 2\r\n\r\nok", b"ok"),
    "until-close": (OK_HEAD + b"\r\nbody up to the close", b"body up to the close"),
    "answered-then-closed": (OK_HEAD + b"Content-Length: 2\r\n\r\nok", b"ok"),  # no Connection: close
}


CUT_OFF = ("shorter-than-announced", "bad-chunk", "chunk-line-bare-lf", "cut-while-streaming")
CLOSED_AFTER = (*CUT_OFF, "until-close", "answered-then-closed")
SLOW_HEAD_S = 1.5  # the upstream's delay before answering /impatient/slow-head, beyond its 400ms
_served = {}  # upstream connection index -> requests it got


def answer(seen):
    _served[seen.connection] = _served.get(seen.connection, 0) + 1
    name = seen.target.strip("/").split("/")[0]
    if name == "impatient":
        return impatient(seen)
    if name == "stalling":  # 2 bytes of 10, and then nothing: the connection is left open
        return OK_HEAD + b"Content-Length: 10\r\n\r\nok"
    if name in ANSWERS:
        raw = ANSWERS[name][0]
        return (raw, "close") if name in CLOSED_AFTER else raw
    return ok(seen.target.encode())


def ok(body: bytes) -> bytes:
    return OK_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def impatient(seen):
    """/impatient/slow-head: answered after SLOW_HEAD_S; /impatient/stale/..: answered as the first
    request of an upstream connection, and closed unanswered as a later one (an upstream that drops
    kept-alive connections as requests arrive); otherwise what was received, body and all."""
    if "/slow-head" in seen.target:
        time.sleep(SLOW_HEAD_S)
    if "/stale/" in seen.target and _served[seen.connection] > 1:
        return None
    return ok(b"%s %s %d" % (seen.method.encode(), seen.target.encode(), len(seen.body)))


@pytest.fixture(scope="module")
def rec():
    r = Recorder(answer)
    yield r
    r.close()


@pytest.fixture(scope="module")
def gw(gatewayd_module, rec):
    return gatewayd_module(CONFIG.format(rec=rec.url))


@pytest.mark.parametrize("name", ANSWERS)
def test_a_badly_framed_answer_never_mixes_with_the_next(gw, rec, name):
    expected = ANSWERS[name][1]
    got = exchange(gw.port, request(f"/{name}"), timeout=8.0)
    if expected == 502:
        assert got.status == 502 and got.responses[0].json()["error"] == "upstream_unavailable", (name, got.raw[:300])
    elif expected == "cut":  # a 502, if the gateway had not started the response yet
        if got.status == 502:
            assert got.responses[0].json()["error"] == "upstream_unavailable", (name, got.raw[:300])
        else:
            assert got.raw.startswith(b"HTTP/1.1 200") and got.closed and not got.responses, (name, got.raw[:300])
    else:
        assert got.status == 200 and got.responses[0].body == expected, (name, got.raw[:300])
    for i in range(3):  # the next requests, on whatever upstream connection the pool has
        after = exchange(gw.port, request(f"/next/{name}/{i}"), timeout=8.0)
        assert after.status == 200 and after.responses[0].body == f"/next/{name}/{i}".encode(), (name, i, after.raw[:300])


def test_a_cut_off_response_is_one_line_in_the_log(gw):
    exchange(gw.port, request("/cut-while-streaming"), timeout=8.0)
    deadline = time.monotonic() + 5
    while "response cut off" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = gw.log()
    assert "response cut off" in log, log[-2000:]
    assert "Traceback" not in log and "Error in ASGI" not in log, log[-3000:]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_cut_off_response_over_http2_is_reset(gw):
    """Over HTTP/2 (h2c), a response that breaks off mid-body ends in a reset stream (curl's exit 92),
    not in a stream left open nor one ended as if complete."""
    r = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--http2-prior-knowledge", "--max-time", "10", f"{gw.url}/cut-while-streaming"],
        capture_output=True, timeout=20,
    )  # fmt: skip
    assert r.returncode == 92, (r.returncode, r.stderr)


def test_a_slow_head_is_504_and_frees_the_only_connection(gw):
    """max_connections: 1, and the upstream sits on the request past timeouts.response: 504, and the
    timed-out connection is closed at once, so the next request gets a new one and its answer."""
    started = time.monotonic()
    got = exchange(gw.port, request("/impatient/slow-head"), timeout=8.0)
    assert got.status == 504 and got.responses[0].json()["error"] == "upstream_timeout", got.raw[:300]
    assert time.monotonic() - started < SLOW_HEAD_S, "the 400ms response timeout took longer than the upstream"
    after = exchange(gw.port, request("/impatient/next"), timeout=8.0)
    assert after.status == 200 and after.responses[0].body == b"GET /impatient/next 0", after.raw[:300]
    assert time.monotonic() - started < SLOW_HEAD_S, "the next request waited for the timed-out one's connection"


def test_a_body_that_stalls_past_the_read_timeout_is_cut_off_and_frees_the_connection(gw):
    """timeouts.read (300ms here): the upstream sends 2 bytes of 10 and then nothing, on its only
    connection: the response, started, is cut off soon after, with one line in the log, and the next
    request gets a new connection."""
    started = time.monotonic()
    got = exchange(gw.port, request("/stalling/first"), timeout=8.0, wait_close=5.0)
    waited = time.monotonic() - started
    assert got.raw.startswith(b"HTTP/1.1 200") and got.raw.endswith(b"ok") and got.closed, got.raw[:300]
    assert 0.3 <= waited < 3.0, waited
    assert "sent nothing of the response body for 0.3s" in gw.log()
    again = exchange(gw.port, request("/stalling/second"), timeout=8.0, wait_close=5.0)
    assert again.raw.startswith(b"HTTP/1.1 200") and again.closed, again.raw[:300]


def slow_upload(port: int, path: str, pieces: int, pause: float, chunked: bool) -> bytes:
    """POST `pieces` pieces of 1,000 bytes, `pause` seconds apart; the raw answer."""
    piece = b"x" * 1000
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {pieces * len(piece)}"
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(request(path, method="POST", extra=framing + "\r\n"))
        for _ in range(pieces):
            time.sleep(pause)
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            s.sendall(b"0\r\n\r\n")
        raw = b""
        while not parse_responses(raw):
            data = s.recv(65536)
            if not data:
                break
            raw += data
        return raw


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_slow_upload_is_not_a_response_timeout(gw, chunked):
    """timeouts.response (400ms here) runs from the end of the request: an upload that takes 1.2s
    is forwarded whole, and answered."""
    started = time.monotonic()
    raw = slow_upload(gw.port, "/impatient/upload", pieces=6, pause=0.2, chunked=chunked)
    assert time.monotonic() - started >= 1.2
    responses = parse_responses(raw)
    assert responses and responses[0].status == 200, raw[:300]
    assert responses[0].body == b"POST /impatient/upload 6000"


def test_a_kept_alive_connection_the_upstream_closed_is_not_a_failure(gw):
    """The upstream closes a reused connection as the request arrives, without a byte of answer: a
    GET is sent again on a fresh connection (the upstream never saw it); a POST with a body is not
    replayed, and gets 502."""
    first = exchange(gw.port, request("/impatient/stale/1"), timeout=8.0)
    assert first.status == 200, first.raw[:300]
    again = exchange(gw.port, request("/impatient/stale/2"), timeout=8.0)
    assert again.status == 200 and again.responses[0].body == b"GET /impatient/stale/2 0", again.raw[:300]
    posted = exchange(gw.port, request("/impatient/stale/3", method="POST", extra="Content-Length: 2\r\n") + b"hi")
    assert posted.status == 502, posted.raw[:300]


def test_many_at_once_through_one_connection(gw):
    """max_connections: 1, and 10 requests at once: each waits its turn for the one connection, and
    gets its own answer."""
    results = {}

    def one(i: int) -> None:
        got = exchange(gw.port, request(f"/impatient/queued/{i}"), timeout=8.0)
        results[i] = got.responses[0].body if got.status == 200 else got.raw[:200]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == {i: b"GET /impatient/queued/%d 0" % i for i in range(10)}
