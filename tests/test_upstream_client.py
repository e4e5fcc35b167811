"""The upstream client's pure parts, without a network: how a response's bytes are read (whatever
packets they come in), which response headers reach the client, and how a target and a request
head are written. The same client against real and hostile upstreams: e2e/test_upstream_framing.py."""

from __future__ import annotations

import asyncio

import pytest

from gatewayd.upstream.errors import BadResponse, Closed, ResponseTimeout
from gatewayd.upstream.h1_connection import BODY, DONE, H1Connection, request_head
from gatewayd.upstream.h1_pool import endpoint
from gatewayd.upstream.proxy import HOP_BY_HOP, _response_headers


class Transport:
    """What the connection writes and asks of its transport."""

    def __init__(self):
        self.written = b""
        self.aborted = self.paused = False

    def write(self, data):
        self.written += data

    def abort(self):
        self.aborted = True

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False


class Pool:
    def gone(self, conn):
        pass


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def connection(loop) -> tuple[H1Connection, Transport]:
    conn = H1Connection(Pool(), "http://upstream", loop)
    transport = Transport()
    conn.connection_made(transport)
    return conn, transport


def read(loop, raw: bytes, split: int, head_only: bool = False, close: bool = False):
    """Feed `raw` in pieces of `split` bytes (then a close, if `close`) to a connection that sent a
    request; (status or the head's exception, the body taken, whether the connection may be reused, its error)."""
    conn, _ = connection(loop)
    head = conn.send(b"GET / HTTP/1.1\r\n\r\n", head_only, None)
    for i in range(0, len(raw), split):
        conn.data_received(raw[i : i + split])
    if close:
        conn.connection_lost(None)
    if head.done() and head.exception() is not None:
        return type(head.exception()), b"", conn.reusable, None
    if not head.done():
        return None, b"", conn.reusable, None
    return conn.status, conn.take(), conn.reusable and conn.state == DONE, conn.error


