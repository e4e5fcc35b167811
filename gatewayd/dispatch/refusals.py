"""Requests the gateway refuses before routing them, and its answers to them.

One decision, shared by the dispatch table (which answers) and `gatewayd explain` (which shows the
answer), so that they cannot disagree; and the answers where an engine refuses a request head before
the gateway sees it (`refused_head`). A new refusal before routing goes into `compile_refusals`.

The same decision also fixes the request's path: `refuse` normalizes it (gatewayd.routing.normalize)
and puts the result in the scope's `path` and `raw_path`, which routing, policies and the upstream
request all read, so that no request is routed as one path and forwarded as another.

What both engines let through and RFC 9110/9112 forbid is refused here, where the gateway sees the
request's header list: a second Host or Content-Length, an empty or malformed Host, no Host at all
(HTTP/1.1 and later), a Transfer-Encoding other than `chunked`, a Content-Length that is not a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ..policies import Reject
from ..routing.normalize import PathRefused, compile_normalizer, is_normal, valid_query
from .exchange import in_early_data

# the only methods served from 0-RTT early data, which can be replayed; others get 425 (RFC 8470)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

TOO_EARLY = Reject(425, "too_early", "send this request again once the TLS handshake is complete")
_CLOSE = ((b"connection", b"close"),)
_HTTP1 = frozenset({"1", "1.0", "1.1"})


@dataclass(frozen=True, slots=True)
class Closing(Reject):
    """A refusal after which an HTTP/1 connection is closed: where a request's framing is in doubt,
    what follows it on the connection cannot be told apart from its body (RFC 9112 section 6.3).
    (HTTP/2 and 3 frame each stream, and forbid the Connection header.)"""

    async def send(self, ex) -> None:
        close = _CLOSE if ex.scope.get("http_version") in _HTTP1 else ()
        await ex.error(self.status, self.error, self.message, close)


# RFC 9112 section 3.2: a request with no Host, more than one, or an invalid one gets 400
TWO_HOSTS = Closing(400, "bad_request", "the request has more than one Host header")
NO_HOST = Closing(400, "bad_request", "the request has no Host header, or an empty one")
BAD_HOST = Closing(400, "bad_request", "the request's Host header is not a valid host[:port]")
# RFC 9112 section 6.3: a repeated or invalid Content-Length leaves the body's framing in doubt
TWO_LENGTHS = Closing(400, "bad_request", "the request has more than one Content-Length header")
BAD_LENGTH = Closing(400, "bad_request", "the request's Content-Length is not a number")
# RFC 9112 section 6.1: a coding other than chunked gets 501; section 6.3: chunked not last gets 400
UNSUPPORTED_TE = Closing(501, "unsupported_transfer_encoding", "the request's Transfer-Encoding is not supported")
TE_NOT_CHUNKED = Closing(400, "bad_request", "the request's Transfer-Encoding does not end with chunked")
# RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing
TE_IN_HTTP10 = Closing(400, "bad_request", "an HTTP/1.0 request cannot have a Transfer-Encoding")
# The answer to a request whose body broke off: the client left, or the engine found its chunked
# framing invalid (Granian tells the app only `http.disconnect`, and would answer 500 itself)
BROKEN_BODY = Closing(400, "bad_request", "the request body ended early, or its chunked framing is invalid")
BAD_QUERY = Reject(400, "bad_request", "the query has characters that must be percent-encoded")

# RFC 3986 host (reg-name or IP literal) and port: unreserved, pct-encoded, sub-delims, ":", "[", "]"
_HOST_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:[]"
# ASGI http_version of requests that may come without Host (HTTP/1.0; None: not from a server, as in explain)
_HOST_OPTIONAL = frozenset({"1", "1.0", None})


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
        return UNSUPPORTED_TE
    return Reject(status, "bad_request", "the request is not valid HTTP")


def read_head(headers) -> tuple[int, bytes | None, bytes | None, bytes | None, bytes | None, Reject | None]:
    """(size, X-Request-Id, Host, Content-Length, Transfer-Encoding, repeated) of an ASGI request's
    headers, in one pass; `repeated` is the refusal for a second Host or Content-Length, if any. The
    size is the header section's as on an HTTP/1.1 wire: each field's name and value, and 4 bytes
    for ": " and CRLF."""
    request_id = host = length = te = repeated = None
    size = 4 * len(headers)
    for name, value in headers:
        size += len(name) + len(value)
        if name == b"x-request-id":
            request_id = value
        elif name == b"host":
            if host is not None:
                repeated = TWO_HOSTS
            host = value
        elif name == b"content-length":
            if length is not None:
                repeated = TWO_LENGTHS
            length = value
        elif name == b"transfer-encoding":
            te = value
    return size, request_id, host, length, te, repeated


def compile_refusals(max_header_bytes: int, max_body_bytes: int, encoded_slash: str = "reject"):
    """`refuse(scope, head) -> Reject | None`: the answer to a request refused before routing under
    these `server.limits` and `server.paths`, or None; `head` is what `read_head` gives. Unless it
    refuses, the scope's `path` and `raw_path` are left holding the normalized path."""
    too_large_headers = headers_too_large(max_header_bytes)
    too_large_body = body_too_large(max_body_bytes)
    normalize = compile_normalizer(encoded_slash)
    bad_paths: dict[str, Reject] = {}  # one Reject per reason

    def refuse(scope, head) -> Reject | None:
        header_bytes, _, host, content_length, te, repeated = head
        if header_bytes > max_header_bytes:
            return too_large_headers
        if repeated is not None:
            return repeated
        if not host:  # Granian puts an empty Host in the scope of a request without one
            version = scope.get("http_version")
            if version not in _HOST_OPTIONAL or (host is not None and version is None):  # None: explain's
                return NO_HOST
        elif host.strip(_HOST_CHARS):  # not all of them host characters
            return BAD_HOST
        if te is not None:
            if scope.get("http_version") in ("1", "1.0"):
                return TE_IN_HTTP10
            if te.lower() != b"chunked":
                return UNSUPPORTED_TE if te.rpartition(b",")[2].strip().lower() == b"chunked" else TE_NOT_CHUNKED
        if content_length is not None:
            if not content_length.isdigit():
                return BAD_LENGTH
            if len(content_length) > 18 or int(content_length) > max_body_bytes:
                return too_large_body
        if in_early_data(scope) and scope["method"] not in SAFE_METHODS:
            return TOO_EARLY
        raw = scope.get("raw_path")
        if raw is None:  # a server that does not give it: the decoded path, encoded again
            raw = quote(scope["path"], safe="/!$&'()*+,;=:@-._~").encode()
        elif is_normal(raw, scope["path"]):
            raw = None  # in normal form already, as `path` is
        try:
            path = None if raw is None else normalize(raw)
        except PathRefused as exc:
            reason = str(exc)
            reject = bad_paths.get(reason)
            if reject is None:
                reject = bad_paths[reason] = Reject(400, "bad_path", reason)
            return reject
        if path is not None:
            scope["raw_path"] = path
            scope["path"] = path.decode("ascii")
        query = scope.get("query_string")
        if query and not valid_query(query):
            if query.find(b"#") < 0:
                return BAD_QUERY
            # the fragment (Hypercorn's query runs to the end of the target), dropped as Granian drops it
            scope["query_string"] = query = query.partition(b"#")[0]
            if not valid_query(query):
                return BAD_QUERY
        return None

    return refuse
