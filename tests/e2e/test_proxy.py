"""Proxying through a running gatewayd to the demo upstream: forwarding headers, hop-by-hop
removal, path rewrites, header policies, load balancing, bodies, and upstream failures."""

from __future__ import annotations

import http.client
import json
import threading
import time

import httpx
import pytest
from conftest import free_port

CONFIG = """
version: 1
server:
  http: auto
upstreams:
  a:
    targets: ["{a}"]
  rr:
    targets: ["{a}", "{b}"]
    balance: round_robin
  lr:
    targets: ["{a}", "{b}"]
    balance: least_requests
  down:
    targets: ["http://127.0.0.1:{dead_port}"]
    timeouts: {{connect: 1s, response: 2s}}
  impatient:
    targets: ["{a}"]
    timeouts: {{response: 200ms}}
policies:
  edit-headers:
    headers:
      request:
        set: {{X-Api-Key: from-gateway}}
        add: {{X-Added: added-value}}
        remove: [X-Secret]
      response:
        set: {{X-Policy: applied, Cache-Control: no-store}}
        remove: [Content-Type]
routes:
  - name: plain
    match: {{path_prefix: /api}}
    upstream: a
  - name: rewritten
    match: {{path_prefix: /rw, methods: [GET]}}
    rewrite: {{strip_prefix: /rw, add_prefix: /backend}}
    upstream: a
  - name: stripped
    match: {{path_prefix: /strip, methods: [GET]}}
    rewrite: {{strip_prefix: /strip}}
    upstream: a
  - name: edited
    match: {{path_prefix: /edited, methods: [GET]}}
    policies: [edit-headers]
    upstream: a
  - name: round-robin
    match: {{path_prefix: /rr, methods: [GET]}}
    upstream: rr
  - name: least-requests
    match: {{path_prefix: /lr, methods: [GET]}}
    upstream: lr
  - name: down
    match: {{path_prefix: /down}}
    upstream: down
  - name: impatient
    match: {{path_prefix: /impatient, methods: [GET]}}
    upstream: impatient
"""


@pytest.fixture(scope="module")
def upstreams(upstream):
    return upstream("a"), upstream("b")


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstreams):
    a, b = upstreams
    return gatewayd_module(CONFIG.format(a=a.url, b=b.url, dead_port=free_port()))


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


def seen(response: httpx.Response) -> dict:
    """What the demo upstream saw, from its JSON answer."""
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def test_get_with_query_is_proxied(client):
    r = client.get("/api/items/42", params={"q": "x y", "n": "1"})
    body = seen(r)
    assert body["upstream"] == "a"
    assert body["method"] == "GET"
    assert body["path"] == "/api/items/42"
    assert body["query"] == "q=x+y&n=1"


def test_percent_encoded_path_is_forwarded(client):
    body = seen(client.get("/api/a%20b/c"))
    assert body["path"] == "/api/a b/c"