OK = b"HTTP/1.1 200 OK\r\n"
CASES = {
    # name: (raw, close after, (status or exception, body, reusable, error))
    "content-length": (OK + b"Content-Length: 5\r\n\r\nhello", False, (200, b"hello", True, None)),
    "chunked": (OK + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", False, (200, b"hello", True, None)),
    "chunked-with-trailer": (OK + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", False, (200, b"hello", True, None)),
    "connection-close": (OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nok", False, (200, b"ok", False, None)),
    "http-1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, (200, b"ok", False, None)),
    "until-close": (OK + b"\r\nall of it", True, (200, b"all of it", False, None)),
    "no-content": (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", False, (204, b"", True, None)),
    "interim-skipped": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK + b"Content-Length: 2\r\n\r\nok", False, (200, b"ok", True, None)),
    "length-beside-chunked": (OK + b"Content-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False, (200, b"ok", False, None)),
    "longer-than-announced": (OK + b"Content-Length: 2\r\n\r\nokEXTRA", False, (200, b"ok", False, None)),
    "a-second-response": (OK + b"Content-Length: 2\r\n\r\nok" + OK + b"Content-Length: 1\r\n\r\n!", False, (200, b"ok", False, None)),
    "two-lengths": (OK + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nok!", False, (BadResponse, b"", False, None)),
    "bad-length": (OK + b"Content-Length: 2x\r\n\r\nok", False, (BadResponse, b"", False, None)),
    "obs-fold": (OK + b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", False, (BadResponse, b"", False, None)),
    "bare-lf": (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False, (BadResponse, b"", False, None)),
    "upgrade": (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", False, (BadResponse, b"", False, None)),
    "closed-before-answering": (b"", True, (Closed, b"", False, None)),
    "closed-in-the-head": (OK + b"Content-Len", True, (Closed, b"", False, None)),
}


@pytest.mark.parametrize("split", [1, 7, 1 << 20], ids=["byte-by-byte", "7-bytes", "one-packet"])
@pytest.mark.parametrize("name", CASES)
def test_a_response_reads_the_same_whatever_its_packets(loop, name, split):
    raw, close, expected = CASES[name]
    assert read(loop, raw, split, close=close) == expected


def test_a_body_cut_short_is_an_error_for_its_reader(loop):
    conn, _ = connection(loop)
    head = conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK + b"Content-Length: 10\r\n\r\nhel")
    assert head.done() and conn.state == BODY and conn.take() == b"hel"
    conn.connection_lost(None)
    with pytest.raises(Closed):
        loop.run_until_complete(conn.more(5.0))


def test_a_body_that_stalls_past_the_read_timeout_ends_the_connection(loop):
    conn, transport = connection(loop)
    conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK + b"Content-Length: 10\r\n\r\nhel")
    assert conn.take() == b"hel"
    with pytest.raises(ResponseTimeout, match="nothing of the response body for 0.05s"):
        loop.run_until_complete(conn.more(0.05))
    assert transport.aborted and conn.closed


def test_body_that_keeps_coming_is_not_timed_out(loop):
    conn, _ = connection(loop)
    conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK + b"Content-Length: 4\r\n\r\n")

    async def trickle():
        for byte in b"body":
            await asyncio.sleep(0.03)
            conn.data_received(bytes([byte]))

    async def reader():
        got = b""
        while conn.state != DONE:
            await conn.more(0.1)
            got += conn.take()
        return got

    async def both():
        feeding = asyncio.ensure_future(trickle())
        got = await reader()
        await feeding
        return got

    assert loop.run_until_complete(both()) == b"body"  # 0.12 s in all, never 0.1 s of silence


def test_the_answer_to_head_has_no_body_whatever_its_length_says(loop):
    status, body, reusable, _ = read(loop, OK + b"Content-Length: 1000\r\n\r\n", 1 << 20, head_only=True)
    assert (status, body, reusable) == (200, b"", True)


def test_a_head_that_never_ends_is_refused(loop):
    conn, transport = connection(loop)
    head = conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK)
    for _ in range(100):
        if head.done():
            break
        conn.data_received(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    assert isinstance(head.exception(), BadResponse) and transport.aborted


def test_bytes_while_idle_close_the_connection(loop):
    conn, transport = connection(loop)
    conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK + b"Content-Length: 2\r\n\r\nok")
    conn.state = 0  # back in the pool (h1_pool.H1Pool.put)
    conn.data_received(OK)
    assert conn.closed and transport.aborted


def test_a_large_body_pauses_the_upstream_until_taken(loop):
    conn, transport = connection(loop)
    conn.send(b"GET / HTTP/1.1\r\n\r\n", False, None)
    conn.data_received(OK + b"Content-Length: 1000000\r\n\r\n")
    conn.data_received(b"x" * 300_000)
    assert transport.paused
    assert len(conn.take()) == 300_000 and not transport.paused


def test_response_headers_lose_hop_by_hop_and_what_connection_names():
    received = [
        (b"content-type", b"text/plain"), (b"connection", b"keep-alive, x-private"), (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"), (b"content-length", b"9"),
        (b"date", b"then"), (b"server", b"upstream"), (b"x-kept", b"yes"),
    ]  # fmt: skip
    drop = HOP_BY_HOP | {b"server"}
    out, has_date = _response_headers(received, drop, [(b"x-added", b"1")])
    assert out == [(b"content-type", b"text/plain"), (b"date", b"then"), (b"x-kept", b"yes"), (b"x-added", b"1")]
    assert has_date, "the upstream's Date is passed on, and the gateway adds none"
    plain = [(b"connection", b"keep-alive"), (b"content-length", b"2")]
    assert _response_headers(plain, drop, []) == ([(b"content-length", b"2")], False)


def test_targets_and_request_heads():
    ep = endpoint("http://127.0.0.1:9001")
    assert (ep.host, ep.port, ep.authority, ep.tls) == ("127.0.0.1", 9001, b"127.0.0.1:9001", False)
    tls = endpoint("https://items.internal")
    assert (tls.host, tls.port, tls.authority, tls.tls) == ("items.internal", 443, b"items.internal", True)
    assert endpoint("http://[::1]:8080").host == "::1"
    head = request_head(b"GET", b"/a?b=c", b"up:1", b"x-a: 1\r\n")
    assert head == b"GET /a?b=c HTTP/1.1\r\nhost: up:1\r\nx-a: 1\r\n\r\n"
