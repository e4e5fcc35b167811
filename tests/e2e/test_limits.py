"""`server.limits` and `server.tcp_fastopen` on both engines: oversized bodies get 413 (before any
upstream contact when Content-Length says so), oversized headers 431 without harming the server, slow
request heads and idle connections are cut off, HTTP/2 advertises its stream limit, and the listening
sockets have TCP_FASTOPEN set."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import threading
import time

import httpx
import pytest
from conftest import HOST
from rawhttp import seconds_until_closed

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.config.model import Limits, Listen

h2_connection = pytest.importorskip("h2.connection", reason="the h2 package is needed to speak HTTP/2 frame by frame")
import h2.config  # noqa: E402
import h2.events  # noqa: E402
import h2.exceptions  # noqa: E402
import h2.settings  # noqa: E402

CLIENT_TIMEOUT_S = 10.0
MAX_BODY = 1024
MAX_HEADERS = 8 * 1024
STREAMS = 37

CONFIG = """
version: 1
server:
  tcp_fastopen: true
  limits:
    max_header_bytes: 8KiB
    max_body_bytes: 1KiB
    header_read_timeout: 1s
    keep_alive_timeout: 2s
    max_concurrent_streams: 37
upstreams:
  sink:
    targets: ["http://{host}:{sink}"]
    timeouts: {{response: 5s}}
  echo:
    targets: ["{echo}"]
routes:
  - match: {{path_prefix: /sink}}
    upstream: sink
  - match: {{path_prefix: /echo}}
    upstream: echo
  - match: {{path: /}}
    respond: {{json: {{ok: true}}}}
"""


class Sink:
    """An upstream that accepts connections and reads what comes, but never answers; counts connections."""

    def __init__(self):
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    if not conn.recv(65536):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def sink():
    s = Sink()
    yield s
    s.close()


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, sink):
    return gatewayd_module(CONFIG.format(host=HOST, sink=sink.port, echo=upstream("echo").url))


# --- clients ----------------------------------------------------------------------------------


def raw_http1(port: int, data: bytes, timeout: float = CLIENT_TIMEOUT_S) -> bytes:
    """Send `data` on a new connection; everything the server sends until it closes (or `timeout`)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading it all: what it said is still to be read
        out = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and _complete(out):
                break
        return out


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_and_json(response: bytes) -> tuple[int, dict | None]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


class H2Result:
    def __init__(self):
        self.status: int | None = None
        self.body = b""
        self.reset: int | None = None  # RST_STREAM's error code
        self.goaway: int | None = None  # GOAWAY's error code
        self.settings: dict[int, int] = {}
        self.ended = False


def h2_exchange(
    port: int, method: str = "GET", path: str = "/", headers=(), chunks=(), end_stream: bool = True, wait_response: bool = True
) -> H2Result:
    """One HTTP/2 request with prior knowledge, sent frame by frame with the h2 library (which, unlike
    curl 7.88 and httpx, reads a response that arrives before its upload is complete). With
    `end_stream` false, the request stays open after its last chunk."""
    result = H2Result()
    conn = h2_connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    with socket.create_connection((HOST, port), timeout=CLIENT_TIMEOUT_S) as s:
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        pseudo = [(":method", method), (":path", path), (":scheme", "http"), (":authority", f"{HOST}:{port}")]
        conn.send_headers(sid, pseudo + list(headers), end_stream=not chunks)
        for i, chunk in enumerate(chunks):
            conn.send_data(sid, chunk, end_stream=end_stream and i == len(chunks) - 1)
        s.sendall(conn.data_to_send())
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while time.monotonic() < deadline and not (result.ended or (not wait_response and result.settings)):
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError:
                break
            for event in events:
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    result.settings.update({int(k): v.new_value for k, v in event.changed_settings.items()})
                elif isinstance(event, h2.events.ResponseReceived):
                    result.status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    result.body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    result.ended = True
                elif isinstance(event, h2.events.StreamReset):
                    result.reset, result.ended = event.error_code, True
                elif isinstance(event, h2.events.ConnectionTerminated):
                    result.goaway, result.ended = event.error_code, True
            try:
                s.sendall(conn.data_to_send())
            except OSError:
                break
    return result


def get_ok(gw) -> None:
    """The gateway still serves, over HTTP/1.1 and HTTP/2."""
    r = httpx.get(f"{gw.url}/", timeout=CLIENT_TIMEOUT_S)
    assert r.status_code == 200 and r.json() == {"ok": True}
    h2r = h2_exchange(gw.port)
    assert h2r.status == 200 and json.loads(h2r.body) == {"ok": True}


