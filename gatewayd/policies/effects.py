"""What a compiled policy contributes to a route, as precomputed values.

A route's request steps run in a fixed order of phases, whatever the order in which the route lists
its policies: a browser's preflight carries no credentials, so CORS must answer it before auth; a
rate limit keyed by consumer needs auth's answer; validation is the last thing before the action.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

# phases of the request steps, in the order they run
CORS, AUTH, RATE_LIMIT, VALIDATE = range(4)
# the names `observability.server_timing: detailed` gives each phase's time
PHASE_NAMES = {CORS: b"cors", AUTH: b"auth", RATE_LIMIT: b"ratelimit", VALIDATE: b"validate"}


@dataclass(frozen=True, slots=True)
class Reject:
    """A request step's decision to stop: the JSON error to send instead of running the action."""

    status: int
    error: str
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def send(self, ex) -> None:
        await ex.error(self.status, self.error, self.message, self.headers)


@dataclass(frozen=True, slots=True)
class Reply:
    """A request step's whole answer, precomputed (a CORS preflight): status and headers, no body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]

    async def send(self, ex) -> None:
        await ex.respond(self.status, list(self.headers), b"")


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request step's refusal with details: a JSON error whose `errors` lists every problem found."""

    status: int
    error: str
    message: str
    errors: tuple[dict, ...]

    async def send(self, ex) -> None:
        body = json.dumps({
            "error": self.error, "message": self.message, "errors": list(self.errors),
            "request_id": ex.request_id.decode("latin-1"),
        }).encode()  # fmt: skip
        await ex.respond(self.status, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))], body)


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Header rewrites folded into one pass: drop these names, then append these pairs."""

    drop: frozenset[bytes] = frozenset()
    extra: tuple[tuple[bytes, bytes], ...] = ()

    def then(self, later: "HeaderEdit") -> "HeaderEdit":
        """This edit followed by `later`: later drops also remove our appended pairs."""
        kept = tuple(h for h in self.extra if h[0] not in later.drop)
        return HeaderEdit(self.drop | later.drop, kept + later.extra)

    @property
    def keeps_date(self) -> bool:
        """Whether the response keeps the Date the gateway adds: not when a policy removes or sets it."""
        return b"date" not in self.drop

    def apply(self, headers) -> list[tuple[bytes, bytes]]:
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        out.extend(self.extra)
        return out


# A request step decides from the exchange and the wall-clock time (seconds); None continues, an
# answer (Reject, Reply, Invalid: anything with `async send(ex)`) stops the request with it.
Step = Callable[[object, float], object]
# An authenticator: the consumer id (str) it admits, MISSING when the request carries no credential
# of its kind, or the Reject for a credential it refuses. Several on one route: any one admits.
Authenticator = Callable[[object, float], object]
MISSING = object()
# An action wrapper: wrap(action, route) -> action, for policies that need the request body or the
# response (validation of a JSON body; the cache); `route` is the RouteContext of the route it wraps
Wrap = Callable[[Callable, "RouteContext"], Callable]


@dataclass(frozen=True, slots=True)
class RouteContext:
    """What a wrapper may know of the route it wraps."""

    name: str
    fingerprint: str  # everything that decides what the route's action answers, as text
    timeout: float  # seconds the action may take to answer (its upstream's response timeout)


@dataclass(frozen=True, slots=True)
class Effects:
    steps: tuple[tuple[int, Step], ...] = ()  # (phase, step), in the order added
    authenticators: tuple[tuple[Authenticator, bytes], ...] = ()  # (authenticator, its WWW-Authenticate scheme)
    wraps: tuple[Wrap, ...] = ()
    request_headers: HeaderEdit = HeaderEdit()
    response_headers: HeaderEdit = HeaderEdit()
    preflight: bool = False  # the route answers CORS preflights (so it matches OPTIONS too)

    def then(self, later: "Effects") -> "Effects":
        return Effects(
            self.steps + later.steps,
            self.authenticators + later.authenticators,
            self.wraps + later.wraps,
            self.request_headers.then(later.request_headers),
            self.response_headers.then(later.response_headers),
            self.preflight or later.preflight,
        )
