"""A request body read whole, within a bound, and handed on to the action as if it had not been read.

A policy that must see the body before the upstream does (validation) reads it from the ASGI
`receive` with `read`, then replaces `exchange.receive` with `replay(...)`: the action then gets the
body as one `http.request` message, and later calls (an `http.disconnect`) go to the server's own
`receive`. The proxy frames what it forwards from the request's headers (Content-Length, or
Transfer-Encoding, or for HTTP/2 and HTTP/3 the first message), and a replayed body keeps both.
"""

from __future__ import annotations

# HTTP versions whose requests may carry a body with neither Content-Length nor Transfer-Encoding
FRAMED = frozenset({"2", "3"})


_FRAMING = frozenset({b"content-type", b"content-length", b"transfer-encoding"})


class TooLarge(Exception):
    """The body grew past the bound it was read with."""


class Gone(Exception):
    """The client disconnected before its body was whole."""


def framing(headers) -> tuple[bytes | None, int | None, bool]:
    """(Content-Type, Content-Length, chunked) of a request's ASGI headers; a length that is not a
    number (which the servers refuse before the app sees it) counts as absent."""
    ctype = length = None
    chunked = False
    for name, value in headers:
        if name in _FRAMING:  # one set lookup for the headers that are none of them
            if name == b"content-type":
                ctype = value
            elif name == b"content-length":
                length = value
            else:
                chunked = True
    if chunked or length is None or not length.isdigit():
        return ctype, None, chunked  # Transfer-Encoding wins over Content-Length (RFC 9112 section 6.3)
    return ctype, int(length), False


def has_body(length: int | None, chunked: bool, http_version: str | None) -> bool | None:
    """Whether a request has a body by its headers: True, False, or None when only its first message
    can tell (HTTP/2 and HTTP/3 without Content-Length)."""
    if length is not None:
        return length > 0
    if chunked:
        return True
    return None if http_version in FRAMED else False


def message_has_body(message: dict) -> bool:
    """Whether a first `http.request` message starts a body (as the proxy decides for HTTP/2 and HTTP/3)."""
    return bool(message.get("body") or message.get("more_body"))


async def read(receive, limit: int, first: dict | None = None) -> bytes:
    """The whole body from `receive` (after `first`, a message already received), at most `limit` bytes.

    Raises TooLarge as soon as more than `limit` bytes arrived (the rest is not read), Gone when the
    client disconnected first."""
    chunks = []
    size = 0
    message = first if first is not None else await receive()
    while True:
        if message["type"] != "http.request":
            raise Gone()
        chunk = message.get("body")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise TooLarge()
            chunks.append(chunk)
        if not message.get("more_body"):
            break
        message = await receive()
    if len(chunks) == 1:
        return bytes(chunks[0])
    return b"".join(chunks)


def replay(message: dict, receive):
    """A `receive` that returns `message` first, then whatever `receive` returns."""
    pending = [message]

    async def replayed():
        if pending:
            return pending.pop()
        return await receive()

    return replayed


def whole(body: bytes) -> dict:
    """A body as the one `http.request` message that carries all of it."""
    return {"type": "http.request", "body": body, "more_body": False}
