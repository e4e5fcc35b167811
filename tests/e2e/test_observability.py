"""Seeing a running gatewayd: /latency counts, /metrics, the access log, trace context, the
endpoints' exposure, the latency page in a real browser, and the figures of two workers merged."""

from __future__ import annotations

import http.client
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from browser import dump_dom, needs_chromium
from conftest import HOST, ROOT, free_port
from prometheus_client.parser import text_string_to_metric_families

WAIT_S = 10.0
ARTIFACTS = ROOT / "tests" / "artifacts"

CONFIG = """
version: 1
server:
  http: auto
observability:
  access_log: {{to: "{log}"}}
upstreams:
  a:
    targets: ["{a}"]
  down:
    targets: ["http://127.0.0.1:{dead_port}"]
    timeouts: {{connect: 1s, response: 2s}}
routes:
  - name: counted
    match: {{path: /counted}}
    respond: {{body: counted}}
  - name: metered
    match: {{path: /metered}}
    respond: {{json: {{ok: true}}}}
  - name: proxied
    match: {{path_prefix: /api}}
    upstream: a
  - name: down
    match: {{path_prefix: /down}}
    upstream: down
  - name: hello
    match: {{path: /hello}}
    respond: {{body: hello}}
"""

SECRETS = ("sekrit-bearer", "sekrit-query", "sekrit-cookie")


