"""A stored response: what serving it needs, precomputed, and its form in the shared tier.

Headers are kept as the tuple a hit sends (names lowercased, no Age: that is computed per hit),
the body as one bytes object. `stale_at` is the wall-clock time it stops being fresh;
`delta` how long fetching it took (for early refresh). The shared tier stores the same fields
as a marshal'd tuple: a format of this module's own (never read from outside the host's workers).
"""

from __future__ import annotations

import marshal

_FIELDS = (
    "status", "headers", "body", "response_time", "initial_age", "lifetime", "no_cache", "must_revalidate",
    "immutable", "swr", "sie", "etag", "last_modified", "vary", "selected", "consumer", "auth_ok", "url",
    "tags", "delta",
)  # fmt: skip
_VERSION = 1


class Entry:
    __slots__ = (*_FIELDS, "stale_at", "size")

    def __init__(self, **fields):
        for name in _FIELDS:
            setattr(self, name, fields[name])
        self.stale_at = self.response_time + self.lifetime - self.initial_age
        self.size = len(self.body) + sum(len(n) + len(v) + 32 for n, v in self.headers) + 256

    def replace(self, **changes) -> Entry:
        fields = {name: getattr(self, name) for name in _FIELDS}
        fields.update(changes)
        return Entry(**fields)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def dumps(self) -> bytes:
        return marshal.dumps((_VERSION, *(getattr(self, name) for name in _FIELDS)))

    @classmethod
    def loads(cls, data: bytes) -> Entry | None:
        """An entry from `dumps`, or None when it is of another format version or damaged."""
        try:
            values = marshal.loads(data)
        except (EOFError, ValueError, TypeError):
            return None
        if not isinstance(values, tuple) or len(values) != len(_FIELDS) + 1 or values[0] != _VERSION:
            return None
        return cls(**dict(zip(_FIELDS, values[1:])))
