"""Connections on both engines: many idle or slow clients do not hold up the others. Every loop here
is bounded in connections and in time, on loopback only."""

from __future__ import annotations

import socket
import statistics
import time

import pytest
from conftest import HOST
from rawhttp import exchange, request

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


@pytest.fixture(scope="module")
def capacity(gatewayd_module):
    return gatewayd_module(CAPACITY)


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
