"""The `validate` policy through a real gatewayd on both engines, in front of the demo upstream (which
echoes a POST's body back): the upstream gets the exact body that was validated, with and without
Content-Length, over HTTP/1.1 and HTTP/2 (h2c); refusals (415, 413 by length and while reading, 400
for schema errors, non-JSON and missing headers and query parameters) never reach it, which the
access log's `upstream` field shows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "validate"
CLIENT_TIMEOUT_S = 10.0
LOG_WAIT_S = 10.0

CONFIG = """
version: 1
observability:
  server_timing: detailed
  access_log: {{to: "{log}"}}
upstreams:
  a:
    targets: ["{a}"]
policies:
  orders:
    validate:
      content_types: [application/json]
      json_schema: {schema}
      max_body: 1KiB
      required_headers: [X-Tenant]
      required_query: [version]
  bounded:
    validate:
      max_body: 1KiB
routes:
  - name: orders
    match: {{path_prefix: /orders}}
    policies: [orders]
    upstream: a
  - name: bounded
    match: {{path_prefix: /upload}}
    policies: [bounded]
    upstream: a
"""

ORDER = {"customer": "acme", "items": [{"name": "bolt", "quantity": 3}, {"name": "nut", "quantity": 12}]}
GOOD = json.dumps(ORDER, indent=1).encode()
ASKED = {"params": {"version": "2"}, "headers": {"X-Tenant": "acme", "Content-Type": "application/json; charset=utf-8"}}


@pytest.fixture(scope="module")
def access_log(engine, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(f"validate-logs-{engine}") / "access.log"


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, access_log):
    return gatewayd_module(CONFIG.format(a=upstream("a").url, log=access_log, schema=FIXTURES / "order.schema.json"))


@pytest.fixture(scope="module")
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=CLIENT_TIMEOUT_S) as c:
        yield c


def h2_client(gw) -> httpx.Client:
    """HTTP/2 in cleartext with prior knowledge (h2c), which both engines serve on a plain listener."""
    pytest.importorskip("h2", reason="httpx needs the h2 package for HTTP/2")
    return httpx.Client(base_url=gw.url, http1=False, http2=True, timeout=CLIENT_TIMEOUT_S)


@pytest.fixture
def h2(gw):
    with h2_client(gw) as c:
        yield c


_ids = iter(range(1_000_000))


def rid(what: str) -> str:
    return f"validate-{what}-{next(_ids)}"


def post(c: httpx.Client, path: str, content, *, request_id: str, headers=None, params=None) -> httpx.Response:
    headers = dict(ASKED["headers"] if headers is None else headers, **{"X-Request-Id": request_id})
    return c.post(path, content=content, headers=headers, params=ASKED["params"] if params is None else params)


def chunked(data: bytes, size: int = 256):
    """A body without Content-Length: chunked on HTTP/1.1, plain DATA frames on HTTP/2."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


