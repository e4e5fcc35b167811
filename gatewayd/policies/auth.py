"""The auth phase of a route: its authenticators (`api_key`, `jwt`) folded into one step.

Several auth policies on one route mean any one of them admits: the first authenticator that
recognises a credential and accepts it sets `exchange.consumer`. A request with no credential of
any kind gets `401` naming the schemes; one whose credentials were all refused gets the first
refusal (`401` for an unknown key or a bad token, `403` for a consumer the policy does not allow).
Refusals are counted in `gatewayd_auth_refused_total{policy, reason}` when they are sent, so a
credential one authenticator of a route refuses but another admits is not counted.
"""

from __future__ import annotations

from ..observe import metrics
from .effects import MISSING, Reject

REALM = b'realm="gatewayd"'


REFUSED = metrics.counter(
    "gatewayd_auth_refused_total",
    "Requests an auth policy (api_key, jwt) refused, by policy and reason.",
    ("policy", "reason"),
)


class Refusal:
    """An auth refusal (a `Reject`) that counts itself in `gatewayd_auth_refused_total` when sent.

    Built when the policy compiles, one per reason (and per forbidden consumer), so refusing costs
    no allocation; `reason` must come from a fixed set, since it is a metric label."""

    __slots__ = ("_counted", "answer", "reason")

    def __init__(self, answer, policy: str, reason: str):
        self.answer = answer
        self.reason = reason
        self._counted = REFUSED.labels(policy, reason)

    async def send(self, ex) -> None:
        self._counted.inc()
        await self.answer.send(ex)


def missing(schemes: tuple[bytes, ...]) -> Reject:
    challenge = tuple((b"www-authenticate", b"%s %s" % (s, REALM)) for s in dict.fromkeys(schemes))
    return Reject(401, "unauthorized", "this route needs credentials", challenge)


def refused(scheme: bytes, message: str) -> Reject:
    """A credential that is not valid (RFC 6750 section 3.1's `invalid_token`)."""
    return Reject(401, "unauthorized", message, ((b"www-authenticate", b'%s %s, error="invalid_token"' % (scheme, REALM)),))


def forbidden(consumer: str) -> Reject:
    return Reject(403, "forbidden", f"consumer {consumer!r} may not use this route")


def auth_step(authenticators):
    """One step for a route's (authenticator, scheme) pairs."""
    if not authenticators:
        return None
    none_found = missing(tuple(scheme for _, scheme in authenticators))
    if len(authenticators) == 1:
        (authenticate, _), = authenticators

        def step(ex, now):
            outcome = authenticate(ex, now)
            if outcome.__class__ is str:
                ex.consumer = outcome
                return None
            return none_found if outcome is MISSING else outcome

        return step
    chain = tuple(a for a, _ in authenticators)

    def step(ex, now):
        first_refusal = None
        for authenticate in chain:
            outcome = authenticate(ex, now)
            if outcome.__class__ is str:
                ex.consumer = outcome
                return None
            if outcome is not MISSING and first_refusal is None:
                first_refusal = outcome
        return first_refusal or none_found

    return step
