"""API keys and JWTs through a real gatewayd on both engines: each answer (missing, unknown, forbidden,
admitted) as a client sees it, the consumer the upstream sees, a route taking either credential,
HTTP/2, refusals in /metrics, no secret in any log, answer, /health, /metrics or reload error, and a
JWKS URL served on loopback that stops answering (last good keys kept, /health says so, a reload keeps
them)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid

import httpx
import jwt
import pytest
from conftest import HOST, free_port, write_atomically
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from identity import JwksServer, public_jwk
from prometheus_client.parser import text_string_to_metric_families
from test_reload import wait_for

ACME_KEY = f"acme-{uuid.uuid4().hex}"  # given to the gateway as ${GW_TEST_ACME_KEY}
OPS_KEY = f"ops-{uuid.uuid4().hex}"  # in the config only as its sha256
GUEST_KEY = f"guest-{uuid.uuid4().hex}"  # a known key whose consumer `allow` leaves out
ENV_VAR = "GW_TEST_ACME_KEY"
UPSTREAM_TOKEN = f"uptoken-{uuid.uuid4().hex}"  # sent to the upstream by a headers policy, from ${GW_TEST_UPSTREAM_TOKEN}
TOKEN_VAR = "GW_TEST_UPSTREAM_TOKEN"
ISSUER = "https://id.test"
CHALLENGE = 'Bearer realm="gatewayd"'
INVALID = 'Bearer realm="gatewayd", error="invalid_token"'

CONFIG = """
version: 1
server:
  http: auto
observability:
  access_log: {{to: "{log}"}}
upstreams:
  echo: {{targets: ["{echo}"]}}
policies:
  keys:
    api_key:
      from: ["header:Authorization", "header:X-API-Key", "query:api_key"]
      keys:
        - {{id: acme, key: "${{{env}}}"}}
        - {{id: ops, sha256: "{ops_sha256}"}}
        - {{id: guest, key: "{guest}"}}
      allow: [acme, ops]
  tokens:
    jwt:
      jwks: "{jwks}"
      issuer: "{issuer}"
      audience: api
      leeway: 5s
      allow: [alice, bob]
  upstream-token:
    headers:
      request:
        set: {{X-Upstream-Token: "${{{token_env}}}"}}
routes:
  - name: keyed
    match: {{path_prefix: /keyed}}
    policies: [keys]
    upstream: echo
  - name: token
    match: {{path_prefix: /token}}
    policies: [tokens]
    upstream: echo
  - name: either
    match: {{path_prefix: /either}}
    policies: [tokens, keys]
    upstream: echo
  - name: tokened
    match: {{path_prefix: /tokened}}
    policies: [keys, upstream-token]
    upstream: echo
