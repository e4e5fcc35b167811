"""Durations (`250ms`, `30s`, `5m`, `1h`) and sizes (`512B`, `16KiB`, `10MiB`, `1GiB`), parsed once at load time.

The schema already checks their shape; these turn checked strings into seconds and bytes.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_SIZE = re.compile(r"^([0-9]+)(B|KiB|MiB|GiB)$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTES = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def seconds(text: str) -> float:
    """'250ms' -> 0.25."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 250ms, 30s, 5m)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def size(text: str) -> int:
    """'16KiB' -> 16384."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (use e.g. 512B, 16KiB, 10MiB)")
    return int(m.group(1)) * _BYTES[m.group(2)]
