"""The `api_key` and `jwt` policies as decisions: key lookup, token verification and claims at a given
`now`, the verified-token cache, what `check` reports, what reloads keep, and the JWKS fetcher
against a real HTTP server on loopback. End-to-end behaviour is in tests/e2e/test_auth_e2e.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from identity import JwksServer, public_jwk, rsa_key

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.observe import metrics
from gatewayd.policies import api_key, jwks, jwt_token, route_steps
from gatewayd.policies.context import CompileContext
from gatewayd.policies.effects import MISSING
from gatewayd.runtime import kept
from gatewayd.runtime.gateway import Gateway

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0
KEY_A = "acme-0123456789-secret"
KEY_B = "ops-9876543210-secret"


def exchange(headers=(), query: bytes = b""):
    return SimpleNamespace(scope={"headers": list(headers), "query_string": query}, consumer=None)


def answer(outcome):
    """The Reject an authenticator's refusal sends."""
    return outcome.answer


# --- api_key: lookup --------------------------------------------------------------------------


def key_policy(**spec):
    spec.setdefault(
        "keys",
        [{"id": "acme", "key": KEY_A}, {"id": "ops", "sha256": hashlib.sha256(KEY_B.encode()).hexdigest().upper()}],
    )
    return api_key.compile_policy(spec, CompileContext(), "keys").authenticators[0][0]


def test_api_key_from_x_api_key_or_bearer_in_any_case():
    auth = key_policy()
    assert auth(exchange([(b"x-api-key", KEY_A.encode())]), NOW) == "acme"
    for scheme in (b"Bearer", b"bearer", b"BEARER", b"bEaReR"):
        assert auth(exchange([(b"authorization", scheme + b" " + KEY_B.encode())]), NOW) == "ops"
    assert auth(exchange([(b"authorization", b"Basic " + KEY_A.encode())]), NOW) is MISSING
    assert auth(exchange([(b"x-api-key", b"")]), NOW) is MISSING
    assert auth(exchange([(b"accept", b"*/*")]), NOW) is MISSING


def test_api_key_sha256_entries_need_no_secret_in_the_config():
    assert key_policy()(exchange([(b"x-api-key", KEY_B.encode())]), NOW) == "ops"


def test_api_key_first_place_in_from_wins_whatever_the_header_order():
    auth = key_policy(**{"from": ["header:X-API-Key", "header:Authorization"]})
    both = [(b"authorization", b"Bearer " + KEY_B.encode()), (b"x-api-key", KEY_A.encode())]
    assert auth(exchange(both), NOW) == "acme"
    assert key_policy()(exchange(both), NOW) == "ops"  # the default order: Authorization first
    # a Basic Authorization is no key: the next place is looked at
    assert key_policy()(exchange([(b"authorization", b"Basic eA=="), (b"x-api-key", KEY_A.encode())]), NOW) == "acme"


def test_api_key_in_the_query_percent_decoded_and_ranked_by_from():
    auth = key_policy(**{"from": ["header:X-API-Key", "query:api_key", "query:key"]})
    assert auth(exchange(query=b"page=2&api_key=" + KEY_A.replace("-", "%2D").encode()), NOW) == "acme"
    assert auth(exchange(query=b"key=" + KEY_B.encode() + b"&api_key=" + KEY_A.encode()), NOW) == "acme"
    assert auth(exchange([(b"x-api-key", KEY_B.encode())], b"api_key=" + KEY_A.encode()), NOW) == "ops"
    assert auth(exchange(query=b"api_key=&other=1"), NOW) is MISSING
    query_first = key_policy(**{"from": ["query:api_key", "header:X-API-Key"]})
    assert query_first(exchange([(b"x-api-key", KEY_B.encode())], b"api_key=" + KEY_A.encode()), NOW) == "acme"