"""


class Issuer:
    """The signing keys of a test identity provider, and tokens made with them."""

    def __init__(self):
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.jwks = {"keys": [public_jwk(self.rsa, kid="r1"), public_jwk(self.ed, kid="e1")]}

    def token(self, sub="alice", alg="RS256", key=None, ttl=300.0, **claims) -> str:
        payload = {"sub": sub, "iss": ISSUER, "aud": "api", "exp": time.time() + ttl, "jti": uuid.uuid4().hex, **claims}
        kid = "e1" if alg == "EdDSA" else "r1"
        return jwt.encode(
            payload, key or (self.ed if alg == "EdDSA" else self.rsa), algorithm=alg, headers={"kid": kid}
        )


@pytest.fixture(scope="module")
def idp() -> Issuer:
    return Issuer()


@pytest.fixture(scope="module")
def paths(engine, tmp_path_factory, idp):
    folder = tmp_path_factory.mktemp(f"auth-{engine}")
    (folder / "jwks.json").write_text(json.dumps(idp.jwks))
    return {"log": folder / "access.log", "jwks": folder / "jwks.json"}


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, paths):
    config = CONFIG.format(
        log=paths["log"], echo=upstream("echo").url, env=ENV_VAR, ops_sha256=hashlib.sha256(OPS_KEY.encode()).hexdigest(),
        guest=GUEST_KEY, jwks=paths["jwks"], issuer=ISSUER, token_env=TOKEN_VAR,
    )  # fmt: skip
    os.environ[ENV_VAR], os.environ[TOKEN_VAR] = ACME_KEY, UPSTREAM_TOKEN  # the gateway process inherits them
    try:
        return gatewayd_module(config)
    finally:
        del os.environ[ENV_VAR], os.environ[TOKEN_VAR]


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


def consumer_seen_upstream(r: httpx.Response) -> str | None:
    assert r.status_code == 200, r.text
    return r.json()["headers"].get("x-consumer-id")


def refused(r: httpx.Response, status: int, challenge: str | None) -> None:
    assert r.status_code == status, r.text
    assert r.headers.get("www-authenticate") == challenge
    assert r.json()["error"] == {401: "unauthorized", 403: "forbidden"}[status]


def test_api_key_missing_unknown_forbidden_and_admitted(client):
    refused(client.get("/keyed/anything"), 401, CHALLENGE)
    refused(client.get("/keyed/anything", headers={"X-API-Key": "no-such-key-000"}), 401, INVALID)
    refused(client.get("/keyed/anything", headers={"Authorization": "Basic YTpi"}), 401, CHALLENGE)
    forbidden = client.get("/keyed/anything", headers={"X-API-Key": GUEST_KEY})
    refused(forbidden, 403, None)
    assert "'guest'" in forbidden.json()["message"]
    assert consumer_seen_upstream(client.get("/keyed/anything", headers={"X-API-Key": ACME_KEY})) == "acme"
    assert (
        consumer_seen_upstream(client.get("/keyed/anything", headers={"Authorization": f"bearer {ACME_KEY}"})) == "acme"
    )
    assert consumer_seen_upstream(client.get("/keyed/anything", params={"api_key": ACME_KEY})) == "acme"
    assert consumer_seen_upstream(client.get("/keyed/anything", headers={"X-API-Key": OPS_KEY})) == "ops"
    # a client cannot name its consumer itself
    spoofed = client.get("/keyed/anything", headers={"X-API-Key": OPS_KEY, "X-Consumer-Id": "acme"})
    assert consumer_seen_upstream(spoofed) == "ops"


def test_jwt_missing_invalid_forbidden_and_admitted(client, idp):
    def get(token: str) -> httpx.Response:
        return client.get("/token/anything", headers={"Authorization": f"Bearer {token}"})

    refused(client.get("/token/anything"), 401, CHALLENGE)
    for bad in (
        "not-a-jwt",
        idp.token(ttl=-10),  # expired beyond the 5s leeway
        idp.token(iss="https://evil.test"),
        idp.token(aud="other"),
        idp.token(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)),  # not the issuer's key
        jwt.encode({"sub": "alice", "iss": ISSUER, "aud": "api", "exp": time.time() + 60}, None, algorithm="none"),
        forged_hs256(idp),
    ):
        refused(get(bad), 401, INVALID)
    refused(get(idp.token(sub="carol")), 403, None)
    assert consumer_seen_upstream(get(idp.token())) == "alice"
    assert consumer_seen_upstream(get(idp.token(sub="bob", alg="EdDSA"))) == "bob"
    token = idp.token(ttl=2)  # within its leeway a second later, and then looked up, not verified again
    assert [consumer_seen_upstream(get(token)) for _ in range(3)] == ["alice"] * 3


def forged_hs256(idp: Issuer) -> str:
    """An HS256 token whose HMAC key is the issuer's RSA public key in PEM: the algorithm confusion attack."""
    pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "r1", "typ": "JWT"}).encode())
    payload = jwt.utils.base64url_encode(
        json.dumps({"sub": "alice", "iss": ISSUER, "aud": "api", "exp": time.time() + 60}).encode()
    )
    signature = jwt.utils.base64url_encode(jwt.api_jws.PyJWS()._algorithms["HS256"].sign(header + b"." + payload, pem))
    return (header + b"." + payload + b"." + signature).decode()


def test_a_route_with_both_policies_accepts_either(client, idp):
    assert consumer_seen_upstream(client.get("/either/anything", headers={"X-API-Key": ACME_KEY})) == "acme"
    assert (
        consumer_seen_upstream(client.get("/either/anything", headers={"Authorization": f"Bearer {ACME_KEY}"}))
        == "acme"
    )
    assert (
        consumer_seen_upstream(client.get("/either/anything", headers={"Authorization": f"Bearer {idp.token()}"}))
        == "alice"
    )
    refused(client.get("/either/anything"), 401, CHALLENGE)
    refused(client.get("/either/anything", headers={"Authorization": "Bearer neither-0001"}), 401, INVALID)
    refused(client.get("/either/anything", headers={"X-API-Key": GUEST_KEY}), 403, None)


def test_http2_cleartext(gw, idp):
    with httpx.Client(base_url=gw.url, http1=False, http2=True, timeout=10.0) as h2:
        r = h2.get("/either/anything", headers={"Authorization": f"Bearer {idp.token(sub='bob')}"})
        assert r.http_version == "HTTP/2" and consumer_seen_upstream(r) == "bob"
        refused(h2.get("/keyed/anything", headers={"X-API-Key": "no-such-key-000"}), 401, INVALID)


