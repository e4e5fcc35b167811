"""Answers gatewayd gives by itself: `respond`, `redirect`, 404/405 and HEAD, plus the
Server-Timing and X-Request-Id headers every response carries, seen by httpx and by curl."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys

import httpx
import pytest
from conftest import free_port

CONFIG = """
version: 1
upstreams:
  down:
    targets: ["http://127.0.0.1:{dead_port}"]
routes:
  - name: json
    match: {{path: /json, methods: [GET]}}
    respond:
      json: {{hello: world, n: [1, 2, 3], nested: {{ok: true}}, none: null}}
      headers: {{X-Custom: custom-value, Cache-Control: max-age=60}}
  - name: text
    match: {{path: /text, methods: [GET, POST]}}
    respond: {{body: "plain text\\n", status: 201}}
  - name: typed
    match: {{path: /typed, methods: [GET]}}
    respond: {{body: "<p>hi</p>", headers: {{Content-Type: text/html; charset=utf-8}}}}
  - name: teapot
    match: {{path: /teapot}}
    respond: {{status: 418, json: {{short: stout}}}}
  - name: empty
    match: {{path: /empty, methods: [GET]}}
    respond: {{}}
  - name: moved
    match: {{path: "/old/{{id}}", methods: [GET]}}
    redirect: {{to: "/new/{{id}}", status: 301}}
  - name: moved-with-query
    match: {{path: "/old-q/{{id}}", methods: [GET]}}
    redirect: {{to: "/new/{{id}}?src=old", status: 307}}
  - name: moved-without-query
    match: {{path: "/old-noq/{{id}}", methods: [GET]}}
    redirect: {{to: "https://example.com/items/{{id}}", status: 308, keep_query: false}}
  - name: found
    match: {{path: /go, methods: [GET]}}
    redirect: {{to: "https://example.com/"}}
  - name: writes-only
    match: {{path: /writes, methods: [POST, PUT]}}
    respond: {{status: 202, json: {{accepted: true}}}}
  - name: down
    match: {{path: /down, methods: [GET]}}
    upstream: down