def test_api_key_unknown_is_401_with_a_challenge_and_a_forbidden_consumer_403():
    auth = key_policy(allow=["acme"])
    unknown = answer(auth(exchange([(b"x-api-key", b"not-a-key-at-all")]), NOW))
    assert unknown.status == 401 and unknown.error == "unauthorized"
    assert unknown.headers == ((b"www-authenticate", b'Bearer realm="gatewayd", error="invalid_token"'),)
    forbidden = answer(auth(exchange([(b"x-api-key", KEY_B.encode())]), NOW))
    assert forbidden.status == 403 and "'ops'" in forbidden.message
    assert auth(exchange([(b"x-api-key", KEY_A.encode())]), NOW) == "acme"
    for refusal in (unknown, forbidden):
        assert KEY_A not in refusal.message and KEY_B not in refusal.message


def test_api_key_compiled_policy_holds_no_raw_key():
    auth = key_policy()
    seen = []

    def walk(obj, depth=0):
        if depth > 4:
            return
        if isinstance(obj, (str, bytes)):
            seen.append(obj if isinstance(obj, str) else obj.decode("latin-1"))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k, depth + 1), walk(v, depth + 1)
        elif isinstance(obj, (tuple, list)):
            for v in obj:
                walk(v, depth + 1)

    walk([cell.cell_contents for cell in auth.__closure__])
    assert seen and not any(KEY_A in s or KEY_B in s for s in seen)


def test_refusals_count_per_policy_and_reason_when_sent():
    auth = key_policy(allow=["acme"])
    counter = metrics.REGISTRY.counter("gatewayd_auth_refused_total", "", ("policy", "reason"))
    before = dict(counter.values)
    sent = []

    async def error(status, error, message, headers):
        sent.append(status)

    refusal = auth(exchange([(b"x-api-key", b"unknown-key-123")]), NOW)
    auth(exchange([(b"x-api-key", b"unknown-key-456")]), NOW)  # refused but not sent (another authenticator may admit)
    asyncio.run(refusal.send(SimpleNamespace(error=error)))
    asyncio.run(auth(exchange([(b"x-api-key", KEY_B.encode())]), NOW).send(SimpleNamespace(error=error)))
    assert sent == [401, 403]
    grew = {k: v - before.get(k, 0) for k, v in counter.values.items() if v != before.get(k, 0)}
    assert grew == {("keys", "unknown_key"): 1, ("keys", "forbidden"): 1}


# --- api_key and jwt on one route: any one admits ---------------------------------------------


def test_a_route_with_an_api_key_and_a_jwt_policy_accepts_either():
    ctx = CompileContext()
    secret = "a-shared-hmac-secret-of-32-bytes!"
    effects = api_key.compile_policy({"keys": [{"id": "acme", "key": KEY_A}]}, ctx, "keys").then(
        jwt_token.compile_policy({"secret": secret}, ctx, "tokens")
    )
    (step,), _ = route_steps(effects)
    token = jwt.encode({"sub": "alice", "exp": NOW + 60}, secret, algorithm="HS256")
    for headers, consumer in (
        ([(b"x-api-key", KEY_A.encode())], "acme"),
        ([(b"authorization", b"Bearer " + KEY_A.encode())], "acme"),
        ([(b"authorization", b"Bearer " + token.encode())], "alice"),
    ):
        ex = exchange(headers)
        assert step(ex, NOW) is None and ex.consumer == consumer
    missing = step(exchange(), NOW)
    assert missing.status == 401 and missing.headers == ((b"www-authenticate", b'Bearer realm="gatewayd"'),)
    bad = step(exchange([(b"authorization", b"Bearer nothing-valid")]), NOW)
    assert answer(bad).status == 401


# --- check: problems located in the file, no secret shown -------------------------------------

BASE = """\
version: 1
policies:
  p:
{policy}
routes:
  - match: {{path: /x}}
    policies: [p]
    respond: {{}}
"""


def problems_of(policy: str, tmp_path=None, environ=None) -> list[str]:
    text = BASE.format(policy=policy)
    file = str(tmp_path / "gateway.yaml") if tmp_path is not None else "gateway.yaml"
    try:
        load_bytes(text.encode(), file, environ=environ or {})
    except ConfigError as exc:
        return [f"{p.location.line}:{p.location.column}: {p.message}" for p in exc.problems]
    return []


