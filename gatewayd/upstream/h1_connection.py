"""One HTTP/1.1 connection to an upstream target: a request written, its response parsed, one at a time.

Hand-written on asyncio's Protocol and httptools (llhttp) because it is the proxy's hot path: the
design measurements put such a client at 0.47-0.51 of nginx's proxy rate on 2 cores, against 0.32
for pyreqwest, the fastest library measured; in place, it halved gatewayd's CPU per proxied
response (bench/results/2026-12-03-proxy.md has the figures and the profiles).
The protocol object is also the response: the proxy reads `status`, `headers` and the body from it,
so a proxied request allocates one future for the head and, when the body is not in the same
packets as the head, one per wait for more.

Framing is llhttp's, strict: two Content-Lengths, a list or a bad value, obs-folded or NUL-bearing
fields, a bad status line or chunk, and a head still incomplete after MAX_HEAD_BYTES are
`BadResponse` (502 before the head, a cut-off response after). Content-Length beside Transfer-Encoding is read by the chunked framing (RFC 9112 section
6.3) and the connection is not used again. A body without either ends when the connection closes.
1xx answers are skipped (the final one follows); a 101 is refused, as no upgrade was asked for.

A connection is used again only when its response ended in keep-alive (llhttp's verdict: HTTP/1.1
without `Connection: close`, framed) and nothing else arrived: a byte received while no response
is expected (a second response, a body longer than announced) closes it.

Flow control both ways: the upstream is paused (`pause_reading`) while more than HIGH_WATER bytes
of body wait for the client, and an upload waits while the upstream's side is paused
(`pause_writing`).
"""

from __future__ import annotations

import asyncio

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .errors import BadResponse, Closed, ResponseTimeout

HIGH_WATER = 256 * 1024  # response body bytes buffered before the upstream is paused
MAX_HEAD_BYTES = 64 * 1024  # received without a whole response head: refused (llhttp sets no bound)

# where the connection's exchange is (whether the connection itself is open is `closed`)
IDLE = 0  # no request
HEAD = 1  # request sent (or being sent), waiting for the response head
BODY = 2  # head received, body arriving
DONE = 3  # response complete

_NO_BODY = frozenset({204, 304})


def request_head(method: bytes, target: bytes, authority: bytes, fields: bytes) -> bytes:
    """A request's head on the wire: `fields` are its header lines other than Host, each ending in CRLF."""
    return b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (method, target, authority, fields)


