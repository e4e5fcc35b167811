"""A client's conditional GET or HEAD answered from a stored response (RFC 9111 section 4.3.2,
RFC 9110 section 13): If-None-Match by weak comparison of entity tags, else If-Modified-Since
against the stored Last-Modified (or its Date)."""

from __future__ import annotations

from .freshness import http_date

# what a 304 carries of the stored response (RFC 9110 section 15.4.5)
KEPT_IN_304 = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"})


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag.startswith(b"W/") else tag


def not_modified(entry, if_none_match: bytes | None, if_modified_since: bytes | None) -> bool:
    """Whether the client already has the stored response: it gets 304 instead of the body."""
    if if_none_match is not None:
        if if_none_match.strip() == b"*":
            return True
        if entry.etag is None:
            return False
        mine = _opaque(entry.etag)
        return any(_opaque(t) == mine for t in if_none_match.split(b","))
    if if_modified_since is not None:
        since = http_date(if_modified_since)
        modified = http_date(entry.last_modified) or http_date(entry.header(b"date"))
        return since is not None and modified is not None and modified <= since
    return False


def headers_304(entry) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in entry.headers if n in KEPT_IN_304]