def refusals(client) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "gatewayd_auth_refused":
            for s in family.samples:
                if s.name.endswith("_total"):
                    found[(s.labels["policy"], s.labels["reason"])] = s.value
    return found


def settled_refusals(client, quiet_s: float = 1.5, timeout_s: float = 10.0) -> dict:
    """The refusal counts once they have not changed for `quiet_s` (workers publish once a second)."""
    deadline = time.monotonic() + timeout_s
    last, since = refusals(client), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the refusal counts kept changing"
        time.sleep(0.1)
        now = refusals(client)
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_refusals_are_counted_by_policy_and_reason(client, gw, idp):
    before = settled_refusals(client)
    client.get("/keyed/x", headers={"X-API-Key": "no-such-key-001"})
    client.get("/keyed/x", headers={"X-API-Key": GUEST_KEY})
    client.get("/token/x", headers={"Authorization": f"Bearer {idp.token(ttl=-60)}"})
    # the jwt policy refuses this Bearer credential, the api_key policy admits it: nothing counted
    assert client.get("/either/x", headers={"Authorization": f"Bearer {ACME_KEY}"}).status_code == 200
    want = {("keys", "unknown_key"): 1, ("keys", "forbidden"): 1, ("tokens", "expired"): 1}

    def grown():
        now = refusals(client)
        return {k: v - before.get(k, 0) for k, v in now.items() if v != before.get(k, 0)}

    wait_for(lambda: grown().keys() >= want.keys(), "the refusals in /metrics", gw)
    assert grown() == want


def test_no_key_or_token_reaches_a_log_an_answer_health_or_metrics(client, gw, idp, paths):
    token, denied = idp.token(), idp.token(sub="carol")
    secrets = [ACME_KEY, OPS_KEY, GUEST_KEY, UPSTREAM_TOKEN, token, denied, "no-such-key-002"]
    # what a key's digest would look like too: the gateway has no business printing it
    secrets += [hashlib.sha256(s.encode()).hexdigest() for s in (ACME_KEY, GUEST_KEY)]
    ids, answers = [], []
    for path, headers, params in (
        ("/keyed/x", {"X-API-Key": ACME_KEY}, {}),
        ("/keyed/x", {"Authorization": f"Bearer {OPS_KEY}"}, {}),
        ("/keyed/x", {}, {"api_key": ACME_KEY}),
        ("/keyed/x", {"X-API-Key": GUEST_KEY}, {}),
        ("/keyed/x", {"X-API-Key": "no-such-key-002"}, {}),
        ("/token/x", {"Authorization": f"Bearer {token}"}, {}),
        ("/token/x", {"Authorization": f"Bearer {denied}"}, {}),
        ("/either/x", {"Authorization": f"Bearer {token[:-4]}AAAA"}, {}),
        ("/tokened/x", {"X-API-Key": ACME_KEY}, {}),
        ("/tokened/x", {"X-API-Key": GUEST_KEY}, {}),
        ("/tokened/x", {}, {}),
    ):
        ids.append(f"secret-check-{len(ids)}-{gw.engine}")
        answers.append(client.get(path, headers={**headers, "X-Request-Id": ids[-1]}, params=params))
    log = paths["log"]
    lines = wait_for(lambda: log.exists() and (ls := [json.loads(l) for l in log.read_text().splitlines()])
                     and set(ids) <= {l["request_id"] for l in ls} and ls, "the access log lines", gw)  # fmt: skip
    by_id = {l["request_id"]: l for l in lines}
    assert [by_id[i]["consumer"] for i in ids] == ["acme", "ops", "acme", None, None, "alice", None, None, "acme", None, None]
    assert [by_id[i]["status"] for i in ids] == [200, 200, 200, 403, 401, 200, 403, 401, 200, 403, 401]
    assert answers[8].json()["headers"]["x-upstream-token"] == UPSTREAM_TOKEN  # the upstream gets it
    # a reload rejected because of a substituted value: the error names the place, not the value
    served = gw.config_path.read_text()
    broken = served.replace('echo: {targets: ["', f'echo: {{targets: ["${{{TOKEN_VAR}}}", "', 1)
    assert broken != served
    write_atomically(gw.config_path, broken)
    error = wait_for(lambda: gw.health()["last_reload_error"], "the rejected reload", gw)
    assert "upstreams.echo.targets[0]: the substituted value is not valid" in error
    seen = {
        "stderr": gw.log(),
        "access log": log.read_text(),
        "/health": client.get("/health").text,
        "/metrics": client.get("/metrics").text,
    }
    # the gateway's own answers (the admitted ones are the echo upstream's, showing what it received)
    for i, r in enumerate(answers):
        if r.status_code != 200:
            seen[f"answer {i}"] = "".join(f"{k}: {v}\n" for k, v in r.headers.items()) + r.text
    write_atomically(gw.config_path, served)
    wait_for(lambda: gw.health()["last_reload_error"] is None, "the served config back in its file", gw)
    for where, text in seen.items():
        for secret in secrets:
            assert secret not in text, f"a secret in {where}"


