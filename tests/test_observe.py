"""gatewayd.observe without a server: sketches and windows, merging workers, the access log's lines,
trace context, the metrics registry and exposition, the endpoints' exposure and the config keys."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from time import perf_counter_ns

import numpy as np
import pytest
from ddsketch import DDSketch
from prometheus_client.parser import text_string_to_metric_families

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.dispatch.compile import compile_table
from gatewayd.dispatch.exchange import Exchange
from gatewayd.observe import latency, metrics, trace
from gatewayd.observe.access_log import AccessLog, query_keys
from gatewayd.observe.endpoints import latency_document, metrics_text
from gatewayd.observe.observer import LATENCY_PREFIX, Observer, decode, encode
from gatewayd.runtime.status import RuntimeStatus
from gatewayd.store import MemoryStore

QS = [q for _, q in latency.QUANTILES]
ERR = latency.RELATIVE_ACCURACY


def exact(values, q: float) -> float:
    """The quantile DDSketch approximates: the value of rank floor(q * (n - 1)) in sorted order."""
    return float(np.quantile(np.asarray(values), q, method="lower"))


DISTRIBUTIONS = {
    "lognormal": lambda r, n: [r.lognormvariate(0, 1.5) for _ in range(n)],
    "uniform": lambda r, n: [r.uniform(0.05, 30) for _ in range(n)],
    "bimodal": lambda r, n: [r.gauss(0.3, 0.02) if r.random() < 0.9 else r.gauss(250, 40) for _ in range(n)],
    "pareto": lambda r, n: [0.1 * r.paretovariate(1.2) for _ in range(n)],
    "constant": lambda r, n: [4.2] * n,
    "tiny": lambda r, n: [r.uniform(0.001, 0.01) for _ in range(n)],
}


# --- sketches ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@pytest.mark.parametrize("n", [1, 7, 1000, 20000])
def test_quantiles_within_the_stated_relative_error(name, n):
    values = [abs(v) or 1e-3 for v in DISTRIBUTIONS[name](random.Random(n), n)]
    h = latency.Histogram()
    for v in values:
        h.add(v)
    assert h.count == n and h.max == max(values)
    assert h.sum == pytest.approx(sum(values))
    for q, got in zip(QS, h.quantiles(QS)):
        want = exact(values, q)
        assert abs(got - want) <= ERR * want + 1e-12, (q, got, want)


def test_quantiles_match_the_ddsketch_library():
    values = DISTRIBUTIONS["lognormal"](random.Random(1), 5000)
    ours, theirs = latency.Histogram(), DDSketch(latency.RELATIVE_ACCURACY)
    for v in values:
        ours.add(v)
        theirs.add(v)
    for q, got in zip(QS, ours.quantiles(QS)):
        assert got == pytest.approx(min(theirs.get_quantile_value(q), max(values)), rel=1e-12)


def test_inlined_key_is_the_library_mapping():
    rng = random.Random(2)
    values = [rng.lognormvariate(0, 4) for _ in range(20000)] + [1e-6, 1.0, 2.0, 1000.0, 0.5]
    for v in values:
        if v >= 1e-6:  # smaller values are counted as 1 ns
            assert latency.key(v) == latency._MAPPING.key(v)


def test_empty_histogram_has_no_quantiles():
    h = latency.Histogram()
    assert h.quantiles(QS) == [None] * len(QS)
    report = latency.report(latency.merge([]), workers=0)
    assert report["overall"]["10s"]["server_ms"]["p99"] is None and report["overall"]["10s"]["count"] == 0


def test_encode_decode_round_trip():
    h = latency.Histogram()
    for v in DISTRIBUTIONS["bimodal"](random.Random(3), 3000):
        h.add(abs(v))
    back = latency.Histogram.decode(json.loads(json.dumps(h.encode())))
    assert back.bins == h.bins and back.count == h.count and back.max == h.max
    assert back.sum == pytest.approx(h.sum)


def test_subtract_undoes_merge():
    a, b = latency.Histogram(), latency.Histogram()
    for v in (1, 2, 3):
        a.add(v)
    for v in (3, 40):
        b.add(v)
    a.merge(b)
    a.subtract(b)
    assert a.count == 3 and a.bins == {latency.key(v): 1 for v in (1, 2, 3)}


# --- windows -------------------------------------------------------------------------------------------


def requests(n, route="r", status=200, ms=1.0):
    return [(route, status, ms, ms * 2) for _ in range(n)]


def counts(book: latency.Book, route="r") -> dict:
    snap = book.snapshot()["routes"][route]
    return {w: snap[w]["n"] for w in latency.WINDOW_NAMES}


def test_windows_slide_second_by_second():
    book = latency.Book(1000)
    book.fold(1000, requests(5))
    book.fold(1003, requests(2))
    assert counts(book) == {"10s": 7, "60s": 7, "since_start": 7}
    book.fold(1009, requests(1))
    assert counts(book) == {"10s": 8, "60s": 8, "since_start": 8}
    book.fold(1010, [])  # second 1000 leaves the 10 s window (which is 1001..1010)
    assert counts(book) == {"10s": 3, "60s": 8, "since_start": 8}
    book.fold(1013, [])
    assert counts(book) == {"10s": 1, "60s": 8, "since_start": 8}
    book.fold(1060, requests(4))  # 1000 leaves the 60 s window
    assert counts(book) == {"10s": 4, "60s": 7, "since_start": 12}
    book.fold(1200, [])  # a long pause empties both windows
    assert counts(book) == {"10s": 0, "60s": 0, "since_start": 12}
    assert book.routes["r"].windows["60s"].server.bins == {}


def test_window_max_and_errors():
    book = latency.Book(0)
    book.fold(0, [("r", 200, 90.0, 95.0), ("r", 503, 1.0, 1.0), ("r", 404, 1.0, 1.0), ("r", 429, 1.0, 1.0)])
    book.fold(11, [("r", 200, 5.0, 6.0)])
    snap = book.snapshot()["routes"]["r"]
    assert snap["10s"]["server"][3] == 5.0  # the 90 ms request left the 10 s window
    assert snap["60s"]["server"][3] == 90.0 and snap["60s"]["total"][3] == 95.0
    assert (snap["60s"]["e4"], snap["60s"]["e5"]) == (2, 1)
    assert (snap["10s"]["e4"], snap["10s"]["e5"]) == (0, 0)


def test_several_folds_in_one_second_add_up():
    book = latency.Book(50)
    for _ in range(3):
        book.fold(50, requests(2))
    assert counts(book) == {"10s": 6, "60s": 6, "since_start": 6}
    assert book.snapshot()[latency.OVERALL]["since_start"]["n"] == 6


def test_two_workers_merge_into_one_view():
    rng = random.Random(4)
    a_values = [rng.lognormvariate(0, 1) for _ in range(3000)]
    b_values = [rng.lognormvariate(2, 0.5) for _ in range(2000)]
    a, b = latency.Book(100), latency.Book(100)
    a.fold(100, [("x", 200, v, v) for v in a_values] + [("y", 500, 1.0, 1.0)])
    b.fold(100, [("x", 404, v, v) for v in b_values])
    # what each worker publishes, through the store's bytes
    store = MemoryStore()
    store.put(LATENCY_PREFIX + b"1", encode({"worker": 0, "latency": a.snapshot()}))
    store.put(LATENCY_PREFIX + b"2", encode({"worker": 1, "latency": b.snapshot()}))
    docs = [decode(raw) for _, raw in store.scan(LATENCY_PREFIX)]
    report = latency.report(latency.merge([d["latency"] for d in docs]), workers=len(docs))
    assert report["workers"] == 2
    x = report["routes"]["x"]["60s"]
    assert x["count"] == 5000 and x["errors_4xx"] == 2000 and x["errors_5xx"] == 0
    assert report["overall"]["since_start"]["count"] == 5001 and report["overall"]["since_start"]["errors_5xx"] == 1
    both = a_values + b_values
    for (name, q) in latency.QUANTILES:
        want = exact(both, q)
        assert abs(x["server_ms"][name] - want) <= ERR * want + 1e-3, name  # + rounding to 0.001 ms
    assert x["total_ms"]["max"] == pytest.approx(max(both), abs=1e-3)


# --- the observer -------------------------------------------------------------------------------------


def scope(path="/x", qs=b"", headers=(), client=("127.0.0.1", 5000), method="GET") -> dict:
    headers = list(headers)
    if not any(name == b"host" for name, _ in headers):  # as a server gives it (HTTP/1.1 requires one)
        headers.insert(0, (b"host", b"localhost"))
    return {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": qs,
        "http_version": "1.1", "scheme": "http", "client": client, "headers": headers,
    }  # fmt: skip


def exchange(route="r", status=200, server_ns=1_000_000, total_ns=3_000_000, **kw) -> Exchange:
    ex = Exchange(scope(**kw), None, None, perf_counter_ns() - total_ns, b"rid-1", True)
    ex.route_name, ex.status, ex.t_start, ex.sent = route, status, ex.t0 + server_ns, 12
    return ex


def test_access_log_line_has_the_fields_and_no_secrets(tmp_path):
    path = tmp_path / "access.log"
    observer = Observer(MemoryStore(), RuntimeStatus())
    observer.access_log = AccessLog(str(path), 1.0)
    secret_headers = [(b"authorization", b"Bearer sekrit-token"), (b"cookie", b"session=sekrit-cookie"), (b"x-api-key", b"sekrit-key")]
    ex = exchange(path="/v1/items", qs=b"api_key=sekrit-q&page=2&flag", headers=secret_headers)
    ex.upstream, ex.upstream_ns, ex.upstream_error = "items", 800_000, None
    observer.record(ex)
    observer.fold()
    text = path.read_text()
    assert "sekrit" not in text
    entry = json.loads(text)
    assert set(entry) == {
        "time", "request_id", "trace_id", "route", "consumer", "method", "path", "query_keys", "protocol",
        "status", "bytes_sent", "server_ms", "total_ms", "upstream", "upstream_ms", "cache", "worker",
    }  # fmt: skip
    assert entry["path"] == "/v1/items" and entry["query_keys"] == ["api_key", "page", "flag"]
    assert entry["route"] == "r" and entry["status"] == 200 and entry["bytes_sent"] == 12
    assert entry["server_ms"] == pytest.approx(1.0, abs=0.01) and entry["upstream_ms"] == pytest.approx(0.8)
    assert entry["protocol"] == "HTTP/1.1" and entry["consumer"] is None and entry["cache"] is None
    assert entry["request_id"] == "rid-1" and entry["time"].endswith("Z")
    assert len(entry["trace_id"]) == 32


def test_access_log_carries_the_clients_trace_id(tmp_path):
    path = tmp_path / "access.log"
    observer = Observer(MemoryStore(), RuntimeStatus())
    observer.access_log = AccessLog(str(path), 1.0)
    tp = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    observer.record(exchange(headers=[(b"traceparent", tp)]))
    observer.record(exchange(route="", status=404))
    observer.fold()
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert second["route"] is None and second["status"] == 404


def test_access_log_sampling_and_off(tmp_path):
    path = tmp_path / "access.log"
    observer = Observer(MemoryStore(), RuntimeStatus())
    observer.access_log = AccessLog(str(path), 0.25)
    random.seed(5)
    for _ in range(2000):
        observer.record(exchange())
    observer.fold()
    n = len(path.read_text().splitlines())
    assert 350 < n < 650
    observer.access_log = AccessLog("off", 1.0)
    observer.record(exchange())
    observer.fold()
    assert len(path.read_text().splitlines()) == n


def test_access_log_reopens_a_rotated_file(tmp_path):
    path = tmp_path / "access.log"
    log = AccessLog(str(path), 1.0)
    log.write([b"one\n"])
    path.rename(tmp_path / "access.log.1")
    log.write([b"two\n"])
    assert path.read_text() == "two\n" and (tmp_path / "access.log.1").read_text() == "one\n"
    log.close()


def test_query_keys():
    assert query_keys(b"") == []
    assert query_keys(b"a=1&b&&c%5B%5D=x&d+e=") == ["a", "b", "c[]", "d e"]


def test_unstarted_response_counts_as_499_and_has_no_server_time():
    observer = Observer(MemoryStore(), RuntimeStatus())
    ex = Exchange(scope(), None, None, perf_counter_ns(), b"rid", True)
    ex.route_name = "r"
    observer.record(ex)
    observer.fold()
    snap = observer.book.snapshot()["routes"]["r"]["since_start"]
    assert snap["n"] == 1 and snap["e4"] == 1 and snap["server"][1] == [] and sum(snap["total"][1]) == 1


def test_observer_dedupes_a_restarted_worker_and_survives_a_full_store(caplog):
    store = MemoryStore()
    store.put(LATENCY_PREFIX + b"100", encode({"worker": 1, "started_at": 10.0, "pid": 100}))
    store.put(LATENCY_PREFIX + b"200", encode({"worker": 1, "started_at": 20.0, "pid": 200}))
    store.put(LATENCY_PREFIX + b"300", encode({"worker": 0, "started_at": 5.0, "pid": 300}))
    store.put(LATENCY_PREFIX + b"400", b"not zlib")
    observer = Observer(store, RuntimeStatus())
    assert sorted(d["pid"] for d in observer.workers(LATENCY_PREFIX)) == [200, 300]

    class Full(MemoryStore):
        def put(self, key, value, ttl=None):
            raise RuntimeError("no room")

    full = Observer(Full(), RuntimeStatus())
    with caplog.at_level(logging.WARNING, "gatewayd.observe"):
        full.publish()
        full.publish()
    assert sum("could not publish" in r.message for r in caplog.records) == 1


def test_withdraw_removes_this_workers_figures():
    store = MemoryStore()
    observer = Observer(store, RuntimeStatus())
    observer.publish()
    assert len(store.scan(b"latency/")) == 1 and len(store.scan(b"metrics/worker/")) == 1
    observer.withdraw()
    assert store.scan(b"latency/") == [] and store.scan(b"metrics/worker/") == []


# --- trace context ---------------------------------------------------------------------------------------


VALID = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    "value, ok",
    [
        (VALID, True),
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", True),
        (b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", True),  # a later version may add fields
        (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", False),  # version 00 may not
        (b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        (b"00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
        (b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
        (b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),  # upper case
        (b"00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01", False),  # short trace id
        (b"00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01", False),
        (b"", False),
        (b"garbage", False),
    ],
)
def test_traceparent_parsing(value, ok):
    assert (trace.parse(value) is not None) is ok


def test_forward_keeps_a_valid_trace_with_a_new_parent():
    tp, state, trace_id, span_id = trace.forward(VALID, b"vendor=abc")
    version, tid, parent, flags = tp.split("-")
    assert (version, tid, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")
    assert parent != "b7ad6b7169203331" and trace.parse(tp.encode())
    assert state == "vendor=abc" and trace_id == tid and span_id == parent


@pytest.mark.parametrize("incoming", [None, b"00-zz-bad"])
def test_forward_starts_a_trace_when_absent_or_invalid(incoming):
    tp, state, trace_id, span_id = trace.forward(incoming, b"vendor=abc")
    parsed = trace.parse(tp.encode())
    assert parsed is not None and parsed[0] == trace_id and parsed[1] == span_id and parsed[2] == "01"
    assert state is None  # a tracestate without a valid traceparent is dropped
    assert trace.forward(incoming, None)[2] != trace_id


# --- metrics -------------------------------------------------------------------------------------------


def test_registry_counters():
    reg = metrics.Registry()
    c = reg.counter("demo_hits_total", "Hits.", ("policy",))
    assert reg.counter("demo_hits_total", "Hits.", ("policy",)) is c
    with pytest.raises(ValueError):
        reg.counter("demo_hits_total", "Hits.", ("other",))
    with pytest.raises(ValueError):
        reg.counter("demo_hits", "no _total suffix")
    with pytest.raises(ValueError):
        reg.counter("demo_x_total", "reserved label", ("worker",))
    child = c.labels("a")
    child.inc()
    child.inc(2)
    c.inc(("b",))
    assert reg.snapshot()["demo_hits_total"]["values"] == [["a", 3], ["b", 1]]


def test_metrics_exposition_parses_and_counts_per_worker():
    store = MemoryStore()
    workers = []
    for index in (0, 1):
        status = RuntimeStatus()
        status.worker = index
        status.loaded("sha")
        reg = metrics.Registry()
        requests = reg.counter("gatewayd_requests_total", "Requests.", ("route", "method", "status"))
        requests.inc(("hello", "GET", "2xx"), 5 + index)
        book = latency.Book(0)
        book.fold(0, [("hello", 200, 0.7, 1.2)] * (5 + index), [("up", 3.0)])
        workers.append({"worker": str(index), "generation": 1, "reload_failures": index, "counters": reg.snapshot(), "latency": book.snapshot()})
    metrics.worker_restarted(store)
    metrics.worker_restarted(store)
    text = metrics.render(workers, int(store.get(metrics.RESTARTS_KEY))).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = lambda name: [s for s in families[name].samples]
    assert sum(s.value for s in samples("gatewayd_requests") if s.name == "gatewayd_requests_total") == 11
    assert {s.labels["worker"] for s in samples("gatewayd_requests")} == {"0", "1"}
    assert [s.value for s in samples("gatewayd_worker_restarts")] == [2]
    assert families["gatewayd_workers"].samples[0].value == 2
    counts = [s for s in samples("gatewayd_request_duration_seconds") if s.name.endswith("_count")]
    assert sorted(s.value for s in counts) == [5, 6]
    buckets = [s for s in samples("gatewayd_request_duration_seconds") if s.name.endswith("_bucket") and s.labels["worker"] == "0"]
    by_le = {s.labels["le"]: s.value for s in buckets}
    assert by_le["0.001"] == 0 and by_le["0.0025"] == 5 and by_le["+Inf"] == 5
    assert [s.labels["upstream"] for s in samples("gatewayd_upstream_response_seconds") if s.name.endswith("_count")] == ["up", "up"]


# --- the endpoints, in process -----------------------------------------------------------------------------

CONFIG = """
version: 1
observability:
  endpoints_access: {access}
