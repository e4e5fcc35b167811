"""What a cached route reads of a request, in one pass over its headers, and the key it is stored under.

The key is the route's namespace (everything that decides what its action answers: see
gatewayd/policies/cache.py), the Host, the path, and the query (whole, or only the parameters the
policy's `key.query` names, sorted), then the values of the fields `key.headers` names. The URL
part (path and query) is kept apart too: purges select by it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from . import directives
from .freshness import NO_RULES, RequestRules

# fields that change what a cache may do for a request: without any of them (the common case) the
# request's rules are NO_RULES
_TELLING = frozenset({b"cache-control", b"pragma", b"if-none-match", b"if-modified-since", b"range", b"authorization"})


class View:
    __slots__ = ("rules", "if_none_match", "if_modified_since", "ranged", "authorization", "host", "fields")

    def __init__(self, headers, key_fields: frozenset[bytes]):
        self.if_none_match = self.if_modified_since = self.host = None
        self.ranged = self.authorization = False
        self.fields: dict[bytes, bytes] = {}  # the values of `key.headers` fields, joined
        cc = pragma = None
        for name, value in headers:
            if name == b"host":
                self.host = value.lower()
            elif name in _TELLING:
                if name == b"cache-control":
                    cc = [value] if cc is None else [*cc, value]
                elif name == b"pragma":
                    pragma = value
                elif name == b"if-none-match":
                    self.if_none_match = value if self.if_none_match is None else self.if_none_match + b"," + value
                elif name == b"if-modified-since":  # given twice: ignored (RFC 9110 section 13.1.3)
                    self.if_modified_since = value if self.if_modified_since is None else b""
                elif name == b"range":
                    self.ranged = True
                else:
                    self.authorization = True
            if name in key_fields:
                old = self.fields.get(name)
                self.fields[name] = value if old is None else old + b", " + value
        if cc is None and pragma is None:
            self.rules = NO_RULES
        else:
            no_cache = pragma is not None and b"no-cache" in pragma.lower()
            self.rules = RequestRules.of(directives.parse(cc or ()), no_cache)


def compile_query(names: list[str] | None):
    """`key.query` -> query_string -> the query part of the key: whole when no names are given."""
    if names is None:
        return None
    wanted = frozenset(names)

    def pick(query: bytes) -> bytes:
        pairs = [(k, v) for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True) if k in wanted]
        return urlencode(sorted(pairs)).encode("latin-1")

    return pick


def url_of(path: str, query: bytes) -> bytes:
    """A request's URL as purges name it: the path, and the query when there is one."""
    raw = path.encode("utf-8", "surrogateescape")
    return raw + b"?" + query if query else raw


def selection(headers, vary: tuple) -> tuple:
    """The request's values of the fields `vary` names, for matching a stored variant (RFC 9111 section
    4.1): lines of a field joined by commas, whitespace around values removed; None when absent."""
    if not vary:
        return ()
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        if name in vary:
            found.setdefault(name, []).append(b",".join(v.strip() for v in value.split(b",")))
    return tuple(b",".join(found[n]) if n in found else None for n in vary)
