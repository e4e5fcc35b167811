"""The one form of a request's path that routing, policies and the upstream all see.

A gateway that routes one reading of a path and forwards another can be walked around: a request
routed as `/public/x` but resolved by the upstream as `/admin` skips whatever guards `/admin`
(Envoy CVE-2019-9901 and CVE-2021-29492, Istio CVE-2021-31920, Traefik CVE-2025-66490). So the
path is normalized once, from the bytes the client sent, and the result is both the path routes
match and the path the upstream receives:

1. only an origin-form target is accepted (RFC 9112 section 3.2.1: it starts with `/`); a fragment
   (`#...`) is dropped, as Granian's HTTP library drops it before the gateway sees the request;
2. only the characters RFC 3986 allows in a path (`pchar` and `/`) may appear unencoded;
3. percent-encodings are well formed; those of unreserved characters (`%41` -> `A`, `%2E` -> `.`)
   are decoded, all others kept, with upper-case hex digits (RFC 3986 section 6.2.2); an encoded
   slash follows the `encoded_slash` policy (`reject`, `keep`, `decode`), an encoded backslash is
   refused unless `keep`, and encoded control characters (`%00`-`%1F`, `%7F`) are refused;
4. runs of slashes become one (`//admin` -> `/admin`);
5. a path with a `.` or `..` segment is refused, counting a segment's `;parameters` out (`..;`,
   which Tomcat resolves as `..`) and, with `keep`, encoded slashes as separators.

Nothing is decoded twice: `%252e` stays `%252e`. The result is ASCII bytes.
"""

from __future__ import annotations

import re

__all__ = ["ENCODED_SLASH", "PathRefused", "compile_normalizer", "is_normal", "normalize_pattern", "valid_query"]

ENCODED_SLASH = ("reject", "keep", "decode")

_ALPHA_DIGIT = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_UNRESERVED = _ALPHA_DIGIT + b"-._~"
_PATH_CHARS = _UNRESERVED + b"!$&'()*+,;=" + b":@" + b"/%"  # pchar, "/" and the "%" of pct-encoded
# a query as Granian's HTTP library (the `http` crate) accepts it: 0x21, 0x24-0x3B, 0x3D, 0x3F-0x7E
# (RFC 3986 allows fewer, but `[]`, `{}`, `|` unencoded are common); so the same on both engines
_QUERY_CHARS = bytes([0x21, *range(0x24, 0x3C), 0x3D, *range(0x3F, 0x7F)])
_SLASHES = re.compile(rb"//+")
_PLAIN_CHARS = _UNRESERVED + b"!$&'()*+,;=" + b":@" + b"/"  # a path's characters, but the "%" of escapes


class PathRefused(ValueError):
    """A request path that cannot be normalized; its message says why (for the 400 the client gets)."""


def _hex_table(encoded_slash: str) -> dict[bytes, bytes | PathRefused]:
    """Every two-hex-digit escape (either case) -> what it becomes, or the refusal it earns."""
    table: dict[bytes, bytes | PathRefused] = {}
    for value in range(256):
        upper = b"%02X" % value
        if value in _UNRESERVED:
            out: bytes | PathRefused = bytes((value,))
        elif value == 0x2F:
            out = {
                "reject": PathRefused("the path has an encoded slash (%2F)"),
                "keep": b"%2F",
                "decode": b"/",
            }[encoded_slash]
        elif value == 0x5C:
            out = b"%5C" if encoded_slash == "keep" else PathRefused("the path has an encoded backslash (%5C)")
        elif value < 0x20 or value == 0x7F:
            out = PathRefused(f"the path has an encoded control character (%{upper.decode()})")
        else:
            out = b"%" + upper
        for key in {upper, upper.lower(), upper[:1] + upper[1:].lower(), upper[:1].lower() + upper[1:]}:
            table[key] = out
    return table


def _dot_segment(path: bytes) -> bool:
    """A `.` or `..` segment, with any `;parameters` of the segment counted out."""
    for segment in path.split(b"/"):
        if segment[:1] == b"." and segment.partition(b";")[0] in (b".", b".."):
            return True
    return False


