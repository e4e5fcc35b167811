"""The `jwt` policy: admit a request that carries a valid JSON Web Token, as the consumer it names.

Signatures are PyJWT's: it is maintained, verifies HS*, RS*, PS*, ES* and EdDSA through
`cryptography`, and `PyJWK` parses JWKS keys and binds each to one algorithm (see `jwks.py` for how
keys are chosen, and why a token cannot pick the algorithm its key is used with). Only the JWS layer
is PyJWT's (`PyJWS.decode_complete`): the claims are checked by `check_claims`, a function of the
claims and `now`, so that every request is judged at the one time the table took for it.

A token already verified is not verified again: `TokenCache` maps the `Authorization` value to its
outcome (the consumer id, or its `403`) and the time it stops being valid (`exp` plus `leeway`), so
a known token costs one dict lookup and a comparison. The cache is bounded, is kept across reloads
while the policy's definition and keys stay the same (`ctx.keep`), and is emptied when a
`jwks_url`'s keys change, so a key the issuer withdrew stops admitting its tokens.

Until a `jwks_url` has been fetched once, tokens get `503` (`jwks_unavailable`, with `Retry-After`):
the gateway cannot tell a good token from a bad one yet, and a `401` would tell a client that holds
a good token to throw it away. Once fetched, a failing URL keeps the last good keys.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from ..config.units import seconds
from .api_key import bearer
from .auth import Refusal, forbidden, refused
from .effects import MISSING, Effects, Reject
from .jwks import ASYMMETRIC, HMAC, JwksError, KeySet, RemoteJwks, read_file

SCHEME = b"Bearer"
MAX_TOKENS = 10_000  # verified tokens cached per policy
MAX_CACHED_BYTES = 8192  # longer Authorization values are verified every time, not cached
MAX_CONSUMER = 256  # characters of a consumer id taken from a claim
MIN_REFRESH_S = 1.0
RETRY_AFTER_S = b"5"

# the schema's `secret` may be shorter than the hash's output, which PyJWT warns about at every
# verification; the warning is attributed to the caller of `verify`, here
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning, module=__name__)
_JWS = jwt.PyJWS()


class TokenError(Exception):
    """A token refused: `reason` is one of REASONS (a metric label), `message` is for the client."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# reason -> what the client is told, unless a TokenError says more
REASONS = {
    "malformed": "the token is not a well-formed JWT",
    "algorithm": "the token's algorithm is not accepted",
    "unknown_key": "no key of this policy can verify the token",
    "signature": "the token's signature does not verify",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "claims": "the token's claims are not accepted",
}


@dataclass(frozen=True, slots=True)
class Rules:
    """What the claims of a token must say, from the policy's spec."""

    issuer: str | None = None
    audience: frozenset[str] | None = None
    leeway: float = 0.0
    required: tuple[str, ...] = ()
    consumer_claim: str = "sub"

    @classmethod
    def of(cls, spec: dict) -> Rules:
        audience = spec.get("audience")
        return cls(
            issuer=spec.get("issuer"),
            audience=None if audience is None else frozenset([audience] if isinstance(audience, str) else audience),
            leeway=seconds(spec.get("leeway", "0s")),
            required=tuple(spec.get("required_claims", ())),
            consumer_claim=spec.get("consumer_claim", "sub"),
        )


def _number(value) -> bool:
    return value.__class__ in (int, float) and math.isfinite(value)


def check_claims(claims: object, now: float, rules: Rules) -> tuple[str, float]:
    """(consumer id, the time the token stops being valid) of a token whose signature verified, at
    `now`; TokenError when its claims refuse it. `exp` is required; `aud` is checked only when the
    policy names an audience."""
    if not isinstance(claims, dict):
        raise TokenError("malformed", "the token's payload is not a JSON object")
    exp = claims.get("exp")
    if not _number(exp):
        raise TokenError(
            "claims", "the token has no 'exp' claim" if exp is None else "the token's 'exp' claim is not a number"
        )
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _number(nbf):
            raise TokenError("claims", "the token's 'nbf' claim is not a number")
        if now < nbf - rules.leeway:
            raise TokenError("not_yet_valid", REASONS["not_yet_valid"])
    until = exp + rules.leeway
    if now >= until:
        raise TokenError("expired", REASONS["expired"])
    if rules.issuer is not None and claims.get("iss") != rules.issuer:
        raise TokenError("claims", "the token's issuer is not accepted")
    if rules.audience is not None:
        aud = claims.get("aud")
        named = (aud,) if isinstance(aud, str) else aud if isinstance(aud, list) else ()
        if not any(a in rules.audience for a in named if isinstance(a, str)):
            raise TokenError("claims", "the token is not meant for this audience")
    for claim in rules.required:
        if claim not in claims:
            raise TokenError("claims", f"the token has no {claim!r} claim")
    consumer = claims.get(rules.consumer_claim)
    if consumer.__class__ is int:
        consumer = str(consumer)
    # it becomes the X-Consumer-Id header and a log field: printable ASCII only
    if not (
        consumer.__class__ is str
        and 0 < len(consumer) <= MAX_CONSUMER
        and consumer.isascii()
        and consumer.isprintable()
    ):
        raise TokenError("claims", f"the token's {rules.consumer_claim!r} claim is missing or not a usable consumer id")
    return consumer, until