def test_check_reports_a_key_of_two_consumers_and_an_allow_that_is_no_id():
    digest = hashlib.sha256(KEY_A.encode()).hexdigest()
    found = problems_of(f"""\
    api_key:
      keys:
        - {{id: acme, key: "${{KEY_A}}"}}
        - {{id: ops, sha256: "{digest}"}}
        - {{id: acme, key: "${{KEY_A}}"}}
        - {{id: ci, key: "another-key-1"}}
      allow: [acme, opps]
""", environ={"KEY_A": KEY_A})  # fmt: skip
    assert found == [
        "7:29: this key also stands for 'acme' (keys[0]): a key must identify one consumer",
        "8:27: this key is listed twice (keys[0]): a key must identify one consumer",
        "10:21: 'opps' is not the id of any of this policy's keys (did you mean 'ops'?)",
    ]
    assert not any(KEY_A in p for p in found)


def test_secrets_are_shown_by_no_command(tmp_path):
    """`check` (a failing config), `routes` and `explain` never print a substituted key or secret,
    nor a key given to `explain`."""
    secrets = {"ACME_KEY": "acme-key-d0e8f3a1c2", "JWT_SECRET": "jwt-secret-7b6a5c4d3e2f1a0b", "SHORT": "sekrit",
               "UP_TOKEN": "up-token-5e4d3c2b1a"}  # fmt: skip
    policies = {
        "good": 'api_key: {keys: [{id: acme, key: "${ACME_KEY}"}]}\n  t:\n    jwt: {secret: "${JWT_SECRET}", issuer: "${JWT_SECRET}"}'
        '\n  h:\n    headers: {request: {set: {Authorization: "Bearer ${UP_TOKEN}"}}}',
        "twice": 'api_key: {keys: [{id: acme, key: "${ACME_KEY}"}, {id: ops, key: "${ACME_KEY}"}]}',
        "short": 'api_key: {keys: [{id: acme, key: "${SHORT}"}]}\n  t:\n    jwt: {secret: "${SHORT}"}',
    }
    for name, policy in policies.items():
        (tmp_path / f"{name}.yaml").write_text(BASE.format(policy=f"    {policy}"))
    good, twice, short = (tmp_path / f"{name}.yaml" for name in policies)
    env = {"PATH": "/usr/bin:/bin", **secrets}
    outputs = []
    for args in (["check", str(good)], ["routes", str(good)], ["routes", str(good), "--format", "json"],
                 ["explain", str(good), "GET", "/x", "-H", "X-API-Key: nothing"], ["check", str(twice)],
                 ["explain", str(good), "GET", "/x", "-H", f"X-API-Key: {secrets['ACME_KEY']}", "--format", "json"],
                 ["check", str(short)], ["check", str(short), "--format", "json"], ["routes", str(twice)]):  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "gatewayd", *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
        )
        outputs.append(r.stdout + r.stderr)
    assert ": ok (" in outputs[0], outputs[0]
    assert "also stands for 'acme'" in outputs[4] and outputs[6].count("the substituted value") == 2
    for out in outputs:
        for value in secrets.values():
            assert value not in out, out


def test_check_reports_unusable_jwks_files_at_their_line(tmp_path):
    def jwks_problems(content: str | None, extra: str = "") -> list[str]:
        path = tmp_path / "keys" / "jwks.json"
        path.parent.mkdir(exist_ok=True)
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(content)
        return problems_of(f"    jwt:\n      jwks: keys/jwks.json{extra}", tmp_path)

    rsa_jwk = public_jwk(rsa_key(), kid="r1")
    assert jwks_problems(json.dumps({"keys": [rsa_jwk]})) == []  # relative to the config file's folder
    assert jwks_problems(None) == [
        f"5:13: cannot read the JWKS file {tmp_path}/keys/jwks.json: No such file or directory"
    ]
    assert jwks_problems("{nope")[0].startswith(f"5:13: {tmp_path}/keys/jwks.json: not JSON")
    assert jwks_problems('{"keys": []}') == [f"5:13: {tmp_path}/keys/jwks.json: the JWKS has no usable key"]
    private = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key()))
    assert jwks_problems(json.dumps({"keys": [rsa_jwk, private]})) == [
        "5:13: keys/jwks.json: keys[1]: holds private key members: publish only the public key"
    ]
    assert jwks_problems(json.dumps({"keys": [rsa_jwk]}), "\n      algorithms: [ES256]") == [
        "6:19: no key of keys/jwks.json verifies ES256"
    ]
    assert jwks_problems(json.dumps({"keys": [rsa_jwk]}), "\n      algorithms: [RS256, HS256]") == [
        "6:27: HS256 needs `secret`: HMAC keys are never taken from a JWKS"
    ]


