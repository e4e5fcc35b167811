"""The `cors` policy: the Fetch standard's CORS protocol, spoken by the gateway for a route.

A browser asks before a cross-origin request it cannot make with a plain form (a custom header, a
JSON body, PUT...): an `OPTIONS` preflight with `Origin` and `Access-Control-Request-Method`. The
gateway answers it itself, in the first phase (before auth, rate limits and validation: a preflight
carries no credentials), from headers precomputed per origin; the upstream never sees it.

- Allowed origin and method: `204` with `Access-Control-Allow-Origin` (the origin, or `*` when
  `origins` is `*`), `-Allow-Methods`, `-Allow-Headers` (the configured list, never the requested
  one: a page asking for a header that is not listed gets the list without it, and the browser
  fails the request), `-Max-Age`, `-Allow-Credentials: true` when configured, and
  `Vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers`.
- Refused origin, or a method not listed: `403` with a JSON error and no CORS headers, which the
  Fetch standard names as the explicit way to say no (the browser reports a CORS failure either way).

Every other request of the route gets `Vary: Origin` (its answer depends on it); one from an allowed
origin also gets `Access-Control-Allow-Origin` (with `-Allow-Credentials` and `-Expose-Headers`),
added to the exchange so that the gateway's own errors (401, 403, 429, 400, 502...) carry them too:
otherwise the page could not read why it failed. The upstream's own `Access-Control-*` headers are
dropped from its responses: on these routes the gateway owns CORS.

Origins are compared as browsers serialize them: scheme, lower-case host and port, the port left out
when it is the scheme's default. `https://*.example.com` admits hosts one label or more below
`example.com` (not `example.com` itself, nor `evil-example.com`), with the same scheme and port;
the `null` origin (sandboxed frames, `file:` pages) is only admitted by `*`. Per request: one dict
lookup for the exact origins, then a bounded dict of origins already matched by a pattern, then, for
an origin seen for the first time, a suffix check per pattern.
"""

from __future__ import annotations

import re

from ..config.units import seconds
from .effects import CORS, Effects, HeaderEdit, Reject, Reply

# the response headers of the CORS protocol, dropped from upstream responses on these routes
UPSTREAM_DROP = frozenset({
    b"access-control-allow-origin", b"access-control-allow-credentials", b"access-control-allow-methods",
    b"access-control-allow-headers", b"access-control-expose-headers", b"access-control-max-age",
    b"access-control-allow-private-network",
})  # fmt: skip
VARY = ((b"vary", b"Origin"),)
PREFLIGHT_VARY = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
# a preflight that is refused: no CORS headers, so the browser fails the request it was asked about
REFUSED_ORIGIN = Reject(
    403, "forbidden", "this origin may not make cross-origin requests to this route", (PREFLIGHT_VARY,)
)
# origins matched by a pattern, kept with their headers; the oldest goes first when full
CACHE_SIZE = 1024
# what a host matched by `*.` may be made of: browsers serialize hosts as lower-case ASCII
# (punycode), and `:`, `/`, `@` or any other byte would mean another host or port than it seems
_HOST_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_."
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORIGIN = re.compile(r"^(https?)://(\*\.)?([A-Za-z0-9.-]+)(?::([0-9]+))?$")


class OriginError(ValueError):
    pass


def parse_origin(text: str) -> tuple[bytes, bytes | None]:
    """A configured origin as (the origin as a browser sends it, None) or, for a `*.` pattern, (scheme
    prefix, suffix): `https://*.example.com:8443` -> (b"https://", b".example.com:8443"). Raises OriginError."""
    m = _ORIGIN.match(text)
    if m is None:
        raise OriginError(f"{text!r} is not an origin (scheme://host[:port], no path)")
    scheme, star, host, port = m.group(1), m.group(2), m.group(3).lower(), m.group(4)
    if "" in host.split("."):
        raise OriginError(f"{text!r} has an empty label in its host")
    tail = ""
    if port is not None:
        number = int(port)
        if not 0 < number < 65536:
            raise OriginError(f"{text!r} has a port out of range (1 to 65535)")
        if number != _DEFAULT_PORTS[scheme]:  # browsers leave the default port out of `Origin`
            tail = f":{number}"
    if star:
        return f"{scheme}://".encode(), f".{host}{tail}".encode()
    return f"{scheme}://{host}{tail}".encode(), None


def matches_pattern(origin: bytes, prefix: bytes, suffix: bytes) -> bool:
    """Whether `origin` is `prefix` + one or more host labels + `suffix` (a `*.` pattern)."""
    if len(origin) <= len(prefix) + len(suffix) or not origin.startswith(prefix) or not origin.endswith(suffix):
        return False
    labels = origin[len(prefix) : len(origin) - len(suffix)]
    # no byte outside a host name's, and no empty label (46 is ".")
    return not labels.translate(None, _HOST_BYTES) and labels[0] != 46 and labels[-1] != 46 and b".." not in labels


