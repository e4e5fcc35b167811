"""Whether a response may be stored, and the entry it makes (RFC 9111 section 3, as a shared cache).

`admit` is pure: the request's side (its method, rules, whether it carried Authorization that the
gateway did not consume) and the response's (status, headers) in, an `Entry` or the reason it is
not stored out. In `ttl` mode the origin's freshness directives are ignored and 2xx responses are
fresh for the policy's `ttl`; `private`, `no-store` and Set-Cookie still keep a response out in
both modes, since they protect one user's data.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import formatdate

from . import directives
from .entry import Entry
from .freshness import RequestRules, http_date, initial_age, lifetime

# never stored: the proxy drops hop-by-hop fields already; Age is computed on every hit
_NOT_STORED = frozenset({b"age", b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"})
# statuses a cache understands (section 3: a response with `must-understand` is stored only for these)
UNDERSTOOD = frozenset({200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 451, 501})


@dataclass(frozen=True, slots=True)
class Rules:
    """A cache policy's settings that admission uses."""

    mode: str = "standard"  # standard | ttl
    ttl: float | None = None
    swr: float = 0.0  # stale-while-revalidate when the response names none
    sie: float = 0.0  # stale-if-error when the response names none
    max_object: int = 8 << 20
    tag_header: bytes = b"surrogate-key"


def combined(headers, name: bytes) -> list[bytes]:
    """Every value of field `name` (lowercase) in `headers`."""
    return [v for n, v in headers if n == name]


def admit(
    rules: Rules, request: RequestRules, foreign_auth: bool, status: int, headers, *,
    request_time: float, response_time: float, consumer: str | None, url: bytes,
) -> Entry | str:  # fmt: skip
    """The entry for this response, or why it is not stored (a short reason for Cache-Status `detail`).

    `headers`: the response's (name, value) pairs, names lowercase; `foreign_auth`: the request
    carried Authorization and no gateway policy consumed it (section 3.5); `consumer`: the
    authenticated consumer the response is for (None on a route without auth)."""
    if request.no_store:
        return "request-no-store"
    cc = directives.parse(combined(headers, b"cache-control"))
    if "no-store" in cc and not ("must-understand" in cc and status in UNDERSTOOD):
        return "no-store"
    if "must-understand" in cc and status not in UNDERSTOOD:
        return "not-understood"
    if status in (206, 304) or status < 200:
        return "status"
    if "private" in cc and not cc["private"]:
        return "private"
    if any(n == b"set-cookie" for n, _ in headers) and "public" not in cc:
        return "set-cookie"
    vary_values = combined(headers, b"vary")
    vary = tuple(sorted({v.strip().lower() for value in vary_values for v in value.split(b",") if v.strip()}))
    if b"*" in vary:
        return "vary-star"
    auth_ok = "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    if foreign_auth and not auth_ok:
        return "authorization"
    date = http_date(next(iter(combined(headers, b"date")), None))
    last_modified_value = next(iter(combined(headers, b"last-modified")), None)
    etag = next(iter(combined(headers, b"etag")), None)
    if rules.mode == "ttl":
        if not 200 <= status < 300:
            return "status"
        life: float | None = rules.ttl
        no_cache = must_revalidate = False
    else:
        expires = combined(headers, b"expires")
        life = lifetime(
            status, cc, expires[0] if expires else None, date, http_date(last_modified_value), response_time, rules.ttl
        )
        no_cache = "no-cache" in cc and not cc["no-cache"]
        must_revalidate = "must-revalidate" in cc or "proxy-revalidate" in cc or "s-maxage" in cc
    if life is None:
        if etag is None and last_modified_value is None:
            return "no-freshness"
        life = 0.0  # stored stale: used after validation
    drop = _NOT_STORED | directives.field_names(cc.get("private")) | directives.field_names(cc.get("no-cache"))
    stored = tuple((n, v) for n, v in headers if n not in drop)
    if date is None:  # the cache adds the Date the origin did not (RFC 9110 section 6.6.1)
        stored += ((b"date", formatdate(response_time, usegmt=True).encode()),)
    tag_values = combined(headers, rules.tag_header)
    tags = tuple(sorted({t for value in tag_values for t in value.replace(b",", b" ").split()}))
    swr = directives.seconds(cc.get("stale-while-revalidate")) if rules.mode == "standard" else None
    sie = directives.seconds(cc.get("stale-if-error")) if rules.mode == "standard" else None
    return Entry(
        status=status, headers=stored, body=b"", response_time=response_time,
        initial_age=initial_age(next(iter(combined(headers, b"age")), None), date, request_time, response_time),
        lifetime=life, no_cache=no_cache, must_revalidate=must_revalidate, immutable="immutable" in cc,
        swr=float(rules.swr if swr is None else swr), sie=float(rules.sie if sie is None else sie),
        etag=etag, last_modified=last_modified_value, vary=vary, selected=(), consumer=None if "public" in cc else consumer,
        auth_ok=auth_ok, url=url, tags=tags, delta=response_time - request_time,
    )  # fmt: skip