# --- max_body_bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/sink/upload", "/"])
def test_content_length_over_the_limit_is_refused_at_once(gw, sink, path):
    """Only the head is sent: the 413 comes without waiting for the body, and no upstream is contacted."""
    before = sink.accepted
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
    status, body = status_and_json(raw_http1(gw.port, head.encode()))
    assert status == 413
    assert body["error"] == "body_too_large" and str(MAX_BODY) in body["message"] and body["request_id"]
    time.sleep(0.2)
    assert sink.accepted == before


def test_an_absurd_content_length_is_a_4xx_not_a_crash(gw):
    head = f"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {'9' * 5000}\r\n\r\n"
    reply = raw_http1(gw.port, head.encode())
    assert reply.startswith(b"HTTP/1.1 4"), reply[:100]
    assert gw.health()["status"] == "ok"


def test_content_length_over_the_limit_is_refused_at_once_over_http2(gw, sink):
    before = sink.accepted
    r = h2_exchange(gw.port, "POST", "/sink/upload", [("content-length", str(10 * MAX_BODY))], [b"x" * 100], end_stream=False)
    assert r.status == 413 and json.loads(r.body)["error"] == "body_too_large"
    time.sleep(0.2)
    assert sink.accepted == before


def test_body_at_the_limit_is_forwarded(gw):
    body = os.urandom(MAX_BODY)
    r = httpx.post(f"{gw.url}/echo/x", content=body, timeout=CLIENT_TIMEOUT_S)
    assert r.status_code == 200 and r.content == body
    h2r = h2_exchange(gw.port, "POST", "/echo/x", chunks=[body[:500], body[500:]])  # no Content-Length
    assert h2r.status == 200 and h2r.body == body


def test_chunked_body_over_the_limit_gets_413(gw):
    chunks = b"".join(b"%x\r\n%s\r\n" % (512, b"y" * 512) for _ in range(4)) + b"0\r\n\r\n"
    head = f"POST /sink/upload HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    status, body = status_and_json(raw_http1(gw.port, head + chunks))
    assert status == 413 and body["error"] == "body_too_large"


def test_http2_body_without_length_over_the_limit_gets_413(gw):
    r = h2_exchange(gw.port, "POST", "/sink/upload", chunks=[b"z" * 512] * 4)
    assert r.status == 413 and json.loads(r.body)["error"] == "body_too_large"