routes:
  - name: hello
    match: {{path: /hello}}
    respond: {{body: hi}}
"""


def table_for(text: str, tmp_path, observer):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    config = load_bytes(text.encode(), str(path))
    observer.configure(config.observability)
    return compile_table(config, {}, observer.status, observer)


def call(table, path, headers=(), client=("127.0.0.1", 5555), qs=b""):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(table.handle(scope(path=path, headers=headers, client=client, qs=qs), receive, send))
    status = sent[0]["status"]
    headers = dict(sent[0]["headers"])
    return status, headers, b"".join(m.get("body", b"") for m in sent[1:])


def test_latency_and_metrics_endpoints_in_process(tmp_path):
    observer = Observer(MemoryStore(), RuntimeStatus(), registry=metrics.Registry())
    table = table_for(CONFIG.format(access="public"), tmp_path, observer)
    for _ in range(3):
        assert call(table, "/hello")[0] == 200
    assert call(table, "/nothing")[0] == 404
    status, headers, body = call(table, "/latency")
    doc = json.loads(body)
    assert status == 200 and headers[b"content-type"] == b"application/json"
    assert doc["workers"] == 1 and doc["overall"]["since_start"]["count"] == 4
    assert doc["routes"]["hello"]["10s"]["count"] == 3 and doc["routes"]["(unmatched)"]["10s"]["errors_4xx"] == 1
    status, headers, body = call(table, "/latency", headers=[(b"accept", b"text/html,application/xhtml+xml")])
    assert status == 200 and headers[b"content-type"].startswith(b"text/html")
    assert b"<svg" in body and b"<script src" not in body and b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"")
    status, headers, body = call(table, "/metrics")
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    hello = [s.value for s in families["gatewayd_requests"].samples if s.labels.get("route") == "hello"]
    assert hello == [3]
    assert latency_document(observer)["routes"]["hello"]["since_start"]["count"] == 3  # endpoints are not recorded
    assert b"gatewayd_requests_total" in metrics_text(observer)


def test_local_only_endpoints_answer_404_to_other_clients(tmp_path):
    observer = Observer(MemoryStore(), RuntimeStatus())
    table = table_for(CONFIG.format(access="local"), tmp_path, observer)
    for client in (("127.0.0.1", 1), ("::1", 1), ("127.8.9.10", 1)):
        assert call(table, "/latency", client=client)[0] == 200
        assert call(table, "/metrics", client=client)[0] == 200
    for client in (("10.1.2.3", 1), ("192.0.2.1", 1), ("2001:db8::1", 1), None):
        status, _, body = call(table, "/metrics", client=client)
        assert status == 404 and json.loads(body)["error"] == "not_found"
        assert call(table, "/latency", client=client)[0] == 404
    assert call(table, "/health", client=("10.1.2.3", 1))[0] == 200  # health stays public


# --- config ----------------------------------------------------------------------------------------------


def load(text: str, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_bytes(text.encode(), str(path))


def test_config_defaults(tmp_path):
    obs = load("version: 1\nroutes: [{match: {path: /}, respond: {}}]\n", tmp_path).observability
    assert (obs.latency_path, obs.metrics_path, obs.endpoints_access) == ("/latency", "/metrics", "public")
    assert (obs.access_log_to, obs.access_log_sample) == ("off", 1.0)
    obs = load("version: 1\nobservability: {access_log: {}}\nroutes: [{match: {path: /}, respond: {}}]\n", tmp_path).observability
    assert obs.access_log_to == "stdout"


def test_config_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = """
version: 1
observability:
  endpoints: {latency: /_lat, metrics: null}
  endpoints_access: local
  access_log: {to: logs/access.log, sample: 0.5}
