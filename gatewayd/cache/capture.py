"""The exchange a cache fetch hands the route's action: it keeps the response instead of sending it.

The action (the proxy) answers through `start`, `send` and `error` as it would to a client. A
response that may be stored is kept whole (up to `max_object` bytes); one that may not, or grows
past that, is handed on to the client the fetch is for (`client`), as it arrives, from then on.
A background refresh has no client: what cannot be stored is dropped. What the proxy reports for
observability (upstream, its time, trace ids) is copied to the client's exchange at the end.
"""

from __future__ import annotations

from ..dispatch.exchange import error_body


async def _no_body():
    return {"type": "http.request", "body": b"", "more_body": False}


class Capture:
    __slots__ = (
        "scope", "receive", "request_id", "consumer", "client", "admit", "max_object", "cache_status",
        "status", "headers", "dated", "chunks", "size", "passing", "done", "failure", "started", "head",
        "upstream", "upstream_ns", "upstream_error", "trace_id", "span_id", "sent", "extra", "stages",
    )  # fmt: skip

    def __init__(self, scope, client, admit, max_object: int, cache_status: bytes, consumer, request_id: bytes):
        """`client`: the Exchange to pass an unstorable response to (None: a background fetch);
        `admit(status, headers)`: whether to keep the response (see serve.py)."""
        self.scope = scope
        self.client = client
        self.head = client is not None and client.scope["method"] == "HEAD"  # fetched as a GET: no body for it
        self.receive = client.receive if client is not None else _no_body
        self.request_id = request_id
        self.consumer = consumer
        self.admit = admit
        self.max_object = max_object
        self.cache_status = cache_status  # the Cache-Status a passed-on response gets
        self.status = None
        self.headers = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.passing = False  # the response goes to the client as it arrives
        self.done = False  # the whole response was received (kept, or passed on)
        self.failure = None  # (status, error, message, headers) when the action answered an error itself
        self.started = False
        self.upstream = self.upstream_ns = self.upstream_error = self.trace_id = self.span_id = None
        self.sent = 0
        self.extra = self.stages = None

    async def start(self, status: int, headers, dated: bool = True) -> None:
        self.started = True
        self.status = status
        self.dated = dated
        self.headers = [(n.lower(), v) for n, v in headers]
        if not self.admit(status, self.headers):
            await self._pass_on()

    async def _pass_on(self) -> None:
        self.passing = True
        client = self.client
        if client is None:
            return
        headers = [*self.headers, (b"cache-status", self.cache_status)]
        await client.start(self.status, headers, self.dated)
        if not self.head:
            for chunk in self.chunks:
                await client.send({"type": "http.response.body", "body": chunk, "more_body": True})
            client.sent = self.size
        self.chunks = []

    async def send(self, message) -> None:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.passing:
            if self.client is not None:
                if self.head:
                    if not more:
                        await self.client.send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    self.client.sent += len(body)
                    await self.client.send(message)
        else:
            if body:
                self.chunks.append(body)
                self.size += len(body)
            if self.size > self.max_object:
                await self._pass_on()
                if not more and self.client is not None:
                    await self.client.send({"type": "http.response.body", "body": b"", "more_body": False})
        if not more:
            self.done = True

    async def respond(self, status: int, headers, body: bytes, dated: bool = True) -> None:
        await self.start(status, headers, dated)
        await self.send({"type": "http.response.body", "body": body})

    async def error(self, status: int, error: str, message: str, headers=()) -> None:
        """The action's own error (no upstream, timeout, body too large): kept for the cache to decide."""
        self.failure = (status, error, message, tuple(headers))

    def body(self) -> bytes:
        return b"".join(self.chunks)

    async def send_failure(self) -> None:
        """Give the client the error the action answered."""
        status, error, message, headers = self.failure
        body = error_body(error, message, self.client.request_id)
        await self.client.respond(
            status,
            [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *headers,
             (b"cache-status", self.cache_status)],
            body,
        )  # fmt: skip

    def report_to(self, ex) -> None:
        """Copy what the proxy learned about the upstream to the client's exchange, for observability."""
        ex.upstream, ex.upstream_ns, ex.upstream_error = self.upstream, self.upstream_ns, self.upstream_error
        ex.trace_id, ex.span_id = self.trace_id, self.span_id
