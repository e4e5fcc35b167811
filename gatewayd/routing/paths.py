"""Path patterns: validation and compilation of the four route kinds.

This module owns the syntax of a route's path (exact path, ``{name}``
template, segment-boundary prefix, regex) and reduces each pattern to a *path
key*: the value under which the router files the route and which the static
analysis compares.  Both go through :func:`compile_path`, so a pattern the
router accepts is exactly a pattern the analysis understands.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

__all__ = ["KINDS", "PathError", "PathPattern", "compile_path", "split_path"]

KINDS = ("exact", "template", "prefix", "regex")


class PathError(ValueError):
    """A route's pattern (or host) cannot be compiled."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"route {index}: {message}")
        self.index = index
        self.message = message


@dataclass(frozen=True, slots=True)
class PathPattern:
    """A validated path pattern.

    ``key`` is the exact path, the template *shape* (a tuple holding each
    literal segment, ``None`` where a parameter sits), the normalised prefix
    (no trailing slash; ``""`` for the root prefix ``/``) or the regex source.
    """

    kind: str
    key: str | tuple[str | None, ...]
    params: tuple[tuple[str, int], ...] = ()  # template: (name, segment position)
    regex: re.Pattern[str] | None = None


def split_path(path: str) -> list[str]:
    """Segments of a path that starts with ``/``: ``"/a/b/"`` -> ``["a", "b", ""]``."""
    return path[1:].split("/")


def compile_path(index: int, kind: str, pattern: str) -> PathPattern:
    """Validate ``pattern`` for a route of ``kind``; raise :class:`PathError` if bad."""
    if kind == "regex":
        try:
            return PathPattern(kind, pattern, regex=re.compile(pattern))
        except re.error as exc:
            raise PathError(index, f"invalid regex {pattern!r}: {exc}") from None
    if kind not in KINDS:
        raise PathError(index, f"unknown route kind {kind!r}")
    if not pattern.startswith("/"):
        raise PathError(index, f'{kind} path {pattern!r} must start with "/"')
    if kind == "exact":
        return PathPattern(kind, pattern)
    if kind == "prefix":
        return PathPattern(kind, pattern.rstrip("/"))
    return _compile_template(index, pattern)


def _compile_template(index: int, pattern: str) -> PathPattern:
    shape: list[str | None] = []
    params: list[tuple[str, int]] = []
    seen: set[str] = set()
    for position, segment in enumerate(split_path(pattern)):
        if "{" not in segment and "}" not in segment:
            shape.append(sys.intern(segment))  # large tables repeat segments
            continue
        if not (segment.startswith("{") and segment.endswith("}")) or len(segment) < 2:
            raise PathError(
                index,
                f"template {pattern!r}: segment {segment!r} must be a literal "
                "or a whole {name} parameter",
            )
        name = sys.intern(segment[1:-1])
        if not name.isidentifier():
            raise PathError(index, f"template {pattern!r}: invalid parameter name {name!r}")
        if name in seen:
            raise PathError(index, f"template {pattern!r}: parameter {name!r} used twice")
        seen.add(name)
        shape.append(None)
        params.append((name, position))
    return PathPattern("template", tuple(shape), tuple(params))
