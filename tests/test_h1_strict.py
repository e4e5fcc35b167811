"""gatewayd.server.h1_strict: the Hypercorn engine's HTTP/1.1 reading, bytes in and h11 events out,
as Granian's parser reads the same bytes (tests/e2e/test_framing.py sends them to both engines)."""

from __future__ import annotations

import h11
import pytest

from gatewayd.server.h1_strict import Refused, StrictConnection, check_head


def events(data: bytes) -> list:
    """The events a server connection reads from `data`, until it needs more."""
    conn = StrictConnection(h11.SERVER)
    conn.receive_data(data)
    out = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return out
        out.append(event)
        if isinstance(event, h11.EndOfMessage):
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE:
                return out
            conn.start_next_cycle()


def refused(data: bytes) -> int:
    with pytest.raises(h11.RemoteProtocolError) as caught:
        events(data)
    return caught.value.error_status_hint


HEAD = b"GET / HTTP/1.1\r\nHost: a\r\n"


@pytest.mark.parametrize(
    "head, status",
    [
        (HEAD + b"X: a\r\n b\r\n\r\n", 400),  # obs-fold
        (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 400),
        (HEAD + b"X: a\x01b\r\n\r\n", 400),
        (HEAD + b"X: a\x7f\r\n\r\n", 400),
        (HEAD + b"X: a\rb\r\n\r\n", 400),
        (HEAD + b"X : a\r\n\r\n", 400),
        (HEAD + b"Content-Length: 5, 5\r\n\r\n", 400),
        (HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (HEAD + b"Content-Length: +5\r\n\r\n", 400),
        (HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n", 400),
        (HEAD + b"Transfer-Encoding: gzip, chunked\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ],
)
def test_heads_granian_refuses_are_refused(head, status):
    with pytest.raises(Refused) as caught:
        check_head(head)
    assert caught.value.error_status_hint == status
    assert refused(head) == status


def test_what_granian_accepts_is_accepted():
    assert check_head(b"GET / HTTP/1.1\nHost: a\nX: caf\xe9\n\n") is False  # bare LF line ends, obs-text
    assert check_head(HEAD + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n") is False
    assert check_head(HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n") is True


def test_content_length_with_transfer_encoding_is_read_as_chunked_and_closes():
    got = events(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n")  # fmt: skip
    request = got[0]
    assert b"content-length" not in dict(request.headers) and dict(request.headers)[b"connection"] == b"close"
    assert b"".join(e.data for e in got if isinstance(e, h11.Data)) == b"hello"
    assert isinstance(got[-1], h11.EndOfMessage) and len([e for e in got if isinstance(e, h11.Request)]) == 1


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"10000000000000000\r\n",  # 2^64
        b"5\nhello\r\n0\r\n\r\n",
        b"5;" + b"e" * (17 * 1024) + b"\r\n",
        b"5;" + b"e" * 9000 + b"\r\nhello\r\n5;" + b"e" * 9000 + b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX\r\n0\r\n\r\n",
        b"0\r\nX: a\r\n b\r\n\r\n",  # obs-fold in the trailer section
    ],
)
def test_chunked_bodies_granian_refuses_are_refused(body):
    assert refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body) == 400


def test_a_long_chunk_line_is_refused_before_it_ends():
    assert refused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * (20 * 1024)) == 400


def test_chunked_bodies_granian_accepts_are_read():
    got = events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5 ;a=b\r\nhello\r\nFFFFFFFFFFFFFFF\r\n")  # fmt: skip
    assert [e.data for e in got if isinstance(e, h11.Data)] == [bytearray(b"hello")]
    got = events(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n")
    assert isinstance(got[-1], h11.EndOfMessage) and dict(got[-1].headers) == {b"x-t": b"1"}


def test_http2_prior_knowledge_still_reaches_hypercorn():
    conn = StrictConnection(h11.SERVER)
    conn.receive_data(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    got = [conn.next_event()]
    assert isinstance(got[0], h11.Request) and got[0].method == b"PRI"
