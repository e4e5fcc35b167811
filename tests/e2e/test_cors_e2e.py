"""The `cors` policy through a real gatewayd: preflights answered by the gateway (the upstream never
sees them), the headers of actual answers and of the gateway's own errors, and a real browser
(headless Chromium) on a page of another origin that can, or cannot, read what the gateway sends."""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from browser import dump_dom, needs_chromium
from conftest import HOST, free_port

WAIT_S = 10.0
ACRM = "Access-Control-Request-Method"

# fetch()es `url` with `header` set (a header no form can send, so the browser asks first with a
# preflight) and writes what it could read into the page, which Chromium then dumps
PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>cors</title>
<pre id="result">pending</pre>
<script>
const params = new URLSearchParams(location.search);
const out = document.getElementById("result");
fetch(params.get("url"), {method: params.get("method") || "GET", headers: {[params.get("header")]: "from-the-page"}})
  .then(async (r) => {
    const body = await r.text();
    out.textContent = `read ${r.status} id=${r.headers.get("x-request-id") ? "yes" : "no"} ${body}`;
  })
  .catch((e) => { out.textContent = `failed ${e.name}`; });
</script>
"""


class Site:
    """One origin, http://127.0.0.1:<port>, served from this process: `/page` is the page above;
    any other path answers like an upstream that speaks CORS itself (`Access-Control-Allow-Origin: *`),
    and is counted."""

    def __init__(self):
        self.seen: list[tuple[str, str]] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self):
                if self.path.startswith("/page"):
                    body, extra = PAGE, {"Content-Type": "text/html; charset=utf-8"}
                else:
                    site.seen.append((self.command, self.path))
                    body = b'{"from": "site"}'
                    extra = {
                        "Content-Type": "application/json",
                        "Access-Control-Allow-Origin": "*",
                        "Access-Control-Max-Age": "86400",
                    }
                self.send_response(200)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_OPTIONS = answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"http://{HOST}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def sites():
    """Two origins: `allowed` is listed in the config (exactly, and as *.localhost on its port), `other` is not."""
    allowed, other = Site(), Site()
    yield allowed, other
    allowed.close()
    other.close()


CONFIG = """
version: 1
observability:
  access_log: {{to: "{log}"}}
upstreams:
  demo: {{targets: ["{demo}"]}}
  site: {{targets: ["{site}"]}}
  down:
    targets: ["http://127.0.0.1:{dead_port}"]
    timeouts: {{connect: 1s, response: 2s}}