@pytest.fixture(scope="module")
def access_log(engine, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(f"logs-{engine}") / "access.log"


@pytest.fixture(scope="module")
def gw(gatewayd_module, upstream, access_log):
    a = upstream("a")
    return gatewayd_module(CONFIG.format(a=a.url, dead_port=free_port(), log=access_log))


@pytest.fixture
def client(gw):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        yield c


def wait_for(predicate, what: str, gw, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if gw.proc.poll() is not None:
            pytest.fail(f"gatewayd exited with {gw.proc.returncode} while waiting for {what}; stderr:\n{gw.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r}); stderr:\n{gw.log()}")
        time.sleep(0.05)


def latency(client) -> dict:
    r = client.get("/latency")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    return r.json()


def families(client) -> dict:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def total(fams: dict, family: str, sample: str, **labels) -> float:
    return sum(s.value for s in fams[family].samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))


def log_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- /latency and /metrics ----------------------------------------------------------------------------


def test_latency_counts_match(client):
    for _ in range(25):
        assert client.get("/counted").status_code == 200
    for code in (503, 503, 429):
        assert client.get(f"/api/status/{code}").status_code == code
    doc = latency(client)
    assert doc["workers"] == 1 and doc["unit"] == "ms" and doc["relative_error"] == 0.01
    counted = doc["routes"]["counted"]
    for window in ("10s", "60s", "since_start"):
        w = counted[window]
        assert (w["count"], w["errors_4xx"], w["errors_5xx"]) == (25, 0, 0), window
        for kind in ("server_ms", "total_ms"):
            f = w[kind]
            assert 0 < f["p50"] <= f["p90"] <= f["p95"] <= f["p99"] <= f["p99.9"] <= f["max"], f
        assert w["server_ms"]["max"] <= w["total_ms"]["max"]
    proxied = doc["routes"]["proxied"]["60s"]
    assert proxied["errors_5xx"] >= 2 and proxied["errors_4xx"] >= 1
    overall = doc["overall"]["since_start"]
    assert overall["count"] >= 28 and overall["errors_5xx"] >= 2
    assert "latency" not in json.dumps(doc["routes"])  # the endpoints themselves are not recorded


def test_metrics_parse_and_count(client):
    for _ in range(12):
        assert client.get("/metered").status_code == 200
    assert client.get("/down/x").status_code == 502
    assert client.get("/api/anything").status_code == 200
    fams = families(client)
    assert total(fams, "gatewayd_requests", "gatewayd_requests_total", route="metered", method="GET", status="2xx") == 12
    assert total(fams, "gatewayd_request_duration_seconds", "gatewayd_request_duration_seconds_count", route="metered") == 12
    assert total(fams, "gatewayd_request_server_seconds", "gatewayd_request_server_seconds_count", route="metered") == 12
    assert total(fams, "gatewayd_upstream_errors", "gatewayd_upstream_errors_total", upstream="down", kind="unavailable") >= 1
    assert total(fams, "gatewayd_upstream_response_seconds", "gatewayd_upstream_response_seconds_count", upstream="a") >= 1
    assert total(fams, "gatewayd_config_generation", "gatewayd_config_generation") == 1
    assert total(fams, "gatewayd_config_reload_failures", "gatewayd_config_reload_failures_total") == 0
    assert total(fams, "gatewayd_workers", "gatewayd_workers") == 1
    assert {s.labels["worker"] for s in fams["gatewayd_requests"].samples} == {"0"}


# --- the access log and trace context -------------------------------------------------------------------


def test_access_log_lines_parse_and_hold_no_secrets(client, gw, access_log):
    r = client.get(
        "/api/logged",
        params={"token": SECRETS[1], "page": "2"},
        headers={"Authorization": f"Bearer {SECRETS[0]}", "Cookie": f"s={SECRETS[2]}", "X-Request-Id": "logged-1"},
    )
    assert r.status_code == 200
    client.get("/hello", headers={"X-Request-Id": "logged-2"})
    lines = wait_for(
        lambda: (ls := log_lines(access_log)) and {"logged-1", "logged-2"} <= {l["request_id"] for l in ls} and ls,
        "the access log lines",
        gw,
    )
    text = access_log.read_text()
    for secret in SECRETS:
        assert secret not in text
    line = next(l for l in lines if l["request_id"] == "logged-1")
    assert line["route"] == "proxied" and line["method"] == "GET" and line["status"] == 200
    assert line["path"] == "/api/logged" and line["query_keys"] == ["token", "page"]
    assert line["upstream"] == "a" and line["upstream_ms"] > 0 and line["bytes_sent"] == len(r.content)
    assert line["server_ms"] <= line["total_ms"] and line["protocol"].startswith("HTTP/")
    assert line["worker"] == 0 and line["consumer"] is None and line["cache"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"])
    assert r.json()["headers"]["traceparent"].split("-")[1] == line["trace_id"]
    hello = next(l for l in lines if l["request_id"] == "logged-2")
    assert hello["upstream"] is None and hello["upstream_ms"] is None and hello["bytes_sent"] == 5


def test_traceparent_is_kept_and_forwarded_with_the_gateways_span(client):
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    seen = client.get("/api/trace", headers={"traceparent": incoming, "tracestate": "rojo=00f067aa0ba902b7"}).json()["headers"]
    version, trace_id, parent, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert re.fullmatch(r"[0-9a-f]{16}", parent) and parent != "00f067aa0ba902b7"
    assert seen["tracestate"] == "rojo=00f067aa0ba902b7"


@pytest.mark.parametrize("incoming", [None, "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "garbage"])
def test_traceparent_is_generated_when_absent_or_invalid(client, incoming):
    headers = {"tracestate": "rojo=1"} if incoming is None else {"traceparent": incoming, "tracestate": "rojo=1"}
    seen = client.get("/api/trace", headers=headers).json()["headers"]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", seen["traceparent"]), seen["traceparent"]
    assert "4bf92f3577b34da6a3ce929d0e0e4736" not in seen["traceparent"]
    assert "tracestate" not in seen  # dropped with the traceparent it belonged to


# --- exposure -----------------------------------------------------------------------------------------


def test_endpoints_can_be_moved_disabled_and_kept_local(gatewayd):
    gw = gatewayd(
        """
version: 1
observability:
  endpoints: {latency: null, metrics: /_internal/metrics}
  endpoints_access: local
routes:
  - match: {path: /hello}
    respond: {body: hi}
"""
    )
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        assert c.get("/hello").status_code == 200
        r = c.get("/latency")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        assert c.get("/metrics").status_code == 404
        r = c.get("/_internal/metrics")  # from a loopback address, so served
        assert r.status_code == 200 and "gatewayd_requests_total" in r.text


# --- the page, in a real browser ------------------------------------------------------------------------


@needs_chromium
def test_latency_page_draws_a_chart_in_chromium(gw, tmp_path):
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        for i in range(60):
            c.get("/hello")
            c.get(f"/api/slow/{i % 7}")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"latency-{gw.engine}.png"
    shot.unlink(missing_ok=True)
    dom, stderr = dump_dom(f"{gw.url}/latency", tmp_path, screenshot=shot)
    assert shot.exists() and shot.stat().st_size > 10_000, stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = re.search(r'<svg id="chart"[^>]*data-points="(\d+)"', dom)
    assert points and int(points.group(1)) > 0, dom[:3000]
    assert 'class="series"' in dom and "hello" in dom  # lines drawn, the route in the table


# --- two workers -----------------------------------------------------------------------------------------


def fresh_get(port: int, path: str) -> int:
    """One request on a new connection: the kernel picks a worker per connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_two_workers_are_merged(gatewayd):
    gw = gatewayd(
        """
version: 1
server:
  workers: 2
routes:
  - name: spread
    match: {path: /spread}
    respond: {body: spread}
"""
    )
    # wait until both workers serve (each answers /health with its own worker index)
    seen: set[int] = set()
    deadline = time.monotonic() + 20
    while len(seen) < 2 and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(HOST, gw.port, timeout=5)
        try:
            conn.request("GET", "/health", headers={"Connection": "close"})
            seen.add(json.loads(conn.getresponse().read())["worker"])
        except (OSError, http.client.HTTPException):
            time.sleep(0.1)
        finally:
            conn.close()
    assert seen == {0, 1}, f"both workers did not answer; stderr:\n{gw.log()}"
    sent = 120
    for _ in range(sent):
        assert fresh_get(gw.port, "/spread") == 200

    def merged():
        with httpx.Client(base_url=gw.url, timeout=10.0) as c:
            doc = latency(c)
            route = doc["routes"].get("spread", {}).get("since_start", {})
            return doc if doc["workers"] == 2 and route.get("count") == sent else None

    doc = wait_for(merged, f"/latency to count {sent} requests over 2 workers", gw)
    assert doc["overall"]["60s"]["count"] == sent
    with httpx.Client(base_url=gw.url, timeout=10.0) as c:
        fams = families(c)
    per_worker = {
        s.labels["worker"]: s.value
        for s in fams["gatewayd_requests"].samples
        if s.name == "gatewayd_requests_total" and s.labels["route"] == "spread"
    }
    assert sum(per_worker.values()) == sent and set(per_worker) == {"0", "1"}, per_worker
    assert total(fams, "gatewayd_workers", "gatewayd_workers") == 2
