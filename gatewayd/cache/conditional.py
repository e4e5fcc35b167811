"""Conditional requests and a stored response: a client's GET or HEAD answered from it (RFC 9111
section 4.3.2, RFC 9110 section 13: If-None-Match by weak comparison of entity tags, else a single
If-Modified-Since against the stored Last-Modified or Date), and whether an origin's 304 is about it
(RFC 9111 section 4.3.4)."""

from __future__ import annotations

import re

from .freshness import http_date

# an entity-tag (RFC 9110 section 8.8.3): a comma may sit inside its quotes
_ETAG = re.compile(rb'(W/)?"([^"]*)"')

# what a 304 carries of the stored response (RFC 9110 section 15.4.5)
KEPT_IN_304 = frozenset({b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"last-modified"})


def _tags(value: bytes) -> list[tuple[bool, bytes]]:
    """The entity-tags of a field value: (weak, opaque-tag) each."""
    return [(bool(m.group(1)), m.group(2)) for m in _ETAG.finditer(value)]


def not_modified(entry, if_none_match: bytes | None, if_modified_since: bytes | None) -> bool:
    """Whether the client already has the stored response: it gets 304 instead of the body.
    `if_modified_since` is b"" when the request gave the field more than once (then it is ignored)."""
    if if_none_match is not None:
        if if_none_match.strip() == b"*":
            return True
        mine = _tags(entry.etag or b"")
        return bool(mine) and any(tag == mine[0][1] for _, tag in _tags(if_none_match))
    if if_modified_since is not None:
        since = http_date(if_modified_since)
        modified = http_date(entry.last_modified) or http_date(entry.header(b"date"))
        return since is not None and modified is not None and modified <= since
    return False


def headers_304(entry) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v in entry.headers if n in KEPT_IN_304]


def validates(entry, headers) -> bool:
    """Whether a 304 with `headers` is about the stored `entry` (RFC 9111 section 4.3.4): a strong
    entity-tag must be the entry's strong one, a weak one match it weakly, a Last-Modified equal its
    own; a 304 with no validator is taken to answer the validators the cache sent."""
    etag = next((v for n, v in headers if n == b"etag"), None)
    if etag is not None:
        theirs, mine = _tags(etag), _tags(entry.etag or b"")
        if not theirs or not mine:
            return False
        (weak, tag), (my_weak, my_tag) = theirs[0], mine[0]
        return tag == my_tag and (weak or not my_weak)
    last_modified = next((v for n, v in headers if n == b"last-modified"), None)
    if last_modified is not None:
        return entry.last_modified is not None and http_date(last_modified) == http_date(entry.last_modified)
    return True
