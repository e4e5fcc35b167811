"""JSON Web Key Sets for the `jwt` policy: which key verifies which algorithm, from a file or a URL.

A `KeySet` binds each public key to the algorithms its type allows (RSA: RS* and PS*; EC: the ES*
of its curve; OKP: EdDSA), narrowed to one by the key's own `alg` member when it has one. The token
names an algorithm, but only among those its key was bound to here: an RSA public key can never be
used as an HMAC secret (algorithm confusion), and `none` is no key's algorithm. Symmetric (`oct`)
keys, encryption keys (`use: enc`) and keys holding private members are not used: HMAC is for the
policy's `secret`, and a JWKS is published, so a private key in one is a mistake to report.

`RemoteJwks` is a `jwks_url` source, kept across reloads while the URL and `refresh` stay the same:
it fetches when it starts serving and then every `refresh` (after a failure sooner, backing off),
keeps the last good set when a fetch fails, fetches early (at most every `NUDGE_S`) when a token
names a key id it does not know (the issuer rotated its keys), and reports its state in /health.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
import urllib.error
import urllib.request

import jwt


log = logging.getLogger("gatewayd.policies")

HMAC = ("HS256", "HS384", "HS512")
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
# (kty, crv) -> the algorithms a public key of that type verifies
FAMILIES = {
    ("RSA", None): _RSA,
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("EC", "P-521"): ("ES512",),
    ("OKP", "Ed25519"): ("EdDSA",),
    ("OKP", "Ed448"): ("EdDSA",),
}
ASYMMETRIC = (*_RSA, "ES256", "ES384", "ES512", "EdDSA")
_PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")

MAX_BYTES = 1024 * 1024  # a JWKS larger than this is refused
FETCH_TIMEOUT_S = 10.0
RETRY_FIRST_S = 1.0  # after a failed fetch, try again after this, doubling up to `refresh`
NUDGE_S = 10.0  # an unknown key id makes a fetch happen early, at most this often


class JwksError(ValueError):
    """A JWKS that cannot be used; the message names no key material."""


@dataclass(frozen=True)
class KeySet:
    """Public keys indexed for verification, each as a `jwt.PyJWK` bound to one algorithm."""

    by_kid: dict[str, dict[str, jwt.PyJWK]]  # kid -> alg -> key
    by_alg: dict[str, tuple[jwt.PyJWK, ...]]  # alg -> every key that verifies it
    unnamed: dict[str, tuple[jwt.PyJWK, ...]]  # alg -> the keys without a kid
    size: int  # keys used
    skipped: tuple[str, ...] = field(default=())  # why each key left out was (for `check`)

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self.by_alg)

    def candidates(self, kid: str | None, alg: str) -> tuple[jwt.PyJWK, ...]:
        """The keys to try on a token: the one its `kid` names (or, when no key has that id, the keys
        without one); every key of the algorithm for a token without a `kid`."""
        if kid is None:
            return self.by_alg.get(alg, ())
        named = self.by_kid.get(kid)
        if named is not None:
            key = named.get(alg)
            return () if key is None else (key,)
        return self.unnamed.get(alg, ())

    @classmethod
    def parse(cls, document: object) -> KeySet:
        """A JWKS document (parsed JSON) -> its usable keys; JwksError when there are none."""
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JwksError('not a JWKS: expected a JSON object with a "keys" array')
        by_kid: dict[str, dict[str, jwt.PyJWK]] = {}
        by_alg: dict[str, list] = {}
        unnamed: dict[str, list] = {}
        skipped = []
        size = 0
        for i, jwk in enumerate(document["keys"]):
            try:
                bound = _bind(jwk)
            except JwksError as exc:
                skipped.append(f"keys[{i}]: {exc}")
                continue
            kid = jwk.get("kid")
            if kid is not None and kid in by_kid:
                skipped.append(f"keys[{i}]: kid {kid!r} is already the id of another key")
                continue
            size += 1
            for alg, key in bound.items():
                by_alg.setdefault(alg, []).append(key)
                if kid is None:
                    unnamed.setdefault(alg, []).append(key)
            if kid is not None:
                by_kid[kid] = bound
        if not size:
            reasons = f": {'; '.join(skipped)}" if skipped else ""
            raise JwksError(f"the JWKS has no usable key{reasons}")
        return cls(
            by_kid,
            {a: tuple(k) for a, k in by_alg.items()},
            {a: tuple(k) for a, k in unnamed.items()},
            size,
            tuple(skipped),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> KeySet:
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise JwksError(f"not JSON: {exc}") from None
        return cls.parse(document)


def _bind(jwk: object) -> dict[str, jwt.PyJWK]:
    """One JWK -> alg -> the key bound to it; JwksError (naming no key material) when it is not used."""
    if not isinstance(jwk, dict):
        raise JwksError("not a JSON object")
    kty, crv, alg, kid = jwk.get("kty"), jwk.get("crv"), jwk.get("alg"), jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise JwksError("its kid is not a string")
    if kty == "oct":
        raise JwksError("a symmetric (oct) key: HMAC tokens are verified with the policy's `secret`")
    if jwk.get("use", "sig") != "sig":
        raise JwksError(f"an encryption key (use {jwk.get('use')!r})")
    if any(m in jwk for m in _PRIVATE):
        raise JwksError("holds private key members: publish only the public key")
    family = FAMILIES.get((kty, None if kty == "RSA" else crv))
    if family is None:
        raise JwksError(f"unsupported key type {kty!r}" + (f" with curve {crv!r}" if crv is not None else ""))
    if alg is not None:
        if alg not in family:
            raise JwksError(f"its alg {alg!r} is not one a {kty} key verifies here ({', '.join(family)})")
        family = (alg,)
    try:
        return {a: jwt.PyJWK(jwk, algorithm=a) for a in family}
    except jwt.PyJWTError:
        raise JwksError(f"not a valid {kty} public key") from None


def read_file(path: str) -> tuple[KeySet, str]:
    """A JWKS file -> (its keys, the SHA-256 of its bytes); JwksError when it cannot be used."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise JwksError(f"cannot read the JWKS file {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise JwksError(f"the JWKS file {path} is larger than {MAX_BYTES} bytes")
    try:
        keys = KeySet.from_bytes(data)
    except JwksError as exc:
        raise JwksError(f"{path}: {exc}") from None
    return keys, hashlib.sha256(data).hexdigest()


class RemoteJwks:
    """A `jwks_url` source: `keys` is None until a fetch succeeds, then the last good `KeySet`.

    `start()` and `close()` are called on the serving loop (gatewayd.runtime.kept); nothing is
    fetched before, so `gatewayd check` opens no connection."""

    def __init__(self, policy: str, url: str, refresh: float, timeout: float = FETCH_TIMEOUT_S):
        self.policy = policy
        self.url = url
        self.refresh = refresh
        self.timeout = timeout
        self.keys: KeySet | None = None
        self.state = "pending"  # pending (never fetched) | ok | failing (keeps the last good keys)
        self.last_error: str | None = None
        self.fetched_at: float | None = None  # unix time of the last successful fetch
        self._digest: str | None = None  # of the last good document: an unchanged one keeps `keys` as is
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None
        self._last_attempt = float("-inf")  # monotonic

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def nudge(self) -> None:
        """A token named a key id the set does not hold: fetch now, unless one was tried lately."""
        if self._wake is not None and time.monotonic() - self._last_attempt > NUDGE_S:
            self._wake.set()

    def health(self) -> dict:
        """Shown under `policies.<name>` in /health (see gatewayd.runtime.kept)."""
        return {
            "jwks": self.state,
            "last_error": self.last_error,
            "keys": self.keys.size if self.keys is not None else 0,
            "fetched_at": self.fetched_at,
        }

    async def _run(self) -> None:
        retry = RETRY_FIRST_S
        while True:
            if await self.fetch():
                delay, retry = self.refresh, RETRY_FIRST_S
            else:
                delay, retry = min(retry, self.refresh), min(retry * 2, self.refresh)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def fetch(self) -> bool:
        """One fetch; on failure the keys stay as they were. True when it succeeded."""
        self._last_attempt = time.monotonic()
        try:
            data = await self._get()
            digest = hashlib.sha256(data).hexdigest()
            if digest != self._digest:
                self.keys = KeySet.from_bytes(data)
                self._digest = digest
        except JwksError as exc:
            return self._failed(str(exc))
        except TimeoutError:
            return self._failed(f"no answer within {self.timeout:g}s")
        except OSError as exc:  # urllib's URLError, refused connections, TLS failures
            return self._failed(_reason(exc))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the loop die: the keys it has must keep serving
            log.exception("policy %r: fetching its JWKS failed", self.policy)
            return self._failed(type(exc).__name__)
        if self.state != "ok":
            log.info("policy %r: JWKS fetched, %d keys", self.policy, self.keys.size)
        self.state, self.last_error, self.fetched_at = "ok", None, time.time()
        return True

    def _failed(self, message: str) -> bool:
        # the URL is not logged nor shown: its query may hold a token
        if message != self.last_error:
            log.warning("policy %r: fetching its JWKS failed (%s)%s", self.policy, message,
                        "; keeping the last good keys" if self.keys is not None else "; its tokens are refused until a fetch succeeds")  # fmt: skip
        self.state, self.last_error = "failing", message
        return False

    async def _get(self) -> bytes:
        """The document, fetched in a thread by the standard library: a fetch cancelled when the
        policy is retired returns at once, and its thread ends within `timeout`."""
        return await asyncio.to_thread(_get, self.url, self.timeout)


def _get(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise JwksError(f"HTTP {exc.code}") from None
    if len(body) > MAX_BYTES:
        raise JwksError(f"the JWKS is larger than {MAX_BYTES} bytes")
    return body


def _reason(exc: OSError) -> str:
    """Why a fetch failed ("[Errno 111] Connection refused"), without the URL."""
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc.strerror or type(exc).__name__)