routes: [{match: {path: /}, respond: {}}]
"""
    obs = load(text, tmp_path).observability
    assert (obs.latency_path, obs.metrics_path, obs.endpoints_access) == ("/_lat", None, "local")
    assert obs.access_log_to == str(tmp_path / "logs" / "access.log") and obs.access_log_sample == 0.5


@pytest.mark.parametrize(
    "observability, message",
    [
        ("{access_log: {to: stdot}}", "access_log.to"),
        ("{access_log: {sample: 1.5}}", "access_log.sample"),
        ("{access_log: {to: stdout, level: info}}", "unknown key 'level'"),
        ("{endpoints_access: private}", "endpoints_access"),
        ("{endpoints: {metrics: metrics}}", "endpoints.metrics"),
        ("{endpoints: {latency: /health}}", "/health is already the health endpoint"),
    ],
)
def test_config_rejects(tmp_path, observability, message):
    with pytest.raises(ConfigError) as err:
        load(f"version: 1\nobservability: {observability}\nroutes: [{{match: {{path: /}}, respond: {{}}}}]\n", tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize("path, key", [("/latency", "latency"), ("/metrics", "metrics")])
def test_a_route_on_an_endpoint_path_is_an_error(tmp_path, path, key):
    with pytest.raises(ConfigError) as err:
        load(f"version: 1\nroutes: [{{match: {{path: {path}}}, respond: {{}}}}]\n", tmp_path)
    assert f"is the {key} endpoint (change observability.endpoints.{key})" in str(err.value)
    # disabled, the path is free for a route
    load(f"version: 1\nobservability: {{endpoints: {{{key}: null}}}}\nroutes: [{{match: {{path: {path}}}, respond: {{}}}}]\n", tmp_path)


def test_a_rejected_reload_is_counted(tmp_path):
    from gatewayd.runtime.gateway import Gateway

    path = tmp_path / "gateway.yaml"
    path.write_text("version: 1\nroutes: [{match: {path: /}, respond: {}}]\n")
    gateway = Gateway(str(path), store=MemoryStore())
    gateway.start()
    path.write_text("version: 1\nroutes: [{match: {path: /}, respnd: {}}]\n")
    assert asyncio.run(gateway.reload("test")) is False
    fams = {f.name: f for f in text_string_to_metric_families(metrics_text(gateway.observer).decode())}
    assert [s.value for s in fams["gatewayd_config_reload_failures"].samples if s.name.endswith("_total")] == [1]
    assert [s.value for s in fams["gatewayd_config_generation"].samples] == [1]


# --- recording: numbers at record time, the fold in vectorised slices --------------------------------------


def test_vectorised_histograms_are_what_add_gives():
    rng = random.Random(7)
    values = [abs(v) for v in DISTRIBUTIONS["pareto"](rng, 5000)] + [1e-9, 1e-6, 0.0, 3.6e6, 1.0, 2.0]
    series = [rng.randrange(4) for _ in values]
    got = latency.histograms(np.asarray(series), np.asarray(values))
    assert sorted(got) == sorted(set(series))
    for sid, h in got.items():
        want = latency.Histogram()
        for s, v in zip(series, values):
            if s == sid:
                want.add(v)
        assert h.bins == want.bins and h.count == want.count and h.max == want.max
        assert h.sum == pytest.approx(want.sum)


def test_record_keeps_numbers_not_the_exchange():
    import sys

    observer = Observer(MemoryStore(), RuntimeStatus())
    ex = exchange(headers=[(b"authorization", b"Bearer x")])
    before = sys.getrefcount(ex), sys.getrefcount(ex.scope)
    observer.record(ex)
    assert (sys.getrefcount(ex), sys.getrefcount(ex.scope)) == before  # nothing of it is held
    assert observer.recorder.lines == [] and observer.recorder.spans == []
    observer.fold()
    assert observer.book.snapshot()["routes"]["r"]["since_start"]["n"] == 1


def test_sampling_is_decided_at_record_time_and_keeps_the_consumer(tmp_path):
    path = tmp_path / "access.log"
    observer = Observer(MemoryStore(), RuntimeStatus())
    observer.access_log = AccessLog(str(path), 0.5)
    random.seed(11)
    for i in range(400):
        ex = exchange()
        ex.consumer = f"c{i}"
        observer.record(ex)
    kept = len(observer.recorder.lines)  # decided already, before any fold
    assert 150 < kept < 250
    observer.fold()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == kept and all(line["consumer"].startswith("c") for line in lines)
    assert observer.book.snapshot()["routes"]["r"]["since_start"]["n"] == 400  # every request is counted


def test_fold_in_slices_of_one_block_equals_one_fold():
    from gatewayd.observe.recorder import BLOCK

    sliced, whole = (Observer(MemoryStore(), RuntimeStatus(), registry=metrics.Registry()) for _ in range(2))
    rng = random.Random(3)
    for i in range(2 * BLOCK + 10):
        status = rng.choice((200, 200, 404, 503))
        for observer in (sliced, whole):
            ex = exchange(route=("a", "b", "")[i % 3], status=status, server_ns=1000 + i, total_ns=5000 + 7 * i)
            if i % 5 == 0:
                ex.upstream, ex.upstream_ns, ex.upstream_error = "up", None, ("timeout", "unavailable", None)[i % 3]
            elif i % 5 == 1:
                ex.upstream, ex.upstream_ns, ex.upstream_error = "up", 900 + i, None
            observer.record(ex)
    slices = sum(1 for _ in sliced._fold_steps())
    whole.fold()
    assert slices == 3  # one per block
    a, b = sliced.book.snapshot(), whole.book.snapshot()
    for route in ("a", "b", "(unmatched)"):
        x, y = a["routes"][route]["since_start"], b["routes"][route]["since_start"]
        assert (x["n"], x["e4"], x["e5"], x["server"]) == (y["n"], y["e4"], y["e5"], y["server"])  # total time: read at record
    assert a["routes"]["(unmatched)"]["since_start"]["n"] == (2 * BLOCK + 10) // 3
    assert a["*"]["since_start"]["n"] == 2 * BLOCK + 10
    counters = sliced.registry.snapshot()
    assert counters == whole.registry.snapshot()
    requests = {tuple(row[:-1]): row[-1] for row in counters["gatewayd_requests_total"]["values"]}
    assert sum(requests.values()) == 2 * BLOCK + 10
    assert {k[1] for k in requests} == {"GET"} and {k[2] for k in requests} <= {"2xx", "4xx", "5xx"}


def test_upstream_errors_and_times_are_folded():
    reg = metrics.Registry()
    observer = Observer(MemoryStore(), RuntimeStatus(), registry=reg)
    for upstream_ns, error in ((800_000, None), (None, "timeout"), (None, "unavailable"), (None, "unavailable"), (None, None)):
        ex = exchange(route="p")
        ex.upstream, ex.upstream_ns, ex.upstream_error = "items", upstream_ns, error
        observer.record(ex)
    observer.fold()
    errors = {tuple(row[:-1]): row[-1] for row in reg.snapshot()["gatewayd_upstream_errors_total"]["values"]}
    assert errors == {("items", "timeout"): 1, ("items", "unavailable"): 2}
    up = observer.book.snapshot()["upstreams"]["items"]["since_start"]
    assert up["n"] == 1 and up["total"][3] == pytest.approx(0.8)


def test_spans_are_sampled_at_record_time_and_bounded(monkeypatch):
    from gatewayd.observe import recorder

    class Export:
        def __init__(self):
            self.made = []

        def keep(self, trace_id):
            return trace_id.endswith(("0", "1", "2", "3", "4", "5", "6", "7"))  # about half

        def spans(self, fields, wall_offset, worker):
            self.made.append(fields)

    export = Export()
    observer = Observer(MemoryStore(), RuntimeStatus())
    observer.otel = export
    observer._sampling()
    tp = b"00-0af7651916cd43dd8448eb211c803190-b7ad6b7169203331-01"
    observer.record(exchange(headers=[(b"traceparent", tp)]))
    assert len(observer.recorder.spans) == 1
    fields = dict(zip(recorder.SPAN_FIELDS, observer.recorder.spans[0]))
    assert fields["trace_id"] == "0af7651916cd43dd8448eb211c803190" and fields["parent"][1] == "b7ad6b7169203331"
    assert fields["route"] == "r" and fields["status"] == 200 and fields["path"] == "/x"
    monkeypatch.setattr(recorder, "MAX_PENDING", 10)
    for _ in range(200):
        observer.record(exchange())
    assert len(observer.recorder.spans) == 10 and observer.recorder.dropped_spans > 0
    observer.fold()
    assert len(export.made) == 10 and observer.recorder.spans == []


def test_record_false_records_nothing_and_says_so(tmp_path):
    observer = Observer(MemoryStore(), RuntimeStatus(), registry=metrics.Registry())
    text = CONFIG.format(access="public").replace("observability:\n", "observability:\n  record: false\n")
    table = table_for(text, tmp_path, observer)
    for _ in range(3):
        assert call(table, "/hello")[0] == 200
    assert call(table, "/nothing")[0] == 404
    doc = json.loads(call(table, "/latency")[2])
    assert doc["recording"] is False and doc["overall"]["since_start"]["count"] == 0
    families = {f.name: f for f in text_string_to_metric_families(call(table, "/metrics")[2].decode())}
    assert [s.value for s in families["gatewayd_recording"].samples] == [0]
    on = table_for(CONFIG.format(access="public"), tmp_path, Observer(MemoryStore(), RuntimeStatus(), registry=metrics.Registry()))
    call(on, "/hello")
    assert json.loads(call(on, "/latency")[2])["recording"] is True


@pytest.mark.parametrize("request_id", [b"plain-id", b'we"ird\\\x01\xff id'])
def test_error_bodies_are_what_json_dumps_writes(request_id):
    sent = []

    async def send(message):
        sent.append(message)

    ex = Exchange(scope(), None, send, perf_counter_ns(), request_id, True)
    message = 'no route matches GET /caf\u00e9/"x"\n\u2028'
    asyncio.run(ex.error(404, "not_found", message, ((b"x-extra", b"1"),)))
    body = sent[1]["body"]
    assert body == json.dumps({"error": "not_found", "message": message, "request_id": request_id.decode("latin-1")}).encode()
    assert dict(sent[0]["headers"])[b"content-length"] == b"%d" % len(body) and sent[0]["status"] == 404