def test_check_reports_algorithms_a_secret_cannot_verify_and_a_short_refresh():
    assert problems_of('    jwt: {secret: "0123456789abcdef", algorithms: [HS256, RS256]}') == [
        "4:59: RS256 needs a public key (`jwks` or `jwks_url`): `secret` verifies only HS256, HS384, HS512"
    ]
    assert problems_of('    jwt: {jwks_url: "https://id.example.com/jwks.json", refresh: 500ms}') == [
        "4:66: refresh must be at least 1s"
    ]


# --- jwt: claims, signatures, keys ------------------------------------------------------------


def claims(**more) -> dict:
    return {"sub": "alice", "exp": NOW + 60, **more}


def test_claims_exp_is_required_and_checked_with_leeway():
    rules = jwt_token.Rules(leeway=5)
    assert jwt_token.check_claims(claims(), NOW, rules) == ("alice", NOW + 65)
    assert jwt_token.check_claims(claims(exp=NOW - 4), NOW, rules) == ("alice", NOW + 1)
    for exp, reason in (
        (NOW - 5, "expired"),
        (None, "claims"),
        ("soon", "claims"),
        (True, "claims"),
        (float("inf"), "claims"),
    ):
        with pytest.raises(jwt_token.TokenError) as e:
            jwt_token.check_claims({"sub": "alice"} | ({} if exp is None else {"exp": exp}), NOW, rules)
        assert e.value.reason == reason
    with pytest.raises(jwt_token.TokenError, match="expired"):
        jwt_token.check_claims(claims(exp=NOW), NOW, jwt_token.Rules())


def test_claims_nbf_iss_aud_required_and_consumer():
    rules = jwt_token.Rules(
        issuer="https://id.test",
        audience=frozenset({"api", "admin"}),
        leeway=2,
        required=("scope",),
        consumer_claim="client_id",
    )
    good = claims(iss="https://id.test", aud=["web", "api"], scope="read", client_id="svc-1", nbf=NOW + 2)
    assert jwt_token.check_claims(good, NOW, rules) == ("svc-1", NOW + 62)
    assert jwt_token.check_claims(good | {"aud": "admin", "client_id": 42}, NOW, rules)[0] == "42"
    refused = {
        "not_yet_valid": good | {"nbf": NOW + 3},
        "claims": [
            good | {"nbf": "later"}, good | {"iss": "https://evil.test"}, {k: v for k, v in good.items() if k != "iss"},
            good | {"aud": "web"}, good | {"aud": ["web", 7]}, {k: v for k, v in good.items() if k != "aud"},
            {k: v for k, v in good.items() if k != "scope"}, {k: v for k, v in good.items() if k != "client_id"},
            good | {"client_id": ""}, good | {"client_id": "a\r\nX-Injected: 1"}, good | {"client_id": "é"},
            good | {"client_id": "x" * 257}, good | {"client_id": ["a"]}, good | {"client_id": True},
        ],
        "malformed": ["not an object"],
    }  # fmt: skip
    for reason, cases in refused.items():
        for case in cases if isinstance(cases, list) else [cases]:
            with pytest.raises(jwt_token.TokenError) as e:
                jwt_token.check_claims(case, NOW, rules)
            assert e.value.reason == reason, case


@settings(max_examples=300, deadline=None)
@given(
    exp=st.integers(NOW - 1000, NOW + 1000),
    nbf=st.none() | st.integers(NOW - 1000, NOW + 1000),
    leeway=st.integers(0, 100),
    now=st.integers(NOW - 500, NOW + 500),
)
def test_claims_time_checks_agree_with_pyjwt(exp, nbf, leeway, now):
    """PyJWT's own claim validation (slow: it signs and decodes) as the reference for exp and nbf."""
    payload = {"sub": "alice", "exp": exp} | ({} if nbf is None else {"nbf": nbf})
    token = jwt.encode(payload, "k" * 32, algorithm="HS256")
    try:
        with frozen_pyjwt_clock(now):
            jwt.decode(token, "k" * 32, algorithms=["HS256"], leeway=leeway)
        expected = None
    except jwt.ExpiredSignatureError:
        expected = "expired"
    except jwt.ImmatureSignatureError:
        expected = "not_yet_valid"
    try:
        jwt_token.check_claims(payload, now, jwt_token.Rules(leeway=leeway))
        actual = None
    except jwt_token.TokenError as exc:
        actual = exc.reason
    assert actual == expected