def test_http2_upload_going_on_after_its_413_is_stopped_and_the_connection_kept(gw):
    """A client that keeps sending the body of a stream already answered (RFC 9113 section 8.1 lets the
    server answer first) neither loses the connection nor gets to send without end: the stream is
    reset (NO_ERROR on Hypercorn, which asks it to stop sending; Granian's hyper may pick another
    code), and a new request on the same connection is answered."""
    conn = h2_connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    authority = f"{HOST}:{gw.port}"
    chunk, sent_limit = b"u" * 4096, 4 * 1024 * 1024
    statuses: dict[int, int] = {}
    ended: set[int] = set()
    reset: dict[int, int] = {}

    def pump(s: socket.socket) -> None:
        s.sendall(conn.data_to_send())
        data = s.recv(65536)
        assert data, "the connection was closed"
        for event in conn.receive_data(data):
            assert not isinstance(event, h2.events.ConnectionTerminated), event
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = int(dict(event.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                reset[event.stream_id] = event.error_code
        s.sendall(conn.data_to_send())

    with socket.create_connection((HOST, gw.port), timeout=CLIENT_TIMEOUT_S) as s:
        conn.initiate_connection()
        upload = conn.get_next_available_stream_id()
        conn.send_headers(upload, [(":method", "POST"), (":path", "/sink/upload"), (":scheme", "http"), (":authority", authority)])
        conn.send_data(upload, b"z" * (2 * MAX_BODY))
        deadline = time.monotonic() + CLIENT_TIMEOUT_S
        while upload not in ended and upload not in reset and time.monotonic() < deadline:
            pump(s)
        assert statuses.get(upload) == 413
        sent = 0
        while upload not in reset and sent < sent_limit and time.monotonic() < deadline:
            window = min(conn.local_flow_control_window(upload), len(chunk))
            if window > 0:
                conn.send_data(upload, chunk[:window])
                sent += window
                s.sendall(conn.data_to_send())
            else:
                pump(s)
        assert upload in reset, f"the stream was not reset after {sent} more bytes"
        follow = conn.get_next_available_stream_id()
        conn.send_headers(follow, [(":method", "GET"), (":path", "/echo/after"), (":scheme", "http"), (":authority", authority)], end_stream=True)
        while follow not in ended and follow not in reset and time.monotonic() < deadline:
            pump(s)
        assert statuses.get(follow) == 200 and follow in ended
    print(f"reset with code {reset[upload]} after {sent} more bytes")
    if gw.engine == "hypercorn":
        assert reset[upload] == 0 and sent <= 128 * 1024


# --- max_header_bytes ---------------------------------------------------------------------------


def test_headers_over_the_limit_get_431(gw):
    big = "a" * (MAX_HEADERS + 100)
    r = httpx.get(f"{gw.url}/", headers={"X-Big": big}, timeout=CLIENT_TIMEOUT_S)
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    h2r = h2_exchange(gw.port, headers=[("x-big", big)])
    assert h2r.status == 431 and json.loads(h2r.body)["error"] == "headers_too_large"
    r = httpx.get(f"{gw.url}/", headers={"X-Fits": "a" * (MAX_HEADERS - 500)}, timeout=CLIENT_TIMEOUT_S)
    assert r.status_code == 200
    get_ok(gw)


@pytest.mark.parametrize("size", [64 * 1024, 600 * 1024])
def test_huge_headers_get_a_4xx_and_the_server_keeps_serving(gw, size):
    """Far over the limit, the engine refuses the head before the app sees it: 431 or 400 (over HTTP/2
    also a reset stream or, from Granian when the block is far beyond what it advertised, GOAWAY)."""
    head = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Huge: {'h' * size}\r\n\r\n".encode()
    response = raw_http1(gw.port, head)
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else None
    assert status in (400, 431), response[:200]
    if size < 100 * 1024:  # one HPACK-encoded header field of 64 KiB over HTTP/2
        h2r = h2_exchange(gw.port, headers=[("x-huge", "h" * size)])
        assert h2r.status in (400, 431) or h2r.reset is not None or h2r.goaway is not None, vars(h2r)
    get_ok(gw)


def _head(fields: list[tuple[str, str]]) -> bytes:
    lines = ["GET / HTTP/1.1", f"Host: {HOST}", *(f"{name}: {value}" for name, value in fields), "", ""]
    return "\r\n".join(lines).encode()


# request heads an engine may refuse before the gateway sees them, and whether Granian lets the
# gateway answer (Hypercorn always does; README, "Protocols and limits")
REFUSED_HEADS = {
    "100 fields of 1 KiB": (_head([(f"X-F{i}", "f" * 1024) for i in range(100)]), 431, False),
    "one field of 64 KiB": (_head([("X-Huge", "h" * 64 * 1024)]), 431, True),
    "a field without a colon": (f"GET / HTTP/1.1\r\nHost {HOST}\r\n\r\n".encode(), 400, False),
}


@pytest.mark.parametrize("case", REFUSED_HEADS)
def test_refused_heads_get_the_gateways_json_error_where_the_engine_lets_it(gw, case):
    head, status, on_granian = REFUSED_HEADS[case]
    response = raw_http1(gw.port, head)
    start, _, body = response.partition(b"\r\n\r\n")
    lines = start.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status}"), response[:300]
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    if gw.engine == "granian" and not on_granian:
        assert body == b""  # Granian's own answer
    else:
        answer = json.loads(body)
        assert answer["error"] == ("headers_too_large" if status == 431 else "bad_request")
        assert answer["request_id"] == headers["x-request-id"]
        assert headers["content-type"] == "application/json" and "date" in headers
    get_ok(gw)


# --- header_read_timeout and keep_alive_timeout -------------------------------------------------


def test_half_a_request_line_is_cut_off_after_header_read_timeout(gw):
    with socket.create_connection((HOST, gw.port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(b"GET /hal")
        waited = seconds_until_closed(s, 8.0)
    assert waited is not None and 0.7 <= waited <= 4.0, waited
    get_ok(gw)


def test_a_slow_head_within_the_timeout_is_served(gw):
    with socket.create_connection((HOST, gw.port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(0.3)
        s.sendall(f"Host: {HOST}\r\n\r\n".encode())
        head = s.recv(65536)
    assert head.startswith(b"HTTP/1.1 200")


def test_idle_keep_alive_connection_is_closed(gw):
    """Both engines close an idle HTTP/1.1 connection after keep_alive_timeout (2s here; Granian's
    own timer, header_read_timeout, is 1s here: the watchdog applies keep_alive_timeout)."""
    with socket.create_connection((HOST, gw.port), timeout=CLIENT_TIMEOUT_S) as s:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        response = b""
        while not _complete(response):
            chunk = s.recv(65536)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")
        waited = seconds_until_closed(s, 8.0)
    assert waited is not None and 2.0 * 0.7 <= waited <= 2.0 + 3.0, waited


# --- max_concurrent_streams ---------------------------------------------------------------------


def test_max_concurrent_streams_is_advertised(gw):
    r = h2_exchange(gw.port, wait_response=False)
    assert r.settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS) == STREAMS, r.settings


# --- tcp_fastopen -------------------------------------------------------------------------------


def _listening_inodes(pid: int, port: int) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = open(f"/proc/{pid}/net/{table}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def fastopen_of_listener(pid: int, port: int) -> int:
    """TCP_FASTOPEN of process `pid`'s socket listening on `port`, read from a copy of its fd (pidfd_getfd)."""
    if not hasattr(os, "pidfd_open"):
        pytest.skip("needs pidfd_open (Linux 5.3+, Python 3.9+)")
    inodes = _listening_inodes(pid, port)
    assert inodes, f"no socket of {pid} listens on {port}"
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd
                if fd < 0:
                    pytest.skip(f"pidfd_getfd is not permitted here: {os.strerror(ctypes.get_errno())}")
                with socket.socket(fileno=fd) as sock:
                    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN)
    finally:
        os.close(pidfd)
    pytest.fail(f"the socket listening on {port} is not among the fds of {pid}")


@pytest.mark.skipif(not hasattr(socket, "TCP_FASTOPEN"), reason="TCP Fast Open is a Linux feature")
def test_listening_socket_has_tcp_fastopen(gw):
    assert fastopen_of_listener(gw.proc.pid, gw.port) > 0
    curl = shutil.which("curl")
    if curl:
        r = subprocess.run([curl, "-sS", "--tcp-fastopen", "--max-time", "10", f"{gw.url}/"], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True}, r.stderr


@pytest.mark.skipif(not hasattr(socket, "TCP_FASTOPEN"), reason="TCP Fast Open is a Linux feature")
def test_sockets_get_tcp_fastopen_when_asked():
    from granian.net import SocketSpec

    from gatewayd.server import sockets

    with sockets.bind(Listen(HOST, 0), fastopen=True) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == sockets.FASTOPEN_QUEUE
    with sockets.bind(Listen(HOST, 0)) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == 0
    holder = SocketSpec(HOST, 0, 128).build()  # how the Granian engine builds its listener
    sockets.set_fastopen(holder.get_fd())
    with socket.socket(fileno=os.dup(holder.get_fd())) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN) == sockets.FASTOPEN_QUEUE


# --- the config ---------------------------------------------------------------------------------

MINIMAL = b"version: 1\nroutes:\n  - match: {path: /}\n    respond: {}\n"


def test_limits_defaults():
    server = load_bytes(MINIMAL, "gateway.yaml").server
    assert server.limits == Limits(16 * 1024, 10 * 1024 * 1024, 30.0, 75.0, 100)
    assert server.tcp_fastopen is False and server.tls is None


def test_limits_are_parsed():
    raw = CONFIG.format(host=HOST, sink=9, echo="http://127.0.0.1:9").encode()
    server = load_bytes(raw, "gateway.yaml").server
    assert server.limits == Limits(MAX_HEADERS, MAX_BODY, 1.0, 2.0, STREAMS)
    assert server.tcp_fastopen is True


@pytest.mark.parametrize(
    "limits, at, message",
    [
        ("{header_read_timeout: 0s}", "0s", "header_read_timeout must be more than 0s"),
        ("{max_body_bytes: 10MB}", "10MB", "10MB"),
        ("{max_concurrent_streams: 0}", "0}", "less than the minimum of 1"),
        ("{max_headers: 1KiB}", "max_headers", "did you mean 'max_header_bytes'"),
    ],
    ids=["zero timeout", "bad size", "zero streams", "unknown key"],
)
def test_bad_limits_are_located_errors(limits, at, message):
    line = f"  limits: {limits}"
    raw = f"version: 1\nserver:\n{line}\nroutes:\n  - match: {{path: /}}\n    respond: {{}}\n".encode()
    with pytest.raises(ConfigError) as bad:
        load_bytes(raw, "gateway.yaml")
    text = str(bad.value)
    assert f"gateway.yaml:3:{line.index(at) + 1}: error:" in text and message in text, text