def test_forwarding_headers(client, gw):
    r = client.get("/api/fwd", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-Id": "client-id-1"})
    headers = seen(r)["headers"]
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert headers["via"] == "1.1 gatewayd"
    assert headers["x-request-id"] == "client-id-1"
    assert r.headers["x-request-id"] == "client-id-1"
    # the upstream is addressed by its own authority, not the client's Host
    assert headers["host"] != f"127.0.0.1:{gw.port}"


def test_forwarding_headers_without_client_values(client):
    r = client.get("/api/fwd")
    headers = seen(r)["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    # the id the gateway generated is the one the upstream saw
    assert headers["x-request-id"] == r.headers["x-request-id"]


def test_forwarded_for_with_several_field_lines(client):
    r = client.get("/api/fwd", headers=[("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "203.0.113.7")])
    forwarded_for = seen(r)["headers"]["x-forwarded-for"]
    assert forwarded_for == "198.51.100.1, 203.0.113.7, 127.0.0.1"


def test_hop_by_hop_headers_are_not_forwarded(client):
    r = client.get(
        "/api/hop",
        headers={
            "Connection": "keep-alive, X-Drop",
            "X-Drop": "must-not-arrive",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Connection": "keep-alive",
            "X-Kept": "kept",
        },
    )
    headers = seen(r)["headers"]
    assert headers.get("x-kept") == "kept"
    for name in ("x-drop", "keep-alive", "te", "proxy-connection"):
        assert name not in headers, f"{name} reached the upstream: {headers}"
    # the upstream may see the gateway's own connection management, never the client's tokens
    assert "x-drop" not in headers.get("connection", "").lower()


def test_rewrite_strip_and_add_prefix(client):
    body = seen(client.get("/rw/items/7", params={"k": "v"}))
    assert body["path"] == "/backend/items/7"
    assert body["query"] == "k=v"


def test_an_encoded_path_cannot_move_the_upstream_authority(gw, upstreams):
    """`/strip%2F@host/x` would match the prefix once decoded but not in its encoded form: an encoded
    slash gets 400 (`server.paths.encoded_slash: reject`), so no reading of it reaches an upstream.
    (With `decode`, it is routed and forwarded as `/strip/@host/x`: see test_paths.py.)"""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    conn.request("GET", "/strip%2F@127.0.0.2:1/x")
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == 400 and body["error"] == "bad_path" and "%2F" in body["message"]


def test_rewrite_strip_prefix_only(client):
    assert seen(client.get("/strip/items/7"))["path"] == "/items/7"
    assert seen(client.get("/strip"))["path"] == "/"


def test_headers_policy(client):
    r = client.get(
        "/edited/x",
        headers={"X-Api-Key": "from-client", "X-Secret": "hidden", "X-Other": "kept"},
    )
    assert r.status_code == 200
    headers = r.json()["headers"]  # the upstream's view of the request
    assert headers["x-api-key"] == "from-gateway"
    assert headers["x-added"] == "added-value"
    assert "x-secret" not in headers
    assert headers["x-other"] == "kept"
    # and the response the client got
    assert r.headers["x-policy"] == "applied"
    assert r.headers["cache-control"] == "no-store"
    assert "content-type" not in r.headers
    # set replaces: exactly one value each
    assert r.headers.get_list("x-policy") == ["applied"]


def test_round_robin_alternates(client):
    names = [seen(client.get("/rr/who"))["upstream"] for _ in range(6)]
    assert set(names) == {"a", "b"}
    assert all(x != y for x, y in zip(names, names[1:])), names


def test_least_requests_spreads_when_idle(client):
    names = [seen(client.get("/lr/who"))["upstream"] for _ in range(10)]
    assert names.count("a") >= 3 and names.count("b") >= 3, names


def test_least_requests_avoids_the_busy_target(client, gw):
    slow: dict = {}

    def slow_request():
        with httpx.Client(base_url=gw.url, timeout=10.0) as c:
            slow["response"] = c.get("/lr/slow/1500")

    t = threading.Thread(target=slow_request, daemon=True)
    t.start()
    time.sleep(0.3)  # the slow request is now in flight at one target
    names = [seen(client.get("/lr/fast"))["upstream"] for _ in range(4)]
    t.join(timeout=10)
    assert not t.is_alive()
    busy = seen(slow["response"])["upstream"]
    assert names == [names[0]] * 4, names
    assert names[0] != busy


def test_post_body_is_echoed(client):
    payload = bytes(range(256)) * 64
    r = client.post("/api/echo", content=payload, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.content == payload


def test_chunked_post_body_is_echoed(client):
    chunk = b"0123456789abcdef" * 1024

    def body():
        for _ in range(8):
            yield chunk

    r = client.put("/api/echo", content=body())
    assert r.status_code == 200
    assert r.content == chunk * 8


def test_empty_post(client):
    r = client.post("/api/echo", content=b"")
    assert r.status_code == 200
    assert r.content == b""


def test_head_on_proxied_route(client):
    get = client.get("/api/head")
    head = client.head("/api/head")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]


def test_upstream_down_is_502(client):
    r = client.get("/down/x", headers={"X-Request-Id": "down-1"})
    assert r.status_code == 502
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["error"] == "upstream_unavailable"
    assert body["request_id"] == "down-1" == r.headers["x-request-id"]
    assert body["message"]


def test_upstream_down_with_body_is_502(client):
    r = client.post("/down/x", content=b"payload")
    assert r.status_code == 502
    assert r.json()["error"] == "upstream_unavailable"


def test_upstream_too_slow_is_504(client):
    started = time.monotonic()
    r = client.get("/impatient/slow/2000")
    elapsed = time.monotonic() - started
    assert r.status_code == 504
    body = r.json()
    assert body["error"] == "upstream_timeout"
    assert body["request_id"] == r.headers["x-request-id"]
    assert elapsed < 1.5, f"the 200ms response timeout took {elapsed:.2f}s"
    # a fast answer on the same upstream still works
    assert seen(client.get("/impatient/slow/10"))["upstream"] == "a"


@pytest.mark.parametrize("code", [404, 500, 503])
def test_upstream_status_passes_through(client, code):
    r = client.get(f"/api/status/{code}")
    assert r.status_code == code
    body = r.json()
    assert body["upstream"] == "a"  # the upstream's own body, not a gateway error
    assert "error" not in body


def test_date_and_server_headers_are_single(client, gw):
    r = client.get("/api/date")
    assert r.status_code == 200
    dates, servers = r.headers.get_list("date"), r.headers.get_list("server")
    assert len(dates) == 1, dates
    assert len(servers) <= 1, servers
