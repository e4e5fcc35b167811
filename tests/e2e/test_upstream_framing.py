"""The upstream side of framing, on both engines: an upstream that answers with broken framing gives
the client a 502 (or, once the response has started streaming, a response cut off by a closed
connection), and never a mixed-up response: the request after it, on the gateway's pooled upstream
connections, gets its own answer."""

from __future__ import annotations

import pytest
from rawhttp import Recorder, exchange, request

CONFIG = """
version: 1
upstreams:
  rec: {{targets: ["{rec}"], max_connections: 2, timeouts: {{response: 5s}}}}
routes:
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
}


CUT_OFF = ("shorter-than-announced", "bad-chunk", "chunk-line-bare-lf", "cut-while-streaming")


def answer(seen):
    name = seen.target.strip("/").split("/")[0]
    if name in ANSWERS:
        return (ANSWERS[name][0], "close") if name in CUT_OFF else ANSWERS[name][0]
    body = seen.target.encode()
    return OK_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


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