def logged_upstream(access_log: Path, request_id: str, gw):
    """The access log's `upstream` for a request: the upstream's name when the proxy ran, else None."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        if access_log.exists():
            for line in access_log.read_text().splitlines():
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return entry["upstream"]
        if time.monotonic() > deadline:
            pytest.fail(f"no access log line for {request_id}; stderr:\n{gw.log()}")
        time.sleep(0.05)


def refused(r: httpx.Response, status: int, error: str, access_log: Path, request_id: str, gw) -> dict:
    assert r.status_code == status, r.text
    doc = r.json()
    assert doc["error"] == error and doc["request_id"] == request_id
    assert "upstream;" not in r.headers["server-timing"]
    assert logged_upstream(access_log, request_id, gw) is None  # the proxy never ran
    return doc


# --- bodies that pass reach the upstream whole -----------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_valid_body_reaches_the_upstream_exactly(client, gw, access_log, framing):
    request_id = rid("valid")
    r = post(client, "/orders/new", GOOD if framing == "content-length" else chunked(GOOD, 7), request_id=request_id)
    assert r.status_code == 200, r.text
    assert r.content == GOOD  # the demo upstream echoes what it received
    timing = r.headers["server-timing"]
    assert timing.count("validate;dur=") == 1 and "upstream;dur=" in timing
    assert logged_upstream(access_log, request_id, gw) == "a"


def test_a_get_without_a_body_is_not_checked_for_type_or_schema(client):
    r = client.get("/orders/list", params={"version": "2"}, headers={"X-Tenant": "acme", "Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["query"] == "version=2"


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
def test_any_body_under_max_body_is_forwarded_without_content_length(gw, protocol):
    data = bytes(range(256)) * 4  # exactly 1 KiB
    c = h2_client(gw) if protocol == "HTTP/2" else httpx.Client(base_url=gw.url, timeout=CLIENT_TIMEOUT_S)
    with c:
        r = post(
            c,
            "/upload",
            chunked(data, 100),
            request_id=rid("upload"),
            headers={"Content-Type": "application/octet-stream"},
        )
    assert r.http_version == protocol
    assert r.status_code == 200 and r.content == data


# --- refusals never reach it ----------------------------------------------------------------------


def test_json_that_fails_the_schema_lists_every_error(client, gw, access_log):
    request_id = rid("schema")
    bad = {"customer": 5, "items": [{"name": "bolt", "quantity": 0}, {"quantity": 1}], "colour": "red"}
    doc = refused(
        post(client, "/orders/new", json.dumps(bad).encode(), request_id=request_id),
        400,
        "bad_request",
        access_log,
        request_id,
        gw,
    )
    assert doc["message"] == "the body does not match the schema (4 errors)"
    assert sorted(e["path"] for e in doc["errors"]) == ["", "/customer", "/items/0/quantity", "/items/1"]
    assert all(e["in"] == "body" and e["message"] for e in doc["errors"])


@pytest.mark.parametrize("raw", [b"{not json", b'{"customer": NaN}', b"\xff\xfe"])
def test_a_body_that_is_not_json(client, gw, access_log, raw):
    request_id = rid("notjson")
    doc = refused(
        post(client, "/orders/new", raw, request_id=request_id), 400, "bad_request", access_log, request_id, gw
    )
    assert doc["message"] == "the body is not valid JSON"


def test_a_body_of_another_media_type(client, gw, access_log):
    request_id = rid("type")
    headers = {"X-Tenant": "acme", "Content-Type": "text/plain"}
    doc = refused(
        post(client, "/orders/new", b"hello", request_id=request_id, headers=headers),
        415,
        "unsupported_media_type",
        access_log,
        request_id,
        gw,
    )
    assert doc["message"] == "the request body must be one of: application/json"


def test_missing_headers_and_query_parameters_are_named_together(client, gw, access_log):
    request_id = rid("missing")
    r = post(
        client,
        "/orders/new",
        GOOD,
        request_id=request_id,
        headers={"Content-Type": "application/json"},
        params={"versions": "2"},
    )
    doc = refused(r, 400, "bad_request", access_log, request_id, gw)
    assert doc["message"] == "missing header X-Tenant, query parameter version"
    assert [(e["in"], e["name"]) for e in doc["errors"]] == [("header", "X-Tenant"), ("query", "version")]


@pytest.mark.parametrize("path", ["/orders/new", "/upload"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_max_body(client, gw, access_log, path, framing):
    request_id = rid("big")
    data = json.dumps({"customer": "x" * 2000, "items": []}).encode()
    r = post(client, path, data if framing == "content-length" else chunked(data, 512), request_id=request_id)
    doc = refused(r, 413, "body_too_large", access_log, request_id, gw)
    assert doc["message"] == "the request body exceeds 1024 bytes"


# --- HTTP/2 -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "no length"])
def test_http2_valid_body_reaches_the_upstream_exactly(h2, framing):
    r = post(h2, "/orders/new", GOOD if framing == "content-length" else chunked(GOOD, 10), request_id=rid("h2"))
    assert r.http_version == "HTTP/2"
    assert r.status_code == 200 and r.content == GOOD


@pytest.mark.parametrize("case", ["schema", "not json", "over max_body", "media type", "missing"])
def test_http2_refusals_without_content_length(gw, access_log, case):
    path, body, headers, params, status, error = {
        "schema": ("/orders/new", b'{"customer": "acme"}', None, None, 400, "bad_request"),
        "not json": ("/orders/new", b"[1, 2", None, None, 400, "bad_request"),
        "over max_body": ("/upload", b"z" * 3000, None, None, 413, "body_too_large"),
        "media type": ("/orders/new", b"a,b\n", {"X-Tenant": "acme", "Content-Type": "text/csv"}, None, 415, "unsupported_media_type"),
        "missing": ("/orders/new", GOOD, None, {}, 400, "bad_request"),
    }[case]  # fmt: skip
    request_id = rid("h2-refused")
    with h2_client(gw) as c:
        for _ in range(3):  # the connection outlives a stream answered before its body was all sent
            r = post(c, path, chunked(body, 500), request_id=request_id, headers=headers, params=params)
            assert r.http_version == "HTTP/2"
            refused(r, status, error, access_log, request_id, gw)
            request_id = rid("h2-refused")
        assert post(c, "/orders/new", GOOD, request_id=rid("h2-after")).status_code == 200