class frozen_pyjwt_clock:
    """PyJWT reads the clock as datetime.now(tz=timezone.utc): make that `now`."""

    def __init__(self, now: float):
        import datetime as real

        class Frozen(real.datetime):
            @classmethod
            def now(cls, tz=None):
                return real.datetime.fromtimestamp(now, tz)

        self.frozen = Frozen
        self.module = jwt.api_jwt

    def __enter__(self):
        self.saved = self.module.datetime
        self.module.datetime = self.frozen

    def __exit__(self, *exc):
        self.module.datetime = self.saved


ALL = frozenset(jwks.ASYMMETRIC)


def verify(token: str, keys, algorithms=ALL, rules=None, now=NOW):
    return jwt_token.verify(token.encode(), keys, algorithms, rules or jwt_token.Rules(), now)


def reason_of(token: str, keys, algorithms=ALL) -> str:
    with pytest.raises(jwt_token.TokenError) as e:
        verify(token, keys, algorithms)
    return e.value.reason


@pytest.mark.parametrize(
    "alg, make",
    [
        ("RS256", rsa_key),
        ("PS384", rsa_key),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("ES384", lambda: ec.generate_private_key(ec.SECP384R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
    ],
)
def test_jwks_keys_verify_their_algorithms(alg, make):
    private, other = make(), make()
    keys = jwks.KeySet.parse({"keys": [public_jwk(private, kid="k1")]})
    assert alg in keys.algorithms and "HS256" not in keys.algorithms
    assert verify(jwt.encode(claims(), private, algorithm=alg, headers={"kid": "k1"}), keys) == ("alice", NOW + 60)
    assert (
        verify(jwt.encode(claims(), private, algorithm=alg), keys)[0] == "alice"
    )  # no kid: each key of the alg is tried
    assert reason_of(jwt.encode(claims(), other, algorithm=alg, headers={"kid": "k1"}), keys) == "signature"


def test_hmac_with_a_secret():
    secret = "s" * 64
    keys = jwt_token.secret_keys(secret)
    for alg in jwks.HMAC:
        token = jwt.encode(claims(), secret, algorithm=alg, headers={"kid": "any"})
        assert verify(token, keys, frozenset(jwks.HMAC)) == ("alice", NOW + 60)
    assert reason_of(jwt.encode(claims(), "t" * 64, algorithm="HS512"), keys, frozenset(jwks.HMAC)) == "signature"
    assert reason_of(jwt.encode(claims(), secret, algorithm="HS384"), keys, frozenset({"HS256"})) == "algorithm"


def test_kid_selects_the_key():
    one, two = rsa_key(), rsa_key()
    keys = jwks.KeySet.parse({"keys": [public_jwk(one, kid="one"), public_jwk(two, kid="two")]})
    assert verify(jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "two"}), keys)[0] == "alice"
    assert reason_of(jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "one"}), keys) == "signature"
    assert reason_of(jwt.encode(claims(), two, algorithm="RS256", headers={"kid": "three"}), keys) == "unknown_key"
    assert verify(jwt.encode(claims(), two, algorithm="RS256"), keys)[0] == "alice"
    # a key's `alg` member narrows it to that algorithm
    narrowed = jwks.KeySet.parse({"keys": [public_jwk(one, kid="one", alg="RS256")]})
    assert narrowed.algorithms == {"RS256"}
    assert reason_of(jwt.encode(claims(), one, algorithm="PS256", headers={"kid": "one"}), narrowed) == "unknown_key"