policies:
  browser:
    cors:
      origins: ["{allowed}", "http://*.localhost:{port}", https://app.example.com]
      methods: [GET, PUT]
      headers: [X-Custom, Content-Type]
      expose: [X-Request-Id]
      max_age: 10m
  credentialed:
    cors:
      origins: [https://app.example.com, "https://*.example.com"]
      credentials: true
  open:
    cors: {{origins: ["*"]}}
routes:
  - name: api
    match: {{path_prefix: /api, methods: [GET, PUT]}}
    policies: [browser]
    upstream: demo
  - name: down
    match: {{path_prefix: /down}}
    policies: [browser]
    upstream: down
  - name: site
    match: {{path_prefix: /site}}
    policies: [browser]
    upstream: site
  - name: fixed
    match: {{path: /fixed}}
    policies: [credentialed]
    respond: {{json: {{ok: true}}}}
  - name: open
    match: {{path: /open}}
    policies: [open]
    respond: {{body: open}}
  - name: plain
    match: {{path: /plain, methods: [GET]}}
    upstream: demo
"""

APP = "https://app.example.com"


@pytest.fixture(scope="module")
def access_log(engine, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(f"cors-logs-{engine}") / "access.log"


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, sites, access_log):
    allowed, _ = sites
    return gatewayd_module(CONFIG.format(
        log=access_log, demo=upstream("demo").url, site=allowed.origin, dead_port=free_port(),
        allowed=allowed.origin, port=allowed.port,
    ))  # fmt: skip


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


def cors_headers(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


def preflight(
    client, path: str, origin: str, method: str = "PUT", headers: str | None = "x-custom", rid: str | None = None
):
    sent = {"Origin": origin, ACRM: method}
    if headers is not None:
        sent["Access-Control-Request-Headers"] = headers
    if rid is not None:
        sent["X-Request-Id"] = rid
    return client.options(path, headers=sent)


def log_lines(path: Path, done) -> list[dict]:
    """The access log's lines, once `done(lines)` holds (or WAIT_S has passed): lines are written off the request path."""
    deadline = time.monotonic() + WAIT_S
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if done(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def answered_preflights(lines: list[dict], status: int) -> int:
    return sum(
        1 for line in lines if line["method"] == "OPTIONS" and line["route"] == "api" and line["status"] == status
    )


# --- preflights -------------------------------------------------------------------------------------------


def test_preflight_of_an_allowed_origin_is_answered_by_the_gateway(client, access_log):
    r = preflight(client, "/api/items/1", APP, rid="cors-preflight-1")
    assert r.status_code == 204 and r.content == b""
    assert cors_headers(r) == {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "X-Custom, Content-Type",
        "access-control-max-age": "600",
    }
    assert r.headers["vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert r.headers["x-request-id"] == "cors-preflight-1"
    lines = log_lines(access_log, lambda lines: any(line["request_id"] == "cors-preflight-1" for line in lines))
    line = next(line for line in lines if line["request_id"] == "cors-preflight-1")
    assert (line["route"], line["status"], line["upstream"], line["upstream_ms"]) == ("api", 204, None, None)


def test_preflight_never_reaches_the_upstream(client, sites):
    allowed, _ = sites
    before = len(allowed.seen)
    for _ in range(5):
        assert preflight(client, "/site/x", APP).status_code == 204
    assert preflight(client, "/down/x", APP).status_code == 204  # a dead upstream: 502 had it been asked
    assert len(allowed.seen) == before
    assert client.get("/site/x").status_code == 200 and allowed.seen[before:] == [("GET", "/site/x")]


def test_preflight_asking_for_an_unlisted_header_gets_only_the_list(client):
    r = preflight(client, "/api/items/1", APP, headers="x-custom, x-secret-sauce")
    assert r.status_code == 204
    assert r.headers["access-control-allow-headers"] == "X-Custom, Content-Type"  # the browser then refuses


@pytest.mark.parametrize(("origin", "method"), [
    ("https://evil.example.net", "PUT"),
    ("https://app.example.com.evil.net", "GET"),
    ("null", "GET"),
    (APP, "DELETE"),
])  # fmt: skip
def test_refused_preflight_is_a_403_without_cors_headers(client, origin, method):
    r = preflight(client, "/api/items/1", origin, method=method)
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert cors_headers(r) == {}


def test_patterns_admit_subdomains_only(client, sites):
    allowed, _ = sites
    assert preflight(client, "/api/x", f"http://app.localhost:{allowed.port}").status_code == 204
    assert preflight(client, "/api/x", f"http://a.b.localhost:{allowed.port}").status_code == 204
    for origin in (
        f"http://localhost:{allowed.port}",
        f"http://app.localhost:{allowed.port + 1}",
        f"https://app.localhost:{allowed.port}",
    ):
        assert preflight(client, "/api/x", origin).status_code == 403, origin
    r = client.get("/fixed", headers={"Origin": "https://shop.example.com"})
    assert r.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert (
        "access-control-allow-origin"
        not in client.get("/fixed", headers={"Origin": "https://evil-example.com"}).headers
    )


def test_route_without_the_policy_does_not_answer_preflights(client):
    r = preflight(client, "/plain", APP, method="GET")
    assert r.status_code == 405 and cors_headers(r) == {}


# --- actual requests ------------------------------------------------------------------------------------


def test_actual_request_from_an_allowed_origin(client):
    r = client.get("/api/items/1", headers={"Origin": APP, "X-Custom": "1"})
    assert r.status_code == 200 and r.json()["headers"]["x-custom"] == "1"
    assert cors_headers(r) == {"access-control-allow-origin": APP, "access-control-expose-headers": "X-Request-Id"}
    assert r.headers["vary"] == "Origin"


def test_every_answer_varies_on_origin_and_only_allowed_origins_get_cors_headers(client):
    for headers in ({}, {"Origin": "https://evil.example.net"}, {"Origin": "null"}):
        r = client.get("/api/items/1", headers=headers)
        assert r.status_code == 200 and r.headers["vary"] == "Origin" and cors_headers(r) == {}, headers
    r = client.options("/api/items/1", headers={"Origin": APP})  # no Access-Control-Request-Method: not a preflight
    assert r.headers["access-control-allow-origin"] == APP and "access-control-allow-methods" not in r.headers


def test_gateway_errors_carry_the_cors_headers(client):
    r = client.get("/down/x", headers={"Origin": APP})
    assert r.status_code == 502 and r.json()["error"]
    assert r.headers["access-control-allow-origin"] == APP and r.headers["vary"] == "Origin"
    r = client.get("/nowhere", headers={"Origin": APP})  # no route, so no policy
    assert r.status_code == 404 and cors_headers(r) == {}


def test_upstream_cors_headers_are_replaced_by_the_gateways(client):
    r = client.get("/site/x", headers={"Origin": APP})
    assert r.status_code == 200 and r.json() == {"from": "site"}
    assert cors_headers(r) == {"access-control-allow-origin": APP, "access-control-expose-headers": "X-Request-Id"}
    r = client.get("/site/x", headers={"Origin": "https://evil.example.net"})
    assert cors_headers(r) == {}  # not the upstream's `*`


def test_credentials_and_star(client):
    r = client.get("/fixed", headers={"Origin": APP})
    assert cors_headers(r) == {"access-control-allow-origin": APP, "access-control-allow-credentials": "true"}
    r = preflight(client, "/fixed", APP, method="POST", headers=None)
    assert r.status_code == 204 and r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-allow-methods"] == "GET, HEAD, POST"
    for origin in ("https://anyone.test", "null"):
        assert client.get("/open", headers={"Origin": origin}).headers["access-control-allow-origin"] == "*"
        assert preflight(client, "/open", origin, method="GET").headers["access-control-allow-origin"] == "*"


@pytest.mark.skipif(importlib.util.find_spec("gatewayd.policies.api_key") is None, reason="no api_key policy kind yet")
def test_preflight_needs_no_key_and_a_missing_key_is_readable_by_the_page(gatewayd):
    gw = gatewayd(f"""
        version: 1
        policies:
          keyed: {{api_key: {{keys: [{{id: acme, key: cors-test-key-0001}}]}}}}
          browser: {{cors: {{origins: ["{APP}"], headers: [Authorization]}}}}
        routes:
          - match: {{path: /keyed}}
            policies: [keyed, browser]
            respond: {{json: {{ok: true}}}}
    """)  # fmt: skip
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        assert preflight(c, "/keyed", APP, method="GET", headers="authorization").status_code == 204
        r = c.get("/keyed", headers={"Origin": APP})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == APP
        r = c.get("/keyed", headers={"Origin": APP, "Authorization": "Bearer cors-test-key-0001"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP


# --- a real browser -------------------------------------------------------------------------------------


def in_chromium(page_origin: str, gw, path: str, header: str, tmp_path: Path, method: str = "GET") -> str:
    """What the page on `page_origin` could read from the gateway, as it wrote it in its DOM."""
    url = f"{page_origin}/page?url={quote(gw.url + path, safe='')}&header={header}&method={method}"
    dom, stderr = dump_dom(url, tmp_path)
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"no result in the page:\n{dom[:2000]}\n{stderr[-2000:]}"
    return found.group(1)


@needs_chromium
def test_browser_on_an_allowed_origin_reads_the_answer(gw, sites, tmp_path, access_log):
    allowed, _ = sites
    before = answered_preflights(log_lines(access_log, lambda lines: True), 204)
    result = in_chromium(allowed.origin, gw, "/api/items/7", "X-Custom", tmp_path)
    assert result.startswith("read 200 id=yes "), result  # X-Request-Id is exposed
    assert '"x-custom": "from-the-page"' in result  # the header reached the upstream, which echoes it
    assert (
        answered_preflights(log_lines(access_log, lambda lines: answered_preflights(lines, 204) > before), 204) > before
    )
    assert in_chromium(allowed.origin, gw, "/api/items/7", "X-Custom", tmp_path, method="PUT").startswith("read 200 ")
    result = in_chromium(f"http://app.localhost:{allowed.port}", gw, "/api/items/7", "X-Custom", tmp_path)
    assert result.startswith("read 200 id=yes "), result  # a pattern origin


@needs_chromium
def test_browser_reads_the_gateways_own_errors(gw, sites, tmp_path):
    allowed, _ = sites
    result = in_chromium(allowed.origin, gw, "/down/x", "X-Custom", tmp_path)
    assert result.startswith("read 502 id=yes ") and '"error"' in result, result


@needs_chromium
def test_browser_on_another_origin_gets_a_cors_failure(gw, sites, tmp_path, access_log):
    allowed, other = sites
    before = answered_preflights(log_lines(access_log, lambda lines: True), 403)
    assert in_chromium(other.origin, gw, "/api/items/7", "X-Custom", tmp_path) == "failed TypeError"
    assert (
        answered_preflights(log_lines(access_log, lambda lines: answered_preflights(lines, 403) > before), 403) > before
    )
    # an allowed origin asking for a header the policy does not list
    assert in_chromium(allowed.origin, gw, "/api/items/7", "X-Secret-Sauce", tmp_path) == "failed TypeError"