"""


@pytest.fixture(scope="module")
def gw(gatewayd_module):
    return gatewayd_module(CONFIG.format(dead_port=free_port()))


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0, follow_redirects=False) as c:
        yield c


def server_timing_ms(value: str | None) -> float:
    assert value is not None, "no Server-Timing header"
    m = re.fullmatch(r"total;dur=([0-9]+(?:\.[0-9]+)?)", value.strip())
    assert m, f"unexpected Server-Timing: {value!r}"
    dur = float(m.group(1))
    assert dur >= 0
    return dur


def assert_error(r: httpx.Response, status: int, error: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error", "message", "request_id"}, body
    assert body["error"] == error
    assert body["request_id"] == r.headers["x-request-id"]
    return body


# --- respond -----------------------------------------------------------------------------------


def test_respond_json(client):
    r = client.get("/json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"hello": "world", "n": [1, 2, 3], "nested": {"ok": True}, "none": None}
    assert r.headers["x-custom"] == "custom-value"
    assert r.headers["cache-control"] == "max-age=60"
    assert int(r.headers["content-length"]) == len(r.content)


def test_respond_body_with_status(client):
    for method in ("GET", "POST"):
        r = client.request(method, "/text")
        assert r.status_code == 201
        assert r.content == b"plain text\n"
        assert r.headers["content-type"].startswith("text/plain")


def test_respond_with_own_content_type(client):
    r = client.get("/typed")
    assert r.status_code == 200
    assert r.text == "<p>hi</p>"
    assert r.headers.get_list("content-type") == ["text/html; charset=utf-8"]


def test_respond_any_method_when_methods_absent(client):
    for method in ("GET", "POST", "DELETE", "PATCH"):
        r = client.request(method, "/teapot")
        assert r.status_code == 418, method
        assert r.json() == {"short": "stout"}


def test_respond_empty(client):
    r = client.get("/empty")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers.get("content-length") == "0"


# --- redirect ----------------------------------------------------------------------------------


def test_redirect_fills_param_and_keeps_query(client):
    r = client.get("/old/42", params={"a": "1", "b": "x y"})
    assert r.status_code == 301
    assert r.headers["location"] == "/new/42?a=1&b=x+y"
    assert r.content == b""


def test_redirect_param_is_percent_encoded(client):
    r = client.get("/old/a%20b")
    assert r.status_code == 301
    assert r.headers["location"] == "/new/a%20b"


def test_redirect_keeps_query_after_its_own(client):
    r = client.get("/old-q/7", params={"x": "1"})
    assert r.status_code == 307
    assert r.headers["location"] == "/new/7?src=old&x=1"
    r = client.get("/old-q/7")
    assert r.headers["location"] == "/new/7?src=old"


def test_redirect_without_query(client):
    r = client.get("/old-noq/7", params={"x": "1"})
    assert r.status_code == 308
    assert r.headers["location"] == "https://example.com/items/7"


def test_redirect_default_status(client):
    r = client.get("/go", params={"q": "1"})
    assert r.status_code == 302
    assert r.headers["location"] == "https://example.com/?q=1"


# --- 404, 405, HEAD ----------------------------------------------------------------------------


def test_404(client):
    body = assert_error(client.get("/no/such/route"), 404, "not_found")
    assert "/no/such/route" in body["message"]


def test_405_lists_allowed_methods(client):
    r = client.delete("/json")
    assert_error(r, 405, "method_not_allowed")
    assert [m.strip() for m in r.headers["allow"].split(",")] == ["GET", "HEAD"]

    r = client.get("/writes")
    assert_error(r, 405, "method_not_allowed")
    allow = [m.strip() for m in r.headers["allow"].split(",")]
    assert sorted(allow) == ["POST", "PUT"]  # no GET route here, so no HEAD either

    assert client.post("/writes").status_code == 202


def test_head_on_get_route(client):
    get = client.get("/json")
    head = client.head("/json")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["x-custom"] == "custom-value"


def test_head_on_unknown_path_is_404_without_body(client):
    r = client.head("/no/such/route")
    assert r.status_code == 404
    assert r.content == b""


def test_502_error_shape(client):
    assert_error(client.get("/down"), 502, "upstream_unavailable")


# --- Server-Timing and X-Request-Id ------------------------------------------------------------


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/json", 200),
        ("GET", "/old/1", 301),
        ("GET", "/nope", 404),
        ("DELETE", "/json", 405),
        ("GET", "/down", 502),
        ("GET", "/health", 200),
    ],
)
def test_server_timing_on_every_response(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status
    server_timing_ms(r.headers.get("server-timing"))
    assert r.headers.get_list("server-timing") == [r.headers["server-timing"]]
    assert r.headers.get("x-request-id")


def test_request_id_is_echoed(client):
    for path in ("/json", "/nope", "/health", "/down"):
        r = client.get(path, headers={"X-Request-Id": f"req-{path}"})
        assert r.headers["x-request-id"] == f"req-{path}", path
        assert r.headers.get_list("x-request-id") == [f"req-{path}"]


def test_request_id_is_generated_and_unique(client):
    ids = []
    for i in range(100):
        r = client.get("/json" if i % 2 else "/nope")
        rid = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9A-Za-z_.-]{8,200}", rid), rid
        ids.append(rid)
    assert len(set(ids)) == 100
    error_body = client.get("/nope").json()
    assert error_body["request_id"] not in ids


# --- curl --------------------------------------------------------------------------------------


def curl(*args: str) -> tuple[str, dict[str, list[str]], str]:
    """Run curl with -i; (status line, headers by lower-case name, body)."""
    out = subprocess.run(
        ["curl", "--silent", "--show-error", "--include", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, f"curl exited {out.returncode}: {out.stderr}"
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    status, *lines = head.split("\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers, body


@pytest.fixture(scope="module")
def curl_features() -> str:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=10).stdout


def test_curl_http11(gw, curl_features):
    status, headers, body = curl("--http1.1", "-H", "X-Request-Id: curl-1", f"{gw.url}/json")
    assert status.startswith("HTTP/1.1 200"), status
    assert headers["x-request-id"] == ["curl-1"]
    server_timing_ms(headers["server-timing"][0])
    assert body.startswith('{"hello":"world"')


def test_curl_h2c_prior_knowledge(gw, curl_features):
    if gw.engine != "granian":
        pytest.skip("h2c prior knowledge is checked on granian (server.http: auto)")
    if "HTTP2" not in curl_features:
        pytest.skip("this curl was built without HTTP/2")
    status, headers, body = curl("--http2-prior-knowledge", f"{gw.url}/json")
    assert status.startswith("HTTP/2 200"), status
    server_timing_ms(headers["server-timing"][0])
    assert headers["x-request-id"][0]
    assert body.startswith('{"hello":"world"')
    status, headers, _ = curl("--http2-prior-knowledge", f"{gw.url}/nope")
    assert status.startswith("HTTP/2 404"), status


@pytest.mark.parametrize("path", ["/a/../b", "/a/./b", "/a/.."])
def test_dot_segments_get_400(gw, path):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    assert r.status == 400 and b"bad_path" in body


@pytest.mark.parametrize(
    "target",
    ["/a/../b", "/old/%2e%2e/x", "/old/42?a=1&b=x+y", "/old-q/7?x=1", "/old-noq/7?x=1", "/go?q=1", "/nope", "/writes"],
)
def test_explain_answers_as_the_server(gw, target):
    """`gatewayd explain` on the gateway's own config gives the status (or, for a redirect, the Location) it sends."""
    out = subprocess.run(
        [sys.executable, "-m", "gatewayd", "explain", str(gw.config_path), "GET", target, "--format", "json"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    explained = json.loads(out.stdout)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", target)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    if explained["result"] == "match":
        assert r.getheader("location") == explained["location"]
        assert explained["route"]["target"].startswith(f"{r.status} ")
    else:
        assert r.status == explained["result"], body
        if "error" in explained:
            assert json.loads(body)["error"] == explained["error"]