def compile_normalizer(encoded_slash: str = "reject"):
    """`normalize(raw_path: bytes) -> bytes` under this `encoded_slash` policy (ASCII; `raw_path`
    itself when it is in normal form already); raises `PathRefused`. `raw_path` is the request target's path as sent (ASGI
    `raw_path`)."""
    if encoded_slash not in ENCODED_SLASH:
        raise ValueError(f"encoded_slash must be one of {ENCODED_SLASH}, not {encoded_slash!r}")
    escapes = _hex_table(encoded_slash)
    keep = encoded_slash == "keep"

    def decode(raw: bytes) -> bytes:
        parts = raw.split(b"%")
        out = [parts[0]]
        for part in parts[1:]:
            got = escapes.get(part[:2])
            if got is None:
                raise PathRefused("the path has a malformed percent-encoding")
            if got.__class__ is PathRefused:
                raise got
            out.append(got)
            out.append(part[2:])
        return b"".join(out)

    def normalize(raw: bytes) -> bytes:
        if raw[:1] != b"/":
            raise PathRefused("the request target must be a path starting with /")
        if b"#" in raw:
            raw = raw.partition(b"#")[0]
        if raw.translate(None, _PATH_CHARS):
            raise PathRefused("the path has characters that must be percent-encoded")
        if b"%" in raw:
            raw = decode(raw)
        if b"//" in raw:
            raw = _SLASHES.sub(b"/", raw)
        if b"/." in raw and _dot_segment(raw):
            raise PathRefused("the path has . or .. segments")
        if keep and (b"%2F" in raw or b"%5C" in raw):
            if _dot_segment(raw.replace(b"%2F", b"/").replace(b"%5C", b"/")):
                raise PathRefused("the path has . or .. segments")
        return raw

    return normalize


def is_normal(raw: bytes, path: str) -> bool:
    """Whether `raw` (a request's `raw_path`) is in normal form already, as most paths are: it
    starts with "/" and has only pchar characters, no escape (so `path`, the engine's decoded form,
    is the same text), two slashes or a segment starting with ".". Cheaper than `normalize` (the
    substring tests run on the `str`, where they are fastest)."""
    return raw[:1] == b"/" and not raw.strip(_PLAIN_CHARS) and "//" not in path and "/." not in path


def valid_query(query: bytes) -> bool:
    """Only the characters Granian accepts in a query (see _QUERY_CHARS), so Hypercorn refuses what it
    refuses. (`strip` leaves nothing only when every byte is one of them, and is faster than `translate`.)"""
    return not query.strip(_QUERY_CHARS)


_PATTERN = compile_normalizer("keep")


def normalize_pattern(pattern: str) -> str:
    """A route's literal path in the form requests are matched in: characters a path may not carry
    unencoded are percent-encoded (as UTF-8) and escapes are put in normal form, so `/café` and
    `/caf%c3%a9` both match a request for `/caf%C3%A9`. A segment with `{` or `}` is a template
    parameter (or a mistake the template compiler reports) and is left as written."""
    if not pattern.startswith("/"):
        return pattern  # the template compiler reports it
    segments = []
    for segment in pattern.split("/"):
        if "{" in segment or "}" in segment:
            segments.append(segment)
            continue
        raw = segment.encode()
        out = []
        for i, part in enumerate(raw.split(b"%")):
            if i and not (len(part) >= 2 and part[:2] in _HEX_PAIRS):
                part = b"25" + part  # a "%" not followed by two hex digits is a literal percent sign
            out.append(part)
        raw = b"%".join(out)
        raw = b"".join(bytes((c,)) if c in _PATH_CHARS else b"%%%02X" % c for c in raw)
        segments.append(raw.decode("ascii"))
    text = "/".join(segments)
    if "{" in text or "}" in text:
        return text  # a template: its literal segments are in normal form already, bar `//` and dots
    try:
        return _PATTERN(text.encode()).decode("ascii")
    except PathRefused:
        return text  # a pattern no request can match (a dot segment, say): the route stays unreachable


_HEX_PAIRS = frozenset(b"%c%c" % (a, b) for a in b"0123456789abcdefABCDEF" for b in b"0123456789abcdefABCDEF")