def test_none_and_algorithm_confusion_are_refused():
    private = rsa_key()
    keys = jwks.KeySet.parse({"keys": [public_jwk(private, kid="r1")]})
    assert reason_of(jwt.encode(claims(), None, algorithm="none", headers={"kid": "r1"}), keys) == "algorithm"
    assert reason_of(jwt.encode(claims(), None, algorithm="none"), keys, ALL | {"none"}) == "unknown_key"
    # an HS256 token "signed" with the RSA public key's PEM, the classic confusion: even where HS256 is
    # accepted, no key of a JWKS is bound to it, and an RSA key is never an HMAC secret
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = jwt.api_jws.PyJWS()._algorithms["HS256"].sign
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "r1", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims()).encode())
    signature = jwt.utils.base64url_encode(forged(header + b"." + payload, pem))
    token = (header + b"." + payload + b"." + signature).decode()
    assert reason_of(token, keys) == "algorithm"
    assert reason_of(token, keys, ALL | {"HS256"}) == "unknown_key"
    auth = jwt_token.compile_policy({"jwks_url": "http://127.0.0.1:9/jwks.json"}, CompileContext(), "t").authenticators[
        0
    ][0]
    assert auth(exchange([(b"authorization", b"Bearer " + token.encode())]), NOW).answer.status == 503  # no keys yet
    # and a `secret` policy never verifies an RS256 token
    rs = jwt.encode(claims(), private, algorithm="RS256")
    assert token_auth()(bearer(rs), NOW).reason == "algorithm"


def test_malformed_tokens_are_refused():
    keys = jwks.KeySet.parse({"keys": [public_jwk(rsa_key())]})
    for token in ("nothing", "a.b.c", "e30", "eyJhbGciOiJSUzI1NiIsImtpZCI6N30.e30.c2ln"):  # last: kid 7, not a string
        assert reason_of(token, keys) == "malformed", token
    assert reason_of("e30.e30.", keys) == "algorithm"  # a header without `alg`


def test_jwks_documents_keep_the_keys_they_can_use():
    good = public_jwk(rsa_key(), kid="r")
    keys = jwks.KeySet.parse({"keys": [
        good, {"kty": "oct", "k": "c2VjcmV0"}, public_jwk(rsa_key(), kid="e", use="enc"),
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"}, {"kty": "RSA", "n": "!!", "e": "AQAB"},
        public_jwk(rsa_key(), kid="r"), "junk", public_jwk(rsa_key(), alg="ES256"),
    ]})  # fmt: skip
    assert keys.size == 1 and set(keys.by_kid) == {"r"}
    assert [s.split(":")[0] for s in keys.skipped] == [f"keys[{i}]" for i in range(1, 8)]
    assert not any("c2VjcmV0" in s for s in keys.skipped)
    for document in ({}, {"keys": {}}, [], {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}):
        with pytest.raises(jwks.JwksError):
            jwks.KeySet.parse(document)


# --- jwt: the compiled authenticator and its cache --------------------------------------------

SECRET = "a-shared-hmac-secret-of-32-bytes!"


def token_auth(ctx=None, **spec):
    spec.setdefault("secret", SECRET)
    return jwt_token.compile_policy(spec, ctx or CompileContext(), "tokens").authenticators[0][0]


def bearer(token: str):
    return exchange([(b"accept", b"*/*"), (b"authorization", b"Bearer " + token.encode())])


def test_a_verified_token_is_looked_up_not_verified_again(monkeypatch):
    auth = token_auth(allow=["alice"], leeway="1s")
    calls = []
    real = jwt_token.verify
    monkeypatch.setattr(jwt_token, "verify", lambda *a: calls.append(1) or real(*a))
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    denied = jwt.encode(claims(sub="mallory"), SECRET, algorithm="HS256")
    assert [auth(bearer(token), NOW + i) for i in range(3)] == ["alice"] * 3
    assert auth(bearer(denied), NOW).answer.status == 403 and auth(bearer(denied), NOW).answer.status == 403
    assert len(calls) == 2
    assert auth(bearer(token), NOW + 60.9) == "alice"  # exp + leeway
    expired = auth(bearer(token), NOW + 61)
    assert expired.reason == "expired" and expired.answer.status == 401
    assert len(calls) == 2  # the cache answered, then dropped the entry
    assert auth(bearer(token), NOW + 61).reason == "expired" and len(calls) == 3


