"""HTTP/1.1 on raw sockets, both ends, for the tests that send what no client library would.

`Recorder` is an upstream that keeps every request it receives (request line, headers, body, and on
which connection) and answers each with what its `answer` callable returns, as raw bytes: so a test
can assert exactly what reached the upstream, and make the upstream answer with broken framing.
`exchange` sends raw bytes to a server and parses whatever responses come back.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
TIMEOUT_S = 10.0


@dataclass
class Seen:
    """One request as the upstream received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # which accepted connection it came on, from 1

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return values[-1] if values else None


def ok_json(seen: Seen) -> bytes:
    """The default answer: 200 with a JSON body saying what was seen."""
    body = json.dumps({"target": seen.target, "method": seen.method, "body": seen.body.decode("latin-1")}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class Recorder:
    """A threaded upstream on a free loopback port. Requests are parsed leniently (it only ever hears
    the gateway, which frames its requests properly) and kept in `seen`; `answer(seen)` gives the raw
    bytes to send back (None: close the connection without answering; `(bytes, "close")`: send them,
    then close)."""

    def __init__(self, answer=ok_json):
        self.answer = answer
        self.seen: list[Seen] = []
        self.connections = 0
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn, self.connections), daemon=True).start()

    def _handle(self, conn: socket.socket, index: int) -> None:
        conn.settimeout(0.2)
        buf = b""
        deadline = time.monotonic() + 60
        with conn:
            while not self._stop.is_set() and time.monotonic() < deadline:
                request, buf = _parse_request(buf)
                if request is None:
                    try:
                        data = conn.recv(65536)
                    except TimeoutError:
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    buf += data
                    continue
                method, target, headers, body = request
                seen = Seen(method, target, headers, body, index)
                self.seen.append(seen)
                reply = self.answer(seen)
                if reply is None:
                    return
                close = isinstance(reply, tuple)  # (bytes, "close"): send, then close the connection
                try:
                    conn.sendall(reply[0] if close else reply)
                except OSError:
                    return
                if close:
                    return

    def targets(self) -> list[str]:
        return [s.target for s in self.seen]

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)


def _parse_request(buf: bytes):
    """((method, target, headers, body), rest) once a whole request is in `buf`, else (None, buf)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, buf
    lines = buf[:end].decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    rest = buf[end + 4 :]
    names = {n.lower(): v for n, v in headers}
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                return None, buf
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                return None, buf
            body += rest[line_end + 2 : line_end + 2 + size]
            rest = rest[line_end + 2 + size + 2 :]
            if size == 0:
                break
    else:
        length = int(names.get("content-length", "0"))
        if len(rest) < length:
            return None, buf
        body, rest = rest[:length], rest[length:]
    return (method, target, headers, body), rest


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name]
        return values[-1] if values else None

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Exchanged:
    responses: list[Response] = field(default_factory=list)
    closed: bool = False  # the server closed the connection (EOF or reset)
    raw: bytes = b""

    @property
    def status(self) -> int | None:
        return self.responses[0].status if self.responses else None


def parse_responses(raw: bytes) -> list[Response]:
    """Every complete response in `raw` (Content-Length or chunked bodies; none for 1xx, 204, 304)."""
    out = []
    while True:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return out
        lines = raw[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
        names = {n.lower(): v for n, v in headers}
        rest = raw[end + 4 :]
        if names.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                line_end = rest.find(b"\r\n")
                if line_end < 0:
                    return out
                size = int(rest[:line_end].split(b";")[0], 16)
                if len(rest) < line_end + 4 + size:
                    return out
                body += rest[line_end + 2 : line_end + 2 + size]
                rest = rest[line_end + 4 + size :]
                if size == 0:
                    break
        elif status < 200 or status in (204, 304):
            body = b""
        else:
            length = int(names.get("content-length", "0"))
            if len(rest) < length:
                return out
            body, rest = rest[:length], rest[length:]
        out.append(Response(status, headers, body))
        raw = rest


def exchange(port: int, data: bytes, *, expect: int = 1, timeout: float = TIMEOUT_S, wait_close: float = 0.0) -> Exchanged:
    """Send `data` on a new connection and read until `expect` responses are in (then up to
    `wait_close` seconds more, to see whether the server closes), the server closes, or `timeout`."""
    result = Exchanged()
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading it all: what it said is still to be read
        deadline = time.monotonic() + timeout
        close_deadline = None
        while True:
            now = time.monotonic()
            limit = deadline if close_deadline is None else min(deadline, close_deadline)
            if now >= limit:
                break
            s.settimeout(max(0.01, limit - now))
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                result.closed = True
                break
            except TimeoutError:
                break
            if not chunk:
                result.closed = True
                break
            result.raw += chunk
            if close_deadline is None and len(parse_responses(result.raw)) >= expect:
                if not wait_close:
                    break
                close_deadline = time.monotonic() + wait_close
    result.responses = parse_responses(result.raw)
    return result


def request(target: str, host: str = "gw.test", method: str = "GET", extra: str = "") -> bytes:
    """One request head, as bytes: `target` and `extra` header lines (each ending in CRLF) as given."""
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode("latin-1")


def seconds_until_closed(s: socket.socket, limit: float) -> float | None:
    """How long until the peer closes `s` (reading and dropping what comes); None if still open after `limit`."""
    t0 = time.monotonic()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return time.monotonic() - t0