def verify(token: bytes, keys: KeySet, algorithms: frozenset[str], rules: Rules, now: float) -> tuple[str, float]:
    """(consumer id, valid until) of a token, or TokenError: its header's `alg` must be accepted,
    a key bound to that `alg` must verify its signature, then `check_claims`."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise TokenError("malformed", REASONS["malformed"]) from None
    alg = header.get("alg")
    if alg not in algorithms:  # `none` never is
        raise TokenError("algorithm", REASONS["algorithm"])
    kid = header.get("kid")
    candidates = keys.candidates(kid, alg)
    if not candidates:
        raise TokenError(
            "unknown_key", "no key of this policy has the token's key id" if kid is not None else REASONS["unknown_key"]
        )
    for key in candidates:
        try:
            payload = _JWS.decode_complete(token, key, algorithms=(alg,))["payload"]
            break
        except jwt.InvalidSignatureError:
            continue
        except jwt.PyJWTError:
            raise TokenError("malformed", REASONS["malformed"]) from None
    else:
        raise TokenError("signature", REASONS["signature"])
    try:
        claims = json.loads(payload)
    except ValueError:
        raise TokenError("malformed", "the token's payload is not JSON") from None
    return check_claims(claims, now, rules)


class TokenCache:
    """Verified tokens: `Authorization` value -> (outcome, valid until), at most `limit` of them.

    Full, it drops the tokens that expired and, if that is not enough, the older half (insertion
    order): eviction is O(n) once per `limit / 2` insertions. `keys` is the key set the entries were
    verified with (for a `jwks_url`, whose keys change: `sync` empties the cache then)."""

    __slots__ = ("entries", "keys", "limit")

    def __init__(self, limit: int = MAX_TOKENS):
        self.entries: dict[bytes, tuple[object, float]] = {}
        self.limit = limit
        self.keys = None

    def put(self, token: bytes, outcome, until: float, now: float) -> None:
        entries = self.entries
        if len(entries) >= self.limit and token not in entries:
            live = [(t, e) for t, e in entries.items() if now < e[1]]
            if len(live) >= self.limit // 2:
                live = live[len(live) - self.limit // 2 :]
            entries.clear()  # in place: authenticators hold this dict
            entries.update(live)
        entries[token] = (outcome, until)

    def sync(self, keys) -> None:
        """Forget every token if the keys changed since they were verified."""
        if keys is not self.keys:
            self.entries.clear()
            self.keys = keys


class _Fixed:
    """Keys that do not change while the policy is compiled (a `jwks` file, a `secret`)."""

    __slots__ = ("keys",)

    def __init__(self, keys: KeySet):
        self.keys = keys

    def nudge(self) -> None:
        pass


def secret_keys(secret: str) -> KeySet:
    """A `secret` as a key set of one HMAC key, bound to HS256, HS384 and HS512."""
    k = jwt.utils.base64url_encode(secret.encode()).decode()
    bound = {alg: jwt.PyJWK({"kty": "oct", "k": k}, algorithm=alg) for alg in HMAC}
    return KeySet({}, {alg: (key,) for alg, key in bound.items()}, {alg: (key,) for alg, key in bound.items()}, 1)


def _algorithms(spec: dict) -> tuple[str, ...]:
    """The algorithms a spec accepts before its keys are known."""
    family = HMAC if "secret" in spec else ASYMMETRIC
    return tuple(a for a in spec.get("algorithms", family) if a in family)


def compile_policy(spec: dict, ctx, name: str = "") -> Effects:
    rules = Rules.of(spec)
    allow = frozenset(spec["allow"]) if "allow" in spec else None
    # the key source and the verified tokens are kept across reloads, and stay the same objects
    # while what defines them does (so the cache's check that its keys did not change holds)
    if "jwks_url" in spec:
        refresh = max(seconds(spec.get("refresh", "5m")), MIN_REFRESH_S)
        defined = {"jwks_url": spec["jwks_url"], "refresh": refresh}
        source = ctx.keep(name, "jwt.keys", defined, lambda: RemoteJwks(name, spec["jwks_url"], refresh))
    elif "jwks" in spec:
        keys, digest = read_file(ctx.path(spec["jwks"]))  # `check` reported a file that cannot be used
        defined = {"jwks": ctx.path(spec["jwks"]), "sha256": digest}
        source = ctx.keep(name, "jwt.keys", defined, lambda: _Fixed(keys))
    else:
        defined = {"secret": spec["secret"]}
        source = ctx.keep(name, "jwt.keys", defined, lambda: _Fixed(secret_keys(spec["secret"])))
    cache = ctx.keep(name, "jwt.tokens", {"spec": spec, "keys": defined}, TokenCache)
    entries = cache.entries
    get = entries.get
    algorithms = frozenset(_algorithms(spec))
    if isinstance(source, _Fixed):
        algorithms &= source.keys.algorithms

    refusals = {reason: Refusal(refused(SCHEME, message), name, reason) for reason, message in REASONS.items()}
    detailed: dict[str, Refusal] = {}  # message -> refusal; messages name only what the config does, so they are few
    expired = refusals["expired"]
    unavailable = Refusal(
        Reject(503, "jwks_unavailable", "the keys that verify tokens have not been fetched yet", ((b"retry-after", RETRY_AFTER_S),)),
        name, "keys_unavailable",
    )  # fmt: skip

    def refusal(exc: TokenError) -> Refusal:
        if exc.message == REASONS[exc.reason]:
            return refusals[exc.reason]
        found = detailed.get(exc.message)
        if found is None:
            found = detailed[exc.message] = Refusal(refused(SCHEME, exc.message), name, exc.reason)
        return found

    def admit(value: bytes, now: float):
        """A token not seen yet (or expired from the cache): verify it, then cache its outcome."""
        token = bearer(value)
        if token is None:
            return MISSING  # another scheme (Basic...): no credential of this kind
        keys = source.keys
        if keys is None:
            return unavailable
        try:
            consumer, until = verify(token, keys, algorithms, rules, now)
        except TokenError as exc:
            if exc.reason == "unknown_key":
                source.nudge()
            return refusal(exc)
        outcome = consumer if allow is None or consumer in allow else Refusal(forbidden(consumer), name, "forbidden")
        if len(value) <= MAX_CACHED_BYTES:
            cache.put(value, outcome, until, now)
        return outcome

    def authenticate(ex, now):
        for header, value in ex.scope["headers"]:
            if header == b"authorization":
                break
        else:
            return MISSING
        if cache.keys is not source.keys:
            cache.sync(source.keys)
        hit = get(value)
        if hit is not None:
            if now < hit[1]:
                return hit[0]
            entries.pop(value, None)
            return expired
        return admit(value, now)

    return Effects(authenticators=((authenticate, SCHEME),))


def problems(spec: dict, ctx) -> list[tuple[tuple, str]]:
    """Algorithms the policy's key source cannot verify, a `jwks` file that cannot be used (read
    here, at every load), and a `refresh` too short."""
    found = []
    accepted = _algorithms(spec)
    for i, alg in enumerate(spec.get("algorithms", ())):
        if alg not in accepted:
            found.append((("algorithms", i), (
                f"{alg} needs `secret`: HMAC keys are never taken from a JWKS" if alg in HMAC
                else f"{alg} needs a public key (`jwks` or `jwks_url`): `secret` verifies only {', '.join(HMAC)}"
            )))  # fmt: skip
    if "jwks" in spec:
        try:
            keys, _ = read_file(ctx.path(spec["jwks"]))
        except JwksError as exc:
            found.append((("jwks",), str(exc)))
        else:
            found += [(("jwks",), f"{spec['jwks']}: {reason}") for reason in keys.skipped]
            if "algorithms" in spec and accepted and not keys.algorithms & set(accepted):
                found.append((("algorithms",), f"no key of {spec['jwks']} verifies {', '.join(accepted)}"))
    if "refresh" in spec and seconds(spec["refresh"]) < MIN_REFRESH_S:
        found.append((("refresh",), f"refresh must be at least {MIN_REFRESH_S:g}s"))
    return found
