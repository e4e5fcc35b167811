"""Requests the gateway refuses before routing them, and its answers to them.

One decision, shared by the dispatch table (which answers) and `gatewayd explain` (which shows the
answer), so that they cannot disagree; and the answers where an engine refuses a request head before
the gateway sees it (`refused_head`). A new refusal before routing goes into `compile_refusals`.
"""

from __future__ import annotations

from ..policies import Reject
from .exchange import in_early_data

# the only methods served from 0-RTT early data, which can be replayed; others get 425 (RFC 8470)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TOO_EARLY = Reject(425, "too_early", "send this request again once the TLS handshake is complete")
# routes match paths as sent: an upstream that resolved `/public/../admin` would see a path no route allowed
BAD_PATH = Reject(400, "bad_path", "the path has . or .. segments")


def headers_too_large(limit: int) -> Reject:
    return Reject(431, "headers_too_large", f"the request's headers exceed {limit} bytes")


def body_too_large(limit: int) -> Reject:
    return Reject(413, "body_too_large", f"the request body exceeds {limit} bytes")


def refused_head(status: int, max_header_bytes: int) -> Reject:
    """The answer to a request head that an engine refuses before the gateway sees it, by the status
    the engine chose: 431 too large, 501 an unsupported Transfer-Encoding, otherwise malformed."""
    if status == 431:
        return headers_too_large(max_header_bytes)
    if status == 501:
        return Reject(501, "unsupported_transfer_encoding", "the request's Transfer-Encoding is not supported")
    return Reject(status, "bad_request", "the request is not valid HTTP")


def read_head(headers) -> tuple[int, bytes | None, bytes | None, bytes | None]:
    """(size, X-Request-Id, Host, Content-Length) of an ASGI request's headers, in one pass. The size is
    the header section's as on an HTTP/1.1 wire: each field's name and value, and 4 bytes for ": " and CRLF."""
    request_id = host = length = None
    size = 4 * len(headers)
    for name, value in headers:
        size += len(name) + len(value)
        if name == b"x-request-id":
            request_id = value
        elif name == b"host":
            host = value
        elif name == b"content-length":
            length = value
    return size, request_id, host, length


def compile_refusals(max_header_bytes: int, max_body_bytes: int):
    """`refuse(scope, header_bytes, content_length) -> Reject | None`: the answer to a request refused
    before routing under these `server.limits`, or None; `header_bytes` and `content_length` as
    `read_head` gives them."""
    too_large_headers = headers_too_large(max_header_bytes)
    too_large_body = body_too_large(max_body_bytes)

    def refuse(scope, header_bytes: int, content_length: bytes | None) -> Reject | None:
        if header_bytes > max_header_bytes:
            return too_large_headers
        if content_length is not None and content_length.isdigit():
            if len(content_length) > 18 or int(content_length) > max_body_bytes:
                return too_large_body
        if in_early_data(scope) and scope["method"] not in SAFE_METHODS:
            return TOO_EARLY
        path = scope["path"]
        if "/." in path and _has_dot_segment(path):
            return BAD_PATH
        return None

    return refuse


def _has_dot_segment(path: str) -> bool:
    """`/a/../b`, `/a/./b`, `/a/..`: segments an upstream would resolve, after the route was chosen."""
    return any(segment in (".", "..") for segment in path.split("/"))
