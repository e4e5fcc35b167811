"""OpenTelemetry export: a running gatewayd sends its spans to a small OTLP/HTTP receiver, and a config
asking for export without the packages is a located error."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import HOST, free_port

pytest.importorskip("opentelemetry.sdk.trace")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.observe import otel

WAIT_S = 10.0
INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

CONFIG = """
version: 1
observability:
  otel: {{endpoint: "http://{host}:{port}/v1/traces", service_name: gw-test}}
upstreams:
  a:
    targets: ["{a}"]
  down:
    targets: ["http://127.0.0.1:{dead_port}"]
    timeouts: {{connect: 1s, response: 2s}}
routes:
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


class Receiver:
    """An OTLP/HTTP traces endpoint on a free loopback port, keeping every span it is sent."""

    def __init__(self):
        self.spans: list[tuple[dict, Span]] = []  # (resource attributes, span)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            receiver.spans.extend((resource, s) for s in ss.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> list[tuple[dict, Span]]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.spans) >= count:
                    return list(self.spans)
            time.sleep(0.05)
        with self.lock:
            return list(self.spans)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def attrs(span: Span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_spans_arrive_with_ids_parents_and_attributes(gatewayd, upstream, receiver):
    up = upstream("a")
    gw = gatewayd(CONFIG.format(host=HOST, port=receiver.port, a=up.url, dead_port=free_port()))
    with httpx.Client(base_url=gw.url, timeout=5.0) as client:
        joined = client.get("/api/echo", headers={"traceparent": INCOMING}).json()
        fresh = client.get("/api/echo").json()
        assert client.get("/hello").status_code == 200
        assert client.get("/nowhere").status_code == 404
        assert client.get("/down/x").status_code in (502, 504)
    # 5 request spans, 3 upstream spans
    spans = receiver.wait_for(8)
    assert len(spans) == 8, [s.name for _, s in spans]
    assert all(resource["service.name"] == "gw-test" for resource, _ in spans)
    by_path = {}
    children = {}
    for _, s in spans:
        if s.name == "upstream":
            children[s.parent_span_id] = s
        else:
            by_path[attrs(s)["url.path"]] = s

    # joined the client's trace: the upstream's parent is the gateway's span, the client's is the gateway's
    _, trace_id, parent, _ = joined["headers"]["traceparent"].split("-")
    (s,) = [s for _, s in spans if s.name == "proxied" and s.trace_id.hex() == trace_id]
    assert s.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736" == trace_id
    assert s.span_id.hex() == parent
    assert s.parent_span_id.hex() == "00f067aa0ba902b7"
    assert s.name == "proxied" and s.kind == Span.SPAN_KIND_SERVER
    a = attrs(s)
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 200
    assert a["http.route"] == "proxied" and a["gatewayd.upstream"] == "a" and a["gatewayd.worker"] == 0
    assert s.start_time_unix_nano <= s.end_time_unix_nano
    assert abs(s.start_time_unix_nano / 1e9 - time.time()) < 60  # wall clock, not perf_counter
    child = children[s.span_id]
    assert child.trace_id == s.trace_id and child.kind == Span.SPAN_KIND_CLIENT
    assert s.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano <= s.end_time_unix_nano
    assert child.status.code != Status.STATUS_CODE_ERROR

    # a new trace: a root span whose id the upstream saw as its parent
    _, fresh_trace, fresh_parent, _ = fresh["headers"]["traceparent"].split("-")
    roots = [s for _, s in spans if s.trace_id.hex() == fresh_trace]
    assert len(roots) == 2  # the request span and its upstream child
    root = next(s for s in roots if s.name == "proxied")
    assert root.span_id.hex() == fresh_parent and root.parent_span_id == b""

    hello = by_path["/hello"]
    assert hello.name == "hello" and hello.span_id not in children and hello.parent_span_id == b""
    assert "gatewayd.upstream" not in attrs(hello)
    nowhere = by_path["/nowhere"]
    assert nowhere.name == "unmatched" and attrs(nowhere)["http.response.status_code"] == 404
    assert "http.route" not in attrs(nowhere)

    down = by_path["/down/x"]
    assert down.status.code == Status.STATUS_CODE_ERROR
    failed = children[down.span_id]
    assert failed.status.code == Status.STATUS_CODE_ERROR and attrs(failed)["error.type"] == "unavailable"


def test_sample_zero_exports_nothing(gatewayd, upstream, receiver):
    up = upstream("a")
    text = CONFIG.format(host=HOST, port=receiver.port, a=up.url, dead_port=free_port())
    text = text.replace("service_name: gw-test}", "service_name: gw-test, sample: 0}")
    gw = gatewayd(text)
    with httpx.Client(base_url=gw.url, timeout=5.0) as client:
        for _ in range(5):
            assert client.get("/hello").status_code == 200
    gw.stop()  # a clean stop sends whatever is queued
    assert receiver.spans == []


def test_missing_packages_are_a_located_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(otel, "available", lambda: False)
    monkeypatch.setattr("gatewayd.config.semantic.otel_available", lambda: False)
    text = "version: 1\nobservability:\n  otel:\n    sample: 0.5\nroutes:\n  - match: {path: /x}\n    respond: {body: x}\n"
    with pytest.raises(ConfigError) as info:
        load_bytes(text.encode(), str(tmp_path / "gateway.yaml"))
    (problem,) = info.value.problems
    assert (problem.location.line, problem.location.column) == (3, 3) and "gatewayd[otel]" in problem.message


def test_otel_config_defaults_and_strictness(tmp_path):
    base = "version: 1\nobservability:\n  otel: {otel}\nroutes:\n  - match: {{path: /x}}\n    respond: {{body: x}}\n"
    config = load_bytes(base.format(otel="{}").encode(), str(tmp_path / "gateway.yaml"))
    o = config.observability.otel
    assert (o.endpoint, o.service_name, o.sample) == ("http://127.0.0.1:4318/v1/traces", "gatewayd", 1.0)
    assert load_bytes(b"version: 1\nroutes:\n  - match: {path: /x}\n    respond: {body: x}\n", str(tmp_path / "g.yaml")).observability.otel is None
    for bad in ("{sample: 2}", "{endpoint: localhost:4318}", "{colour: red}", "{service_name: ''}"):
        with pytest.raises(ConfigError):
            load_bytes(base.format(otel=bad).encode(), str(tmp_path / "gateway.yaml"))