def test_the_jwt_authenticator_sees_only_bearer_tokens():
    auth = token_auth()
    assert auth(exchange([(b"accept", b"*/*")]), NOW) is MISSING
    assert auth(exchange([(b"authorization", b"Basic YTpi")]), NOW) is MISSING
    assert auth(bearer("not-a-jwt"), NOW).reason == "malformed"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 40)), max_size=200))
def test_the_token_cache_stays_bounded_and_keeps_what_is_live_and_recent(puts):
    cache = jwt_token.TokenCache(limit=8)
    now = 0.0
    for i, (token, ttl) in enumerate(puts):
        now += 0.5
        cache.put(b"t%d" % token, f"c{i}", now + ttl, now)
        assert len(cache.entries) <= 8
        assert cache.entries[b"t%d" % token] == (f"c{i}", now + ttl)  # the latest put is there
        for t, (outcome, until) in cache.entries.items():  # every entry is what was last put for it
            last = max(j for j, (tok, _) in enumerate(puts[: i + 1]) if b"t%d" % tok == t)
            assert outcome == f"c{last}"


def test_cache_eviction_drops_expired_tokens_first():
    cache = jwt_token.TokenCache(limit=4)
    for i in range(3):
        cache.put(b"old%d" % i, "x", 10.0, 0.0)
    cache.put(b"live", "y", 100.0, 0.0)
    cache.put(b"new", "z", 100.0, 20.0)
    assert set(cache.entries) == {b"live", b"new"}


# --- reloads keep the cache and the fetched keys ----------------------------------------------

RELOAD_CONFIG = """\
version: 1
policies:
  tokens:
    jwt: {{secret: "{secret}"}}
  remote:
    jwt: {{jwks_url: "http://127.0.0.1:9/jwks.json"}}
routes:
  - match: {{path: /t}}
    policies: [tokens]
    respond: {{}}
  - match: {{path: /r}}
    policies: [remote]
    respond: {{}}
{extra}"""


def test_a_reload_keeps_verified_tokens_and_fetched_keys(tmp_path, monkeypatch):
    path = tmp_path / "gateway.yaml"
    path.write_text(RELOAD_CONFIG.format(secret=SECRET, extra=""))
    gateway = Gateway(str(path))
    gateway.start()
    private = rsa_key()
    remote = next(obj for obj in gateway.kept.values() if isinstance(obj, jwks.RemoteJwks))
    remote.keys = jwks.KeySet.parse({"keys": [public_jwk(private, kid="k")]})  # as a fetch would
    hs = jwt.encode(claims(), SECRET, algorithm="HS256")
    rs = jwt.encode(claims(sub="bob"), private, algorithm="RS256", headers={"kid": "k"})

    def consumer(route: int, token: str):
        ex = bearer(token)
        answer = gateway.table.routes[route].steps[0](ex, NOW)
        return ex.consumer if answer is None else answer

    assert consumer(0, hs) == "alice" and consumer(1, rs) == "bob"
    path.write_text(RELOAD_CONFIG.format(secret=SECRET, extra="  - match: {path: /new}\n    respond: {}\n"))
    assert asyncio.run(gateway.reload("test"))
    assert len(gateway.table.routes) == 3
    monkeypatch.setattr(jwt_token, "verify", lambda *a: pytest.fail("verified again after the reload"))
    assert consumer(0, hs) == "alice" and consumer(1, rs) == "bob"
    assert next(obj for obj in gateway.kept.values() if isinstance(obj, jwks.RemoteJwks)) is remote
    # a changed definition starts afresh
    path.write_text(RELOAD_CONFIG.format(secret=SECRET[::-1], extra=""))
    assert asyncio.run(gateway.reload("test"))
    monkeypatch.undo()
    assert consumer(0, hs).reason == "signature"
    asyncio.run(gateway.close())


