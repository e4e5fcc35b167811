"""A scripted origin server for the HTTP caching conformance tests.

A test programs each path (the request target, query included) with the replies to give, in
order; once the list is used up, its last reply repeats. The origin records every request it
receives (method, target, header fields, body, time of arrival and of the reply), so a test can
check what went upstream: how many requests, and which conditional header fields they carried.

Like a real origin server, a reply with an `ETag` or a `Last-Modified` answers a conditional GET or
HEAD itself (RFC 9110 section 13.1.2 and 13.1.3) with a 304 carrying the reply's header fields
but no content, unless `validate=False`.

Standard library only (the request record extends rawhttp.Seen): a threaded HTTP/1.1 server
(persistent connections, Content-Length or chunked request bodies) on a free loopback port.
"""

from __future__ import annotations

import email.utils
import http.server
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus

import rawhttp

HOST = "127.0.0.1"
IDLE_TIMEOUT_S = 30.0  # a connection the gateway leaves idle this long is closed
NO_CONTENT = (204, 304)


def http_date(when: float | None = None) -> str:
    """An IMF-fixdate (RFC 9110 section 5.6.7) for the Unix time `when` (now when None)."""
    return email.utils.formatdate(time.time() if when is None else when, usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp() if parsed is not None else None


@dataclass
class Seen(rawhttp.Seen):
    """One request as the origin received it (`connection`: which accepted connection, from 1)."""

    at: float = 0.0  # time.monotonic() on arrival
    answered: float | None = None  # time.monotonic() when the reply was sent (None: dropped or not yet)
    status: int | None = None  # the status sent (-1: dropped; None: not yet)

    def header(self, name: str) -> str | None:
        """The field's value (several field lines joined with ", "), or None when absent."""
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def conditional(self) -> bool:
        return any(
            self.header(n) is not None
            for n in ("if-none-match", "if-modified-since", "if-match", "if-unmodified-since")
        )


@dataclass
class Reply:
    """What the origin answers. `headers` as a mapping or (name, value) pairs (repeat a name for
    several field lines), or a callable that gets the `Seen` request and returns them. `body` None gives a body naming the target and the request's number at
    this target (so a test tells which reply a client got); a callable gets the `Seen` request.
    `date` False sends no Date (unless `headers` has one); a number is the Unix time to send.
    `delay` seconds before the reply is sent. `drop` closes the connection without answering;
    `truncate` sends the header section and half the content, then closes the connection."""

    status: int = 200
    headers: dict[str, str] | Iterable[tuple[str, str]] | Callable[[Seen], object] = ()
    body: bytes | str | Callable[[Seen], bytes | str] | None = None
    delay: float = 0.0
    date: bool | float = True
    drop: bool = False
    chunked: bool = False
    validate: bool = True
    truncate: bool = False

    def header_list(self, seen: Seen) -> list[tuple[str, str]]:
        items = self.headers(seen) if callable(self.headers) else self.headers
        items = items.items() if isinstance(items, dict) else items
        return [(str(n), str(v)) for n, v in items]


def body_for(target: str, number: int) -> bytes:
    """The default body of the `number`th reply (from 1) to `target`."""
    return f"{target} reply {number}".encode()


def _etags(value: str) -> list[str]:
    """The entity tags of an If-None-Match value, opaque parts only (weak comparison), or ["*"]."""
    tags = []
    for part in value.split(","):
        part = part.strip()
        part = part.removeprefix("W/")
        if part:
            tags.append(part)
    return tags


def _not_modified(reply: Reply, seen: Seen) -> bool:
    """RFC 9110 section 13.2.2: If-None-Match first, else If-Modified-Since (GET and HEAD only)."""
    if not reply.validate or reply.status != 200 or seen.method not in ("GET", "HEAD"):
        return False
    headers = {n.lower(): v for n, v in reply.header_list(seen)}
    inm = seen.header("if-none-match")
    if inm is not None:
        etag = headers.get("etag")
        if etag is None:
            return False
        mine = etag.removeprefix("W/")
        tags = _etags(inm)
        return "*" in tags or mine in tags
    ims = parse_http_date(seen.header("if-modified-since"))
    last_modified = parse_http_date(headers.get("last-modified"))
    return ims is not None and last_modified is not None and last_modified <= ims


class Origin:
    """The scripted origin, serving from a daemon thread until `close()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._scripts: dict[str, list[Reply]] = {}
        self._seen: list[Seen] = []
        self._connections = 0
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT_S

            def log_message(self, *args) -> None:  # quiet
                pass

            def setup(self) -> None:
                super().setup()
                with origin._lock:
                    origin._connections += 1
                    self.connection_number = origin._connections

            def handle_one_request(self) -> None:
                try:
                    self.raw_requestline = self.rfile.readline(65537)
                except (TimeoutError, OSError):
                    self.close_connection = True
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return
                origin._handle(self)

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    # --- programming and inspecting -------------------------------------------------------------

    def script(self, target: str, *replies: Reply) -> None:
        """Program `target` (path and query, as the request line carries it) with `replies`."""
        assert replies, "at least one reply"
        with self._lock:
            self._scripts[target] = list(replies)

    def seen(self, target: str | None = None, method: str | None = None) -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self._seen
                if (target is None or s.target == target) and (method is None or s.method == method)
            ]

    def count(self, target: str, method: str | None = None) -> int:
        return len(self.seen(target, method))

    def wait_for(self, target: str, n: int, timeout: float = 5.0, answered: bool = False) -> bool:
        """Wait until `target` got at least `n` requests (and, with `answered`, all of them were
        answered or dropped); False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [s for s in self._seen if s.target == target]
                if len(got) >= n and (not answered or all(s.answered is not None or s.status == -1 for s in got)):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # --- serving ----------------------------------------------------------------------------------

    def _handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        headers = list(h.headers.items())
        body = _read_body(h)
        if body is None:
            h.close_connection = True
            return
        seen = Seen(h.command, h.path, headers, body, h.connection_number, time.monotonic())
        with self._changed:
            number = sum(1 for s in self._seen if s.target == seen.target) + 1
            self._seen.append(seen)
            script = self._scripts.get(seen.target)
            self._changed.notify_all()
        if script is None:
            reply = Reply(404, {"Cache-Control": "no-store", "Content-Type": "text/plain"}, b"not scripted")
        else:
            reply = script[min(number, len(script)) - 1]
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            h.close_connection = True
            with self._changed:
                seen.status = -1
                self._changed.notify_all()
            return
        raw = self._render(reply, seen, number)
        if reply.truncate:
            raw = raw[: len(raw) - max(1, len(raw) - raw.index(b"\r\n\r\n") - 4) // 2]
            h.close_connection = True
        try:
            h.wfile.write(raw)
            h.wfile.flush()
        except OSError:
            h.close_connection = True
        with self._changed:
            seen.answered = time.monotonic()
            seen.status = int(raw.split(b" ", 2)[1])
            self._changed.notify_all()

    @staticmethod
    def _render(reply: Reply, seen: Seen, number: int) -> bytes:
        status = reply.status
        fields = reply.header_list(seen)
        names = {n.lower() for n, _ in fields}
        if _not_modified(reply, seen):
            status = 304
            fields = [
                (n, v) for n, v in fields if n.lower() not in ("content-length", "content-type", "transfer-encoding")
            ]
        if "date" not in names and reply.date is not False:
            fields.append(("Date", http_date(None if reply.date is True else float(reply.date))))
        if callable(reply.body):
            content = reply.body(seen)
        else:
            content = body_for(seen.target, number) if reply.body is None else reply.body
        content = content.encode() if isinstance(content, str) else content
        if status in NO_CONTENT or status < 200:
            content = b""
            framing = []
        elif reply.chunked:
            framing = [("Transfer-Encoding", "chunked")]
        else:
            framing = [] if "content-length" in names else [("Content-Length", str(len(content)))]
        if "content-type" not in names and status not in NO_CONTENT:
            fields.append(("Content-Type", "text/plain"))
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields + framing) + "\r\n"
        if seen.method == "HEAD" or not content and not reply.chunked:
            return head.encode("latin-1")
        if reply.chunked:
            half = len(content) // 2
            chunks = [c for c in (content[:half], content[half:]) if c]
            payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
            return head.encode("latin-1") + payload
        return head.encode("latin-1") + content


def _read_body(h: http.server.BaseHTTPRequestHandler) -> bytes | None:
    """The request's content (None when the connection broke while reading it)."""
    try:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            for _ in range(100_000):
                size_line = h.rfile.readline(1024)
                if not size_line:
                    return None
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += h.rfile.read(size)
                h.rfile.readline(8)
            return None
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""
    except (OSError, ValueError):
        return None