class Cors:
    """One `cors` spec, compiled: every header value encoded, the exact origins' answers built.

    An entry, per allowed origin, is (headers for its actual requests, the answer to its preflights)."""

    __slots__ = ("_actual", "_preflight", "exact", "matched", "methods", "patterns", "refused_method", "star")

    def __init__(self, spec: dict):
        credentials = spec.get("credentials", False)
        origins = spec["origins"]
        if credentials and "*" in origins:
            raise ValueError("origins `*` cannot be used with credentials")
        methods = spec.get("methods", ["GET", "HEAD", "POST"])
        self.methods = frozenset(m.encode() for m in methods)
        allowed = ", ".join(methods)
        refusal = f"cross-origin requests to this route may use {allowed} only"
        self.refused_method = Reject(403, "forbidden", refusal, (PREFLIGHT_VARY,))
        both = [(b"access-control-allow-credentials", b"true")] if credentials else []
        preflight = [*both, (b"access-control-allow-methods", allowed.encode())]
        if spec.get("headers"):
            preflight.append((b"access-control-allow-headers", ", ".join(spec["headers"]).encode()))
        if "max_age" in spec:  # whole seconds; without it, browsers keep the answer 5 s
            preflight.append((b"access-control-max-age", b"%d" % int(seconds(spec["max_age"]))))
        actual = list(both)
        if spec.get("expose"):
            actual.append((b"access-control-expose-headers", ", ".join(spec["expose"]).encode()))
        # what follows Access-Control-Allow-Origin in a preflight's answer, and in any other answer
        self._preflight = (*preflight, PREFLIGHT_VARY)
        self._actual = (*actual, *VARY)
        self.star = self._entry(b"*") if "*" in origins else None
        self.exact: dict[bytes, tuple] = {}
        patterns = []
        for text in () if self.star is not None else origins:  # with `*`, every origin gets `*`
            exact, suffix = parse_origin(text)
            if suffix is None:
                self.exact[exact] = self._entry(exact)
            else:
                patterns.append((exact, suffix))
        self.patterns = tuple(dict.fromkeys(patterns))
        self.matched: dict[bytes, tuple] = {}

    def _entry(self, allow_origin: bytes) -> tuple:
        acao = (b"access-control-allow-origin", allow_origin)
        return (acao, *self._actual), Reply(204, (acao, *self._preflight))

    def entry(self, origin: bytes):
        """The entry of an allowed origin, or None."""
        found = self.exact.get(origin)
        if found is not None:
            return found
        if self.star is not None:
            return self.star
        found = self.matched.get(origin)
        if found is not None:
            return found
        for prefix, suffix in self.patterns:
            if matches_pattern(origin, prefix, suffix):
                found = self._entry(origin)
                matched = self.matched
                if len(matched) >= CACHE_SIZE:
                    matched.pop(next(iter(matched), None), None)
                matched[origin] = found
                return found
        return None

    def preflight(self, origin: bytes, requested_method: bytes):
        """The answer to a preflight: the origin's precomputed `Reply`, or a 403 `Reject`."""
        found = self.entry(origin)
        if found is None:
            return REFUSED_ORIGIN
        if requested_method not in self.methods:
            return self.refused_method
        return found[1]

    def actual(self, origin: bytes | None) -> tuple:
        """The headers any answer to a request that is not a preflight carries."""
        found = None if origin is None else self.entry(origin)
        return VARY if found is None else found[0]


def _step(cors: Cors):
    exact = cors.exact
    entry = cors.entry
    preflight = cors.preflight

    def step(ex, now):
        scope = ex.scope
        headers = scope["headers"]
        for name, origin in headers:
            if name == b"origin":
                break
        else:
            ex.add_headers(VARY)
            return None
        if scope["method"] == "OPTIONS":
            for name, requested in headers:
                if name == b"access-control-request-method":
                    return preflight(origin, requested)
        found = exact.get(origin) or entry(origin)
        ex.add_headers(VARY if found is None else found[0])
        return None

    return step


def compile_policy(spec: dict, ctx=None, name: str = "") -> Effects:
    return Effects(steps=((CORS, _step(Cors(spec))),), response_headers=HeaderEdit(drop=UPSTREAM_DROP), preflight=True)


def problems(spec: dict, ctx=None) -> list[tuple[tuple, str]]:
    """Origins that cannot match as written, and wildcards that credentials turn off."""
    found = []
    credentials = spec.get("credentials", False)
    seen: dict[tuple, str] = {}
    for i, text in enumerate(spec.get("origins", ())):
        if text == "*":
            if credentials:
                found.append((("origins", i), (
                    "origins `*` cannot be used with credentials: true: browsers refuse a credentialed answer "
                    "with Access-Control-Allow-Origin: * (list the origins instead)"
                )))  # fmt: skip
            continue
        try:
            key = parse_origin(text)
        except OriginError as exc:
            found.append((("origins", i), str(exc)))
            continue
        if key in seen:
            found.append((("origins", i), f"{text!r} is the same origin as {seen[key]!r}"))
        seen.setdefault(key, text)
    if credentials:
        for field in ("headers", "expose"):
            for j, header in enumerate(spec.get(field, ())):
                if header == "*":
                    found.append(
                        ((field, j), f"`*` in {field} is not a wildcard with credentials: true: list the header names")
                    )
    return found
