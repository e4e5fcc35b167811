"""Cache-Control (RFC 9111 section 5.2) parsed once per field, as a dict of directive -> argument.

Directive names are case-insensitive; an argument may be a token or a quoted-string (unquoted
here). When a directive appears more than once, the first occurrence is used (section 4.2.1 allows
it). `seconds` reads a delta-seconds argument: anything but digits is invalid (None), and values
past 2^31 are 2^31 (section 1.2.2).
"""

from __future__ import annotations

import re

_DIRECTIVE = re.compile(rb'\s*([^\s,=";]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"|[^\s,;]*))?\s*[^,]*(?:,|$)')
_QUOTED_PAIR = re.compile(rb"\\(.)")
MAX_DELTA = 2147483648


def parse(values) -> dict[str, str | None]:
    """The directives of every Cache-Control field line in `values` (bytes), first occurrence of each."""
    found: dict[str, str | None] = {}
    for value in values:
        for match in _DIRECTIVE.finditer(value):
            name, arg = match.group(1), match.group(2)
            if not name:
                continue
            key = name.decode("latin-1").lower()
            if key in found:
                continue
            if arg is not None and arg.startswith(b'"'):
                arg = _QUOTED_PAIR.sub(rb"\1", arg[1:-1])
            found[key] = None if arg is None else arg.decode("latin-1")
    return found


def seconds(arg: str | None) -> int | None:
    """A delta-seconds argument as an int, or None when it is missing or not all digits."""
    if not arg or not arg.isdigit() or not arg.isascii():
        return None
    return min(int(arg), MAX_DELTA)


def field_names(arg: str | None) -> frozenset[bytes]:
    """The field names a qualified `private="..."` or `no-cache="..."` lists, lowercased."""
    if not arg:
        return frozenset()
    return frozenset(n.strip().lower().encode("latin-1") for n in arg.split(",") if n.strip())
