"""How long a stored response is fresh, how old it is, and whether a request may use it (RFC 9111 section 4).

All pure: times are wall-clock seconds passed in. A stored response keeps three numbers from which
everything else follows: when it arrived (`response_time`), its corrected initial age (section
4.2.3) and its freshness lifetime (section 4.2.1); it is stale from `stale_at` on.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import mktime_tz, parsedate_tz

from .directives import seconds

# status codes a cache may give a heuristic freshness lifetime (RFC 9110 section 15.1)
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
HEURISTIC_FRACTION = 0.1  # of the time since Last-Modified (section 4.2.2)
HEURISTIC_MAX = 86400.0  # a day at most


def http_date(value: bytes | None) -> float | None:
    """An HTTP date (any of the three forms of RFC 9110 section 5.6.7) as a timestamp, None if invalid."""
    if not value:
        return None
    parsed = parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    try:
        return float(mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def lifetime(
    status: int, cc: dict, expires: bytes | None, date: float | None, last_modified: float | None,
    response_time: float, default_ttl: float | None = None,
) -> float | None:  # fmt: skip
    """The freshness lifetime a shared cache gives a response (section 4.2.1), None when the response
    gives none and no heuristic applies. An invalid max-age, s-maxage or Expires makes it stale (0)."""
    if "s-maxage" in cc:
        return float(seconds(cc["s-maxage"]) or 0)
    if "max-age" in cc:
        return float(seconds(cc["max-age"]) or 0)
    if expires is not None:
        at = http_date(expires)
        return 0.0 if at is None else max(0.0, at - (date if date is not None else response_time))
    if status in HEURISTIC_STATUSES or "public" in cc:
        if last_modified is not None:
            since = (date if date is not None else response_time) - last_modified
            return min(HEURISTIC_MAX, max(0.0, since * HEURISTIC_FRACTION))
        return default_ttl
    return None


def initial_age(age: bytes | None, date: float | None, request_time: float, response_time: float) -> float:
    """The corrected initial age (section 4.2.3): what the response's Age and Date say, plus its trip."""
    age_value = seconds(age.split(b",")[0].decode("latin-1").strip()) if age else None  # a list: its first (5.1)
    apparent = max(0.0, response_time - date) if date is not None else 0.0
    corrected = (age_value or 0) + (response_time - request_time)
    return max(apparent, corrected)


# what a stored response may do for a request (`judge`)
FRESH, STALE_OK, REVALIDATE_LATER, VALIDATE = range(4)


@dataclass(frozen=True, slots=True)
class RequestRules:
    """A request's Cache-Control (and Pragma) directives (section 5.2.1), read once per request."""

    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age: int | None = None
    max_stale: float | None = None  # seconds; inf for a bare max-stale
    min_fresh: int | None = None
    stale_if_error: int | None = None  # RFC 5861 section 4: the client accepts this much staleness on an error

    @classmethod
    def of(cls, cc: dict, pragma_no_cache: bool) -> RequestRules:
        max_stale = None
        if "max-stale" in cc:
            arg = cc["max-stale"]
            max_stale = float("inf") if arg is None else seconds(arg)
        return cls(
            no_cache="no-cache" in cc or (pragma_no_cache and not cc),
            no_store="no-store" in cc,
            only_if_cached="only-if-cached" in cc,
            max_age=seconds(cc["max-age"]) if "max-age" in cc else None,
            max_stale=max_stale,
            min_fresh=seconds(cc["min-fresh"]) if "min-fresh" in cc else None,
            stale_if_error=seconds(cc["stale-if-error"]) if "stale-if-error" in cc else None,
        )


NO_RULES = RequestRules()


def judge(entry, rules: RequestRules, now: float) -> int:
    """What `entry` (a stored response) may do for a request with `rules` at `now`:
    FRESH (serve it), STALE_OK (serve it stale: the request allows it), REVALIDATE_LATER (serve it
    stale and refresh it in the background: stale-while-revalidate), VALIDATE (ask the origin first).
    """
    age = entry.initial_age + (now - entry.response_time)
    left = entry.lifetime - age  # seconds it stays fresh; negative: how long it has been stale
    if rules is not NO_RULES:
        if rules.no_cache:
            return VALIDATE
        if rules.max_age is not None and age > rules.max_age and not (entry.immutable and left > 0):
            return VALIDATE
        if rules.min_fresh is not None and left < rules.min_fresh:
            return VALIDATE
    if entry.no_cache:
        return VALIDATE
    if left > 0:
        return FRESH
    if entry.must_revalidate:
        return VALIDATE
    if rules.max_stale is not None and -left <= rules.max_stale:
        return STALE_OK
    if entry.swr > 0 and -left <= entry.swr:
        return REVALIDATE_LATER
    return VALIDATE


def may_serve_on_error(entry, now: float, rules: RequestRules = NO_RULES) -> bool:
    """Whether `entry` may answer in place of an origin that failed (stale-if-error, RFC 5861 section 4:
    the response's window, or the request's when it gives a longer one)."""
    if entry.must_revalidate or entry.no_cache:
        return False
    window = max(entry.sie, rules.stale_if_error or 0)
    return window > 0 and now - entry.stale_at <= window


def current_age(entry, now: float) -> int:
    """The Age to send (section 5.1): whole seconds."""
    return int(entry.initial_age + (now - entry.response_time))
