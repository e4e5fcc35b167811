"""gatewayd.server.watchdog: which of the Granian engine's connections are closed, and when
(tests/e2e/test_connections.py checks the engines themselves)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from gatewayd.server.watchdog import Info, Limits, Seen, Tracker, Watchdog, verdict

LIMITS = Limits(header_read=2.0, keep_alive=5.0)
NOW = 1000.0


def info(received=100, sent=200, since_received=0.0, since_sent=0.0) -> Info:
    return Info(received, sent, since_received, since_sent)


def test_a_silent_connection_gets_the_shorter_timeout():
    seen = Seen(first_seen=NOW - 10)
    assert verdict(NOW, info(received=0, sent=0, since_received=1.9), seen, False, None, None, LIMITS) is None
    assert verdict(NOW, info(received=0, sent=0, since_received=2.0), seen, False, None, None, LIMITS) == "silent"
    assert Limits(3.0, 1.0).silent == 1.0 and Limits(3.0, 0.0).silent == 3.0  # 0s: keep-alive off


def test_a_first_head_is_left_to_granian():
    """Its bytes could be an HTTP/2 preface the server has yet to answer, or a TLS handshake."""
    assert verdict(NOW, info(sent=0), Seen(first_seen=NOW - 60), False, None, None, LIMITS) is None
    assert verdict(NOW, info(sent=50), Seen(first_seen=NOW - 60), False, None, None, LIMITS) is None


def test_an_idle_connection_gets_keep_alive_timeout():
    seen = Seen(first_seen=NOW - 60)
    idle = info(since_received=10.0, since_sent=4.9)
    assert verdict(NOW, idle, seen, False, NOW - 10.0, "1.1", LIMITS) is None  # still sending 4.9 s ago
    idle = info(since_received=10.0, since_sent=5.0)
    assert verdict(NOW, idle, seen, False, NOW - 5.0, "1.1", LIMITS) == "idle"
    assert verdict(NOW, idle, seen, False, NOW - 4.0, "1.1", LIMITS) is None
    assert verdict(NOW, idle, seen, False, NOW - 60.0, "2", LIMITS) is None  # HTTP/2: Granian's pings
    assert verdict(NOW, idle, seen, False, NOW - 60.0, "1.1", Limits(2.0, 0.0)) is None  # keep-alive off


def test_the_last_request_received_a_tick_before_its_response_ended_is_no_new_head():
    """TCP_INFO counts whole kernel ticks: the request's bytes may read as a few ms after the response."""
    seen = Seen(first_seen=NOW - 60)
    assert verdict(NOW, info(since_received=0.99), seen, False, NOW - 1.0, "1.1", LIMITS) is None
    assert seen.head_since is None
    assert verdict(NOW + 4.0, info(since_received=4.99, since_sent=5.0), seen, False, NOW - 1.0, "1.1", LIMITS) == "idle"


def test_a_busy_connection_is_never_closed():
    seen = Seen(first_seen=NOW - 600)
    assert verdict(NOW, info(since_received=500, since_sent=500), seen, True, NOW - 550, "1.1", LIMITS) is None


def test_a_head_after_a_response_counts_from_when_it_was_first_seen():
    seen = Seen(first_seen=NOW - 60)
    done = NOW - 3.0
    assert verdict(NOW, info(since_received=1.0), seen, False, done, "1.1", LIMITS) is None  # bytes since the response
    assert seen.head_since == NOW
    assert verdict(NOW + 1.9, info(since_received=1.0), seen, False, done, "1.1", LIMITS) is None
    assert verdict(NOW + 2.0, info(since_received=1.0), seen, False, done, "1.1", LIMITS) == "slow head"
    # a new request finished since: the head clock starts again
    assert verdict(NOW + 3.0, info(since_received=0.5), seen, False, NOW + 2.8, "1.1", LIMITS) is None


def test_a_request_finished_on_an_earlier_connection_does_not_count():
    seen = Seen(first_seen=NOW - 10)
    quiet = info(sent=0, since_received=40, since_sent=40)
    assert verdict(NOW, quiet, seen, False, NOW - 30, "1.1", LIMITS) is None
    assert verdict(NOW, quiet, Seen(first_seen=NOW - 40), False, NOW - 30, "1.1", LIMITS) == "idle"


def test_the_tracker_counts_requests_in_flight_by_client():
    tracker = Tracker()
    inside = []

    async def app(scope, receive, send):
        inside.append(dict(tracker.busy))

    asyncio.run(tracker.wrap(app)({"type": "http", "client": ("10.0.0.1", "5000"), "http_version": "1.1"}, None, None))
    assert inside == [{("10.0.0.1", "5000"): 1}] and tracker.busy == {}
    at, version = tracker.done[("10.0.0.1", "5000")]
    assert version == "1.1" and at <= time.monotonic()
    tracker.forget(set())
    assert tracker.done == {}


def test_a_scan_closes_what_it_condemns_and_nothing_else():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    other = socket.create_server(("127.0.0.1", 0))
    clients, accepted = [], []
    try:
        for listener in (server, server, other):
            c = socket.create_connection(("127.0.0.1", listener.getsockname()[1]))
            clients.append(c)
            accepted.append(listener.accept()[0])
        clients[1].sendall(b"GET / HT")  # a first head begun
        dog = Watchdog(Tracker(), {port}, Limits(header_read=0.2, keep_alive=5.0))
        assert dog.scan(time.monotonic()) == 0
        time.sleep(0.3)
        assert dog.scan(time.monotonic()) == 1  # the silent one; not the first head, nor the other port's
        clients[0].settimeout(2)
        assert clients[0].recv(10) == b""
        clients[1].settimeout(0.2)
        with pytest.raises(TimeoutError):
            clients[1].recv(10)
        clients[2].settimeout(0.2)
        with pytest.raises(TimeoutError):
            clients[2].recv(10)
    finally:
        for s in (*clients, *accepted, server, other):
            s.close()
