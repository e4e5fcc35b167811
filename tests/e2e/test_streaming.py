"""Large bodies stream through gatewayd in both directions without being buffered whole:
50 MiB up (echoed back by the upstream) and 50 MiB down, with the gateway's resident memory
watched while they flow."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from pathlib import Path

import httpx
import pytest

MiB = 1024 * 1024
SIZE = 50 * MiB
MAX_GROWTH = 40 * MiB
CHUNK = bytes(range(256)) * 256  # 64 KiB, not all one byte, so reordering would change the hash
TRANSFER_TIMEOUT_S = 60.0

CONFIG = """
version: 1
server:
  limits: {{max_body_bytes: 64MiB}}  # above the 50 MiB sent up (the default is 10MiB)
upstreams:
  a:
    targets: ["{a}"]
    timeouts: {{response: 30s}}
routes:
  - match: {{path_prefix: /api}}
    upstream: a
"""


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream):
    return gatewayd_module(CONFIG.format(a=upstream("a").url))


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class PeakRss:
    """Samples the process's VmRSS in a thread; the kernel's high-water mark is used too when it can be reset."""

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
            except (OSError, AssertionError):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, status_kib(self.pid, "VmRSS"))
        if self.hwm_reset:
            self.peak = max(self.peak, status_kib(self.pid, "VmHWM"))


def upload_echo(port: int, size: int) -> tuple[str, str, int]:
    """POST `size` bytes and read the echo at the same time; (sent sha256, received sha256, received length).

    The body is written from a thread while the response is read: the upstream echoes as it
    receives, so a client that finished sending before reading (as httpx does) would stall once
    the socket buffers filled, precisely because nothing in between buffers the whole body.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TRANSFER_TIMEOUT_S)
    try:
        conn.putrequest("POST", "/api/echo")
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        sent = hashlib.sha256()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                remaining = size
                while remaining > 0:
                    piece = CHUNK[: min(remaining, len(CHUNK))]
                    conn.sock.sendall(piece)
                    sent.update(piece)
                    remaining -= len(piece)
            except BaseException as exc:  # reported by the reader
                errors.append(exc)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        response = conn.getresponse()
        assert response.status == 200, (response.status, response.read(500))
        received = hashlib.sha256()
        n = 0
        deadline = time.monotonic() + TRANSFER_TIMEOUT_S
        while data := response.read(256 * 1024):
            received.update(data)
            n += len(data)
            assert time.monotonic() < deadline, f"echo too slow: {n} bytes in {TRANSFER_TIMEOUT_S}s"
        writer.join(timeout=TRANSFER_TIMEOUT_S)
        assert not writer.is_alive(), "the request body writer is stuck"
        assert not errors, errors
        return sent.hexdigest(), received.hexdigest(), n
    finally:
        conn.close()


def download(url: str) -> tuple[int, int]:
    """GET a streamed body, reading it in pieces; (status, length)."""
    n = 0
    with httpx.Client(timeout=TRANSFER_TIMEOUT_S) as client:
        with client.stream("GET", url) as r:
            for data in r.iter_bytes(256 * 1024):
                n += len(data)
            return r.status_code, n


def test_small_streams_roundtrip(gw):
    sent, received, n = upload_echo(gw.port, 3 * MiB + 17)
    assert n == 3 * MiB + 17
    assert sent == received
    assert download(f"{gw.url}/api/bytes/{MiB + 5}") == (200, MiB + 5)


def test_50mib_up_and_down_with_bounded_memory(gw):
    # warm up: the first proxied requests build the upstream client, its runtime and buffers
    upload_echo(gw.port, 2 * MiB)
    download(f"{gw.url}/api/bytes/{2 * MiB}")
    pid = gw.proc.pid
    before = status_kib(pid, "VmRSS")
    with PeakRss(pid) as peak:
        sent, received, n = upload_echo(gw.port, SIZE)
        status, down = download(f"{gw.url}/api/bytes/{SIZE}")
    after = status_kib(pid, "VmRSS")

    assert n == SIZE
    assert sent == received, "the echoed body differs from the one sent"
    assert (status, down) == (200, SIZE)
    assert after - before < MAX_GROWTH, f"RSS grew by {(after - before) / MiB:.1f} MiB"
    assert peak.peak - before < MAX_GROWTH, f"peak RSS was {(peak.peak - before) / MiB:.1f} MiB above the start"
