"""Connections on both engines: many idle or slow clients do not hold up the others, a client that
connects and sends nothing is closed after `header_read_timeout`, and an idle keep-alive connection
after `keep_alive_timeout`. Every loop here is bounded in connections and in time, on loopback only."""

from __future__ import annotations

import socket
import statistics
import time

import pytest
from conftest import HOST
from rawhttp import exchange, request, seconds_until_closed

IDLE_CONNECTIONS = 300  # more than Granian's default of 128 connections per worker
SLOW_HEADS = 300
SILENT = 100
PROBES = 20
PROBE_LIMIT_S = 2.0  # a probe request on a fresh connection must be answered within this

ROUTES = """
routes:
  - match: {path: /}
    respond: {json: {ok: true}}
"""
CAPACITY = "version: 1\nserver:\n  limits: {header_read_timeout: 20s, keep_alive_timeout: 30s}\n" + ROUTES
TIMEOUTS = "version: 1\nserver:\n  limits: {header_read_timeout: 1s, keep_alive_timeout: 3s}\n" + ROUTES


@pytest.fixture(scope="module")
def capacity(gatewayd_module):
    return gatewayd_module(CAPACITY)


@pytest.fixture(scope="module")
def timeouts(gatewayd_module):
    return gatewayd_module(TIMEOUTS)


def _open(port: int, n: int, first: bytes | None) -> list[socket.socket]:
    """`n` connections, each having sent `first` (None: nothing); a request's answer is read."""
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection((HOST, port), timeout=5)
            socks.append(s)
            if first is not None:
                s.sendall(first)
        if first is not None and first.endswith(b"\r\n\r\n"):
            for s in socks:
                assert s.recv(65536).startswith(b"HTTP/1.1 200")
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def _probe_times(port: int) -> list[float]:
    """Seconds each of PROBES requests on fresh connections took (PROBE_LIMIT_S * 2 when none came)."""
    times = []
    for _ in range(PROBES):
        t0 = time.monotonic()
        got = exchange(port, request("/"), timeout=PROBE_LIMIT_S * 2)
        times.append(time.monotonic() - t0 if got.status == 200 else PROBE_LIMIT_S * 2)
    return times


def test_idle_and_silent_connections_do_not_hold_up_new_requests(capacity):
    """300 keep-alive clients that did one request and 100 that sent nothing: Granian's embedded
    server held 128 connections per worker, and the next client waited for one of them to close."""
    held = _open(capacity.port, IDLE_CONNECTIONS, request("/")) + _open(capacity.port, SILENT, None)
    try:
        times = _probe_times(capacity.port)
    finally:
        for s in held:
            s.close()
    assert max(times) < PROBE_LIMIT_S, (statistics.median(times), max(times))


def test_slow_heads_do_not_hold_up_new_requests(capacity):
    held = _open(capacity.port, SLOW_HEADS, b"GET / HTTP/1.1\r\nHost: slow\r\n")
    try:
        times = _probe_times(capacity.port)
    finally:
        for s in held:
            s.close()
    assert max(times) < PROBE_LIMIT_S, (statistics.median(times), max(times))


def test_a_client_that_sends_nothing_is_closed_after_header_read_timeout(timeouts):
    with socket.create_connection((HOST, timeouts.port), timeout=5) as s:
        waited = seconds_until_closed(s, 8.0)
    assert waited is not None and 0.8 <= waited <= 2.8, waited


def test_an_idle_keep_alive_connection_is_closed_after_keep_alive_timeout(timeouts):
    """Not after header_read_timeout (1s), which Granian's HTTP library counted from the last response."""
    with socket.create_connection((HOST, timeouts.port), timeout=5) as s:
        s.sendall(request("/"))
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        waited = seconds_until_closed(s, 10.0)
    assert waited is not None and 2.6 <= waited <= 6.0, waited  # (a loaded machine may answer late)


def test_a_head_begun_on_an_idle_connection_has_header_read_timeout(timeouts):
    with socket.create_connection((HOST, timeouts.port), timeout=5) as s:
        s.sendall(request("/"))
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
        s.sendall(b"GET / HT")
        waited = seconds_until_closed(s, 10.0)
    assert waited is not None and 0.6 <= waited <= 2.5, waited


def test_a_slow_request_in_flight_is_not_idle(gatewayd_module, upstream):
    """An upstream that answers after keep_alive_timeout: the connection carries a request, so the
    watchdog leaves it alone (Granian), as Hypercorn's keep-alive timer does."""
    up = upstream("slow")
    gw = gatewayd_module(
        "version: 1\nserver:\n  limits: {header_read_timeout: 1s, keep_alive_timeout: 1s}\n"
        f'upstreams:\n  slow: {{targets: ["{up.url}"], timeouts: {{response: 10s}}}}\n'
        "routes:\n  - match: {path_prefix: /}\n    upstream: slow\n"
    )
    got = exchange(gw.port, request("/slow/2500"), timeout=10)
    assert got.status == 200, got.raw[:200]
