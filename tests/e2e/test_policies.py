"""Every policy kind on one route, through a real gatewayd: the fixed order of phases, what each
refusal looks like to a browser, the consumer seen upstream, and `server_timing: detailed`.

Each kind has its own tests (test_auth, test_rate_limit, test_cors, test_validate); these check that
they compose as the README says, whatever order the route lists them in.
"""

from __future__ import annotations

import shutil

import httpx
import pytest
from conftest import ROOT

KEY = "integration-key-0001"
ORIGIN = "https://app.example.com"

CONFIG = """
version: 1
observability: {{server_timing: detailed}}
upstreams:
  demo: {{targets: ["{demo}"]}}
policies:
  browser:
    cors: {{origins: ["{origin}"], methods: [GET, POST], headers: [Authorization, Content-Type], expose: [X-Request-Id]}}
  keyed:
    api_key: {{keys: [{{id: acme, key: {key}}}]}}
    rate_limit: {{limit: 5, per: 1m, burst: 5, key: consumer}}
  typed:
    validate: {{content_types: [application/json], json_schema: {schema}, max_body: 1KiB}}
routes:
  # policies listed in the opposite order of the one they run in
  - match: {{path_prefix: /items}}
    policies: [typed, keyed, browser]
    upstream: demo
  - match: {{path: /fixed}}
    policies: [keyed]
    respond: {{json: {{ok: true}}}}
  - match: {{path: /page, methods: [GET]}}
    policies: [browser]
    respond: {{json: {{ok: true}}}}
"""


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, tmp_path_factory):
    schema = tmp_path_factory.mktemp("schemas") / "item.schema.json"
    shutil.copy(ROOT / "tests" / "fixtures" / "item.schema.json", schema)
    return gatewayd_module(CONFIG.format(demo=upstream("demo").url, origin=ORIGIN, key=KEY, schema=schema))


def stages(response: httpx.Response) -> list[str]:
    """The names of the Server-Timing entries, in order."""
    return [entry.split(";")[0].strip() for entry in response.headers["server-timing"].split(",")]


def test_preflight_is_answered_before_auth_rate_limit_and_validation(gw):
    r = httpx.options(f"{gw.url}/items/1", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type",
    })  # fmt: skip
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert stages(r) == ["total", "cors"]


def test_missing_key_is_refused_with_cors_headers_so_the_page_can_read_why(gw):
    r = httpx.post(f"{gw.url}/items/1", json={"name": "x", "price": 1}, headers={"Origin": ORIGIN})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "www-authenticate" in r.headers
    assert stages(r) == ["total", "cors", "auth"]


def test_invalid_body_is_refused_after_auth_and_the_rate_limit(gw):
    r = httpx.post(f"{gw.url}/items/1", json={"name": ""}, headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    assert {e["path"] for e in r.json()["errors"]} >= {"/name", ""}  # too short, and price missing
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "ratelimit" in r.headers and "ratelimit-policy" in r.headers
    assert stages(r)[:4] == ["total", "cors", "auth", "ratelimit"] and "validate" in stages(r)


def test_admitted_request_reaches_the_upstream_with_its_consumer(gw):
    body = {"name": "lamp", "price": 12.5}
    r = httpx.post(f"{gw.url}/items/2", json=body, headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert r.json() == body  # the demo upstream echoes what it received
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-expose-headers"].lower() == "x-request-id"
    assert stages(r) == ["total", "cors", "auth", "ratelimit", "validate", "upstream"]
    r = httpx.get(f"{gw.url}/items/3", headers={"Authorization": f"Bearer {KEY}", "X-Consumer-Id": "spoofed"})
    assert r.json()["headers"]["x-consumer-id"] == "acme"  # the client's own is never forwarded


def test_rate_limit_refuses_once_the_budget_is_spent(gw):
    statuses = [httpx.get(f"{gw.url}/fixed", headers={"Authorization": f"Bearer {KEY}"}).status_code for _ in range(8)]
    assert 429 in statuses and statuses.index(429) <= 5, statuses
    r = httpx.get(f"{gw.url}/fixed", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["error"] == "rate_limited"


def test_a_route_without_options_answers_preflights_but_refuses_other_options(gw):
    preflight = httpx.options(f"{gw.url}/page", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204
    r = httpx.options(f"{gw.url}/page")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