class H1Connection(asyncio.Protocol):
    __slots__ = (
        "pool", "key", "loop", "transport", "parser", "state", "closed", "served", "reusable", "idle_since",
        # the exchange in progress
        "status", "headers", "head", "body", "buffered", "waiter", "error", "got", "interim", "head_only",
        "until_close", "mixed", "timer", "drain", "paused", "uploading",
    )  # fmt: skip

    def __init__(self, pool, key, loop: asyncio.AbstractEventLoop):
        self.pool = pool  # told when the connection is gone (h1_pool.H1Pool.gone)
        self.key = key  # the URL of the target it connects to
        self.uploading = None  # the task writing the request body (see h1_pool.H1Pool.put)
        self.loop = loop
        self.transport = None
        self.parser = None
        self.state = IDLE
        self.closed = False
        self.served = 0  # responses completed on it
        self.reusable = False
        self.idle_since = 0.0
        self.head = self.waiter = self.timer = self.drain = self.error = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.got = self.interim = self.head_only = self.until_close = self.paused = False
        self.mixed = None  # chunked beside a Content-Length: known at the first chunk

    # --- the proxy's side ---------------------------------------------------------------------

    def send(self, head: bytes, head_only: bool, timeout: float | None) -> asyncio.Future:
        """Write a request head; the future is the response head's (`status` and `headers` are set
        when it resolves; it fails with an UpstreamError). `head_only`: a HEAD request, whose answer
        has no body whatever its framing says. `timeout`: the request is whole (it has no body), and
        `arm` starts at once; None: `upload` follows."""
        self.parser = HttpResponseParser(self)
        # Content-Length beside chunked: chunked wins, and the connection is not reused (see on_chunk_header)
        self.parser.set_dangerous_leniencies(lenient_chunked_length=True)
        self.state = HEAD
        self.headers = []
        self.body = []
        self.buffered = 0
        self.error = None
        self.got = self.interim = self.until_close = False
        self.mixed = None
        self.head_only = head_only
        self.reusable = False
        fut = self.head = self.loop.create_future()
        if self.closed:  # (a server that spoke first, before any request)
            fut.set_exception(Closed("the upstream closed the connection before answering"))
        else:
            self.transport.write(head)
            if timeout is not None:
                self.timer = self.loop.call_later(timeout, self._timed_out, timeout)
        return fut

    def arm(self, timeout: float) -> None:
        """The request has been sent whole: the response head must come within `timeout` seconds."""
        if self.state == HEAD and self.timer is None:
            self.timer = self.loop.call_later(timeout, self._timed_out, timeout)

    async def upload(self, chunks, chunked: bool, timeout: float) -> None:
        """Write the request body from the async iterable `chunks` (in chunked framing if `chunked`),
        then `arm(timeout)`. While the upstream does not take what is written, the wait is bounded
        by `timeout` too; a slow client is not the upstream's fault. A failure, of the body's
        source included, ends the exchange with that exception (see `fail`)."""
        write = self.transport.write
        try:
            async for chunk in chunks:
                if self.closed or self.error is not None:
                    return
                if chunked:
                    self.transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    write(chunk)
                if self.drain is not None:
                    try:
                        async with asyncio.timeout(timeout):
                            await self.drain
                    except TimeoutError:
                        return self.fail(ResponseTimeout(f"the upstream took no request body for {timeout:g}s"))
            if chunked and not self.closed:
                write(b"0\r\n\r\n")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the body's source (the client) failed: it ends the exchange
            return self.fail(exc)
        self.arm(timeout)

    def take(self) -> bytes:
        """The body received since the last call (b"" if none)."""
        body = self.body
        if not body:
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        self.buffered = 0
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def more(self, timeout: float) -> None:
        """Wait until there is body to `take`, or it has ended (`state` DONE); raises what ended it
        otherwise, a silence of `timeout` seconds included (`ResponseTimeout`, the connection closed)."""
        if self.body or self.state == DONE:
            return
        if self.error is None:
            waiter = self.waiter = self.loop.create_future()
            timer = self.loop.call_later(timeout, self._silent, timeout)
            try:
                await waiter
            finally:
                timer.cancel()
        if self.error is not None and not self.body:
            raise self.error

    def fail(self, error: Exception) -> None:
        """End the exchange with `error` (raised to whoever waits for the head or the body) and the connection."""
        if self.state == HEAD:
            head = self.head
            if head is not None and not head.done():
                head.set_exception(error)
        elif self.state == BODY:
            self.error = error
            self._wake()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self._ended()
            self.transport.abort()

    # --- asyncio's side ------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state != HEAD and state != BODY:  # nothing was asked: the connection cannot be trusted
            self.reusable = False
            if state == IDLE:
                self.close()
            return
        self.got = True
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self.fail(BadResponse("the upstream switched protocols, which nobody asked for"))
        except HttpParserError as exc:
            if self.state == DONE:  # bytes after a whole response: it stands, the connection does not
                self.reusable = False
            else:
                self.fail(BadResponse(f"malformed response: {exc}"))
        else:
            if self.state == HEAD:  # (no body is buffered before the head: `buffered` counts the head's bytes)
                self.buffered += len(data)
                if self.buffered > MAX_HEAD_BYTES:
                    self.fail(BadResponse(f"no whole response head in {self.buffered} bytes"))

    def eof_received(self):
        return None  # close

    def connection_lost(self, exc) -> None:
        state = self.state
        if state == HEAD:
            head = self.head
            if head is not None and not head.done():
                stale = not self.got and self.served > 0
                head.set_exception(Closed("the upstream closed the connection before answering", stale))
        elif state == BODY:
            if self.until_close and exc is None:
                self.state = DONE  # the body was delimited by the close
            else:
                self.error = Closed("the upstream closed the connection in the middle of the response")
            self._wake()
        if not self.closed:
            self._ended()
        self.resume_writing()  # an upload waiting for room finds the connection closed

    def pause_writing(self) -> None:
        if self.drain is None:
            self.drain = self.loop.create_future()

    def resume_writing(self) -> None:
        drain, self.drain = self.drain, None
        _resolve(drain)

    # --- httptools' callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state == HEAD:  # (not a trailer field, nor a field of a second response)
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.state != HEAD:  # a second response on the heels of this one
            self.reusable = False
            return
        status = self.parser.get_status_code()
        if status < 200:  # interim (100 Continue, 103 Early Hints): the final answer follows
            self.headers = []
            self.interim = True
            return
        self.status = status
        self.buffered = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.head_only or status in _NO_BODY:
            self._complete()
        else:
            self.state = BODY
            if not self.parser.should_keep_alive():  # Connection: close, HTTP/1.0, or a body up to the close
                names = {name for name, _ in self.headers}
                self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self.head.set_result(None)

    def on_body(self, data: bytes) -> None:
        if self.state != BODY:  # beyond the response's end
            self.reusable = False
            return
        self.body.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        if self.waiter is not None:
            self._wake()

    def on_chunk_header(self) -> None:
        if self.mixed is None:  # llhttp (lenient here) ignores the Content-Length, but still says keep-alive
            self.mixed = any(name == b"content-length" for name, _ in self.headers)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.state == BODY:
            self._complete()

    # --- internals -------------------------------------------------------------------------------

    def _complete(self) -> None:
        self.state = DONE
        self.served += 1
        self.reusable = self.parser.should_keep_alive() and not self.mixed  # (asked here: llhttp resets it after)
        if self.waiter is not None:
            self._wake()

    def _wake(self) -> None:
        waiter, self.waiter = self.waiter, None
        _resolve(waiter)

    def _timed_out(self, timeout: float) -> None:
        self.timer = None
        self.fail(ResponseTimeout(f"no response within {timeout:g}s"))

    def _silent(self, timeout: float) -> None:
        self.fail(ResponseTimeout(f"the upstream sent nothing of the response body for {timeout:g}s"))

    def _ended(self) -> None:
        """The connection is over: its slot in the pool is free."""
        self.closed = True
        self.reusable = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool.gone(self)


def _resolve(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