def test_the_old_config_serving_during_a_reload_does_not_empty_the_kept_cache(tmp_path, monkeypatch):
    """Requests keep arriving on the old table while the new config compiles (in a thread): both see
    the same kept keys and cache, so neither takes the other's keys for a change."""
    from gatewayd.runtime.kept import Kept

    private = rsa_key()
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [public_jwk(private, kid="k")]}))
    specs = {"file": {"jwks": "jwks.json"}, "secret": {"secret": SECRET}}
    tokens = {
        "file": jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "k"}),
        "secret": jwt.encode(claims(), SECRET, algorithm="HS256"),
    }
    kept = Kept()

    def compiled(generation):
        ctx = CompileContext(kept=generation, base_dir=str(tmp_path))
        return {k: jwt_token.compile_policy(spec, ctx, k).authenticators[0][0] for k, spec in specs.items()}

    old = compiled(first := kept.generation())
    kept.commit(first)
    assert all(old[k](bearer(t), NOW) == "alice" for k, t in tokens.items())
    monkeypatch.setattr(jwt_token, "verify", lambda *a: pytest.fail("verified again"))
    new = compiled(second := kept.generation())
    assert all(old[k](bearer(t), NOW) == "alice" for k, t in tokens.items())
    kept.commit(second)
    assert all(new[k](bearer(t), NOW) == "alice" for k, t in tokens.items())
    kept.close()


# --- the JWKS fetcher ---------------------------------------------------------------------------


def test_remote_jwks_keeps_its_last_good_keys_and_reports_in_health():
    one, two = rsa_key(), rsa_key()
    server = JwksServer({"keys": [public_jwk(one, kid="one")]})

    async def scenario():
        remote = jwks.RemoteJwks("idp", server.url, refresh=3600)
        held = kept.Generation({})
        held.get("idp", lambda: remote)
        assert remote.health() == {"jwks": "pending", "last_error": None, "keys": 0, "fetched_at": None}
        remote.start()
        try:
            await until(lambda: remote.state == "ok")
            first = remote.keys
            health = kept.health(held)["idp"]
            assert health["jwks"] == "ok" and health["keys"] == 1 and health["fetched_at"] > 0
            assert await remote.fetch() and remote.keys is first  # the same document keeps the same set
            server.status = 500
            assert not await remote.fetch()
            assert remote.keys is first and remote.health()["last_error"] == "HTTP 500"
            server.status, server.body = 200, b"{broken"
            assert not await remote.fetch() and remote.last_error.startswith("not JSON")
            server.body = json.dumps({"keys": [public_jwk(two, kid="two")]}).encode()
            assert await remote.fetch() and set(remote.keys.by_kid) == {"two"}
            server.stop()
            assert not await remote.fetch()
            assert remote.state == "failing" and set(remote.keys.by_kid) == {"two"}
            assert "url-secret" not in json.dumps(kept.health(held))
        finally:
            remote.close()

    asyncio.run(scenario())


def test_an_unknown_kid_fetches_early_and_a_key_change_empties_the_cache(monkeypatch):
    monkeypatch.setattr(jwks, "NUDGE_S", 0.0)
    one, two = rsa_key(), rsa_key()
    server = JwksServer({"keys": [public_jwk(one, kid="one")]})

    async def scenario():
        ctx = CompileContext()
        auth = jwt_token.compile_policy({"jwks_url": server.url, "refresh": "1h"}, ctx, "idp").authenticators[0][0]
        (remote,) = [o for o in ctx.kept.held.values() if isinstance(o, jwks.RemoteJwks)]
        old = jwt.encode(claims(exp=time.time() + 60), one, algorithm="RS256", headers={"kid": "one"})
        new = jwt.encode(claims(sub="bob", exp=time.time() + 60), two, algorithm="RS256", headers={"kid": "two"})
        assert auth(bearer(old), time.time()).answer.status == 503
        remote.start()
        try:
            await until(lambda: remote.state == "ok")
            assert auth(bearer(old), time.time()) == "alice"
            server.body = json.dumps({"keys": [public_jwk(two, kid="two")]}).encode()  # the issuer rotates
            hits = server.hits
            assert auth(bearer(new), time.time()).reason == "unknown_key"
            await until(lambda: remote.keys is not None and "two" in remote.keys.by_kid)
            assert server.hits == hits + 1
            assert auth(bearer(new), time.time()) == "bob"
            assert auth(bearer(old), time.time()).reason == "unknown_key"  # withdrawn key: its cached token is gone
        finally:
            remote.close()
            server.stop()

    asyncio.run(scenario())


async def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
