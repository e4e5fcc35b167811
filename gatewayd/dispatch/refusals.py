"""Requests the gateway refuses before routing them, and its answers to them.

One decision, shared by the dispatch table (which answers) and `gatewayd explain` (which shows the
answer), so that they cannot disagree; and the answers where an engine refuses a request head before
the gateway sees it (`refused_head`). A new refusal before routing goes into `compile_refusals`.

The same decision also fixes the request's path: `refuse` normalizes it (gatewayd.routing.normalize)
and puts the result in the scope's `path` and `raw_path`, which routing, policies and the upstream
request all read, so that no request is routed as one path and forwarded as another.
"""

from __future__ import annotations

from urllib.parse import quote

from ..policies import Reject
from ..routing.normalize import PathRefused, compile_normalizer, valid_query
from .exchange import in_early_data

# the only methods served from 0-RTT early data, which can be replayed; others get 425 (RFC 8470)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TOO_EARLY = Reject(425, "too_early", "send this request again once the TLS handshake is complete")
BAD_QUERY = Reject(400, "bad_request", "the query has characters that must be percent-encoded")


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


def compile_refusals(max_header_bytes: int, max_body_bytes: int, encoded_slash: str = "reject"):
    """`refuse(scope, head) -> Reject | None`: the answer to a request refused before routing under
    these `server.limits` and `server.paths`, or None; `head` is what `read_head` gives. Unless it
    refuses, the scope's `path` and `raw_path` are left holding the normalized path."""
    too_large_headers = headers_too_large(max_header_bytes)
    too_large_body = body_too_large(max_body_bytes)
    normalize = compile_normalizer(encoded_slash)
    bad_paths: dict[str, Reject] = {}  # one Reject per reason

    def refuse(scope, head) -> Reject | None:
        header_bytes, _, _, content_length = head
        if header_bytes > max_header_bytes:
            return too_large_headers
        if content_length is not None:
            if content_length.isdigit() and (len(content_length) > 18 or int(content_length) > max_body_bytes):
                return too_large_body
        if in_early_data(scope) and scope["method"] not in SAFE_METHODS:
            return TOO_EARLY
        raw = scope.get("raw_path")
        if raw is None:  # a server that does not give it: the decoded path, encoded again
            raw = quote(scope["path"], safe="/!$&'()*+,;=:@-._~").encode()
        try:
            raw = normalize(raw)
        except PathRefused as exc:
            reason = str(exc)
            reject = bad_paths.get(reason)
            if reject is None:
                reject = bad_paths[reason] = Reject(400, "bad_path", reason)
            return reject
        scope["raw_path"] = raw
        scope["path"] = raw.decode("ascii")
        query = scope.get("query_string")
        if query:
            if b"#" in query:  # the fragment, as Granian's HTTP library drops it (see normalize.py)
                scope["query_string"] = query = query.partition(b"#")[0]
            if not valid_query(query):
                return BAD_QUERY
        return None

    return refuse