# --- a JWKS URL ---------------------------------------------------------------------------------

REMOTE_CONFIG = """
version: 1
upstreams:
  echo: {{targets: ["{echo}"]}}
policies:
  remote:
    jwt: {{jwks_url: "{url}", refresh: 1s, issuer: "{issuer}"}}
routes:
  - name: remote
    match: {{path_prefix: /remote}}
    policies: [remote]
    upstream: echo
{extra}"""


def test_jwks_url_keeps_its_last_good_keys_across_failures_and_reloads(gatewayd, upstream, idp):
    server = JwksServer({"keys": [public_jwk(idp.rsa, kid="r1")]}, port=free_port())
    echo = upstream("echo").url
    try:
        gw = gatewayd(REMOTE_CONFIG.format(echo=echo, url=server.url, issuer=ISSUER, extra=""))
        with httpx.Client(base_url=gw.url, timeout=10.0) as client:
            health = wait_for(
                lambda: (h := gw.health().get("policies", {}).get("remote")) and h["jwks"] == "ok" and h,
                "the first fetch",
                gw,
            )
            assert health["keys"] == 1 and health["last_error"] is None and health["fetched_at"] > time.time() - 30

            def get(token: str) -> httpx.Response:
                return client.get("/remote/anything", headers={"Authorization": f"Bearer {token}"})

            assert consumer_seen_upstream(get(idp.token())) == "alice"
            server.stop()
            failing = wait_for(
                lambda: (h := gw.health()["policies"]["remote"])["jwks"] == "failing" and h, "a failed fetch", gw
            )
            assert failing["keys"] == 1 and failing["last_error"] and failing["fetched_at"] >= health["fetched_at"]
            assert (
                consumer_seen_upstream(get(idp.token(sub="bob"))) == "bob"
            )  # a new token, verified with the kept keys
            # a reload that leaves the policy alone keeps its keys (and its state) while the URL is down
            generation = gw.health()["generation"]
            gw.write_config(
                REMOTE_CONFIG.format(
                    echo=echo, url=server.url, issuer=ISSUER, extra="  - {match: {path: /new}, respond: {}}\n"
                )
            )
            wait_for(lambda: gw.health()["generation"] == generation + 1, "the reload", gw)
            assert client.get("/new").status_code == 200
            after = gw.health()["policies"]["remote"]
            assert after["jwks"] == "failing" and after["keys"] == 1 and after["fetched_at"] == failing["fetched_at"]
            assert consumer_seen_upstream(get(idp.token(sub="carol"))) == "carol"
            assert "token=" not in gw.log() and "token=" not in json.dumps(gw.health())  # the URL's query stays out
    finally:
        server.stop()


def test_tokens_wait_for_the_first_fetch(gatewayd, upstream, idp):
    port = free_port()
    gw = gatewayd(
        REMOTE_CONFIG.format(echo=upstream("echo").url, url=f"http://{HOST}:{port}/jwks.json", issuer=ISSUER, extra="")
    )
    failing = wait_for(
        lambda: (h := gw.health()["policies"]["remote"])["jwks"] == "failing" and h, "a failed fetch", gw
    )
    assert failing["keys"] == 0 and failing["fetched_at"] is None
    r = httpx.get(f"{gw.url}/remote/x", headers={"Authorization": f"Bearer {idp.token()}"})
    assert r.status_code == 503 and r.json()["error"] == "jwks_unavailable" and r.headers["retry-after"]
    assert httpx.get(f"{gw.url}/remote/x").status_code == 401  # no token: still just missing
    server = JwksServer({"keys": [public_jwk(idp.rsa, kid="r1")]}, port=port)
    try:
        wait_for(lambda: gw.health()["policies"]["remote"]["jwks"] == "ok", "the fetch once the URL answers", gw)
        r = httpx.get(f"{gw.url}/remote/x", headers={"Authorization": f"Bearer {idp.token()}"})
        assert consumer_seen_upstream(r) == "alice"
    finally:
        server.stop()
