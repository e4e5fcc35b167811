"""Several gatewayd processes sharing one real redis-server: one rate limit for all of them under a
steady overload (h2load against each), Redis killed and started again under load (fail_open and
fail_closed, /health, no slow request, leases resuming), a stopped Redis, /latency?scope=cluster,
and a QUIC session ticket used once across two gateways."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time

import httpx
import pytest
from test_http3 import h3_session, recorder, run, start, tls_files, unique  # noqa: F401 - fixtures too
from test_rate_limit import h2load

LIMIT = 200  # per second, for all the gateways together
BURST = 50
RATE_PER_CLIENT = 40  # requests a second per h2load connection
CLIENTS = 6  # per gateway: 3 x 6 x 40 = 720 a second, 3.6 times the limit
SECONDS = 5
ACCURACY = 0.03

SHARED = """
version: 1
cluster:
  redis: {{url: "{url}", timeout: {timeout}}}
  on_error: fail_open
policies:
  shared: {{rate_limit: {{limit: {limit}, per: 1s, burst: {burst}, key: route}}}}
  closed: {{rate_limit: {{limit: {limit}, per: 1s, burst: {burst}, key: route, on_error: fail_closed}}}}
routes:
  - {{name: limited, match: {{path: /limited}}, policies: [shared], respond: {{json: {{ok: true}}}}}}
  - {{name: closed, match: {{path: /closed}}, policies: [closed], respond: {{json: {{ok: true}}}}}}
  - {{name: free, match: {{path: /free}}, respond: {{json: {{ok: true}}}}}}
"""


def shared(url: str, timeout: str = "250ms", limit: int = LIMIT, burst: int = BURST) -> str:
    """A timeout a loaded test machine meets (the fault tests show that requests do not wait for it)."""
    return SHARED.format(url=url, timeout=timeout, limit=limit, burst=burst)


def load(url: str) -> tuple[int, int, float]:
    return h2load(url, CLIENTS, RATE_PER_CLIENT, SECONDS)


def test_three_gateways_admit_one_limit_under_a_steady_overload(gatewayd, redis_server):
    redis = redis_server()
    gateways = [gatewayd(shared(redis.url)) for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(load, [f"{gw.url}/limited" for gw in gateways]))
    seconds = max(r[2] for r in results)  # h2load's own times: from its first request to its last answer
    ok = sum(r[0] for r in results)
    offered = sum(r[0] + r[1] for r in results)
    assert offered / seconds >= 2.5 * LIMIT, "the load was not an overload"  # 3.6x paced; less on a busy machine
    assert all(r[0] > 0 for r in results), results  # each gateway admitted its share
    expected = LIMIT * seconds + BURST
    assert abs(ok - expected) <= ACCURACY * expected, f"admitted {ok}, expected {expected:.0f} in {seconds:.2f} s: {results}"
    for gw in gateways:
        assert gw.health()["cluster"]["redis"] == "up"


class Load:
    """Requests from `threads` threads to `paths` in turn until stopped (bounded: at most `limit_s`):
    every (path, status, seconds, JSON error code or None)."""

    def __init__(self, urls: list[str], paths: list[str], threads: int = 4, limit_s: float = 30.0):
        self.results: list[tuple[str, int, float, str | None]] = []
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit_s
        self._threads = [
            threading.Thread(target=self._run, args=(urls[i % len(urls)], paths), daemon=True) for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def _run(self, url: str, paths: list[str]) -> None:
        with httpx.Client(base_url=url, timeout=5.0) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                path = paths[i % len(paths)]
                i += 1
                t = time.perf_counter()
                try:
                    r = client.get(path)
                except httpx.TransportError as exc:
                    self.results.append((path, 0, time.perf_counter() - t, repr(exc)))
                    continue
                error = r.json().get("error") if r.status_code >= 400 else None
                self.results.append((path, r.status_code, time.perf_counter() - t, error))
                time.sleep(0.002)

    def stop(self) -> list[tuple[str, int, float, str | None]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        return list(self.results)


def leases(redis) -> int:
    """How many lease scripts `redis` has run (the buckets themselves expire as soon as they are full)."""
    found = re.search(r"cmdstat_evalsha:calls=(\d+)", redis.cli("info", "commandstats"))
    return int(found.group(1)) if found else 0


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    pytest.fail(f"{what}: not within {timeout}s")


def test_redis_killed_and_started_again_under_load(gatewayd, redis_server):
    """fail_open goes on deciding from the host; fail_closed answers 503 with the JSON error; no
    request is slow, no worker dies; /health says down then up; leases come from Redis again."""
    redis = redis_server()
    gateways = [gatewayd(shared(redis.url, timeout="100ms", limit=2000, burst=100)) for _ in range(2)]
    load = Load([gw.url for gw in gateways], ["/limited", "/closed", "/free"])
    try:
        time.sleep(1.0)
        assert leases(redis) > 0
        killed_at = time.time()
        redis.kill()
        downs = [wait_for(lambda gw=gw: (c := gw.health()["cluster"])["redis"] == "down" and c, "down") for gw in gateways]
        assert all(killed_at - 0.5 <= d["since"] <= time.time() for d in downs), (killed_at, downs)
        time.sleep(1.5)
        during = len(load.results)
        redis.start()
        ups = [wait_for(lambda gw=gw: (c := gw.health()["cluster"])["redis"] == "up" and c, "up") for gw in gateways]
        assert all(u["since"] > killed_at for u in ups)
        wait_for(lambda: leases(redis) > 0, "leases from the new Redis")
    finally:
        results = load.stop()
    assert len(results) > during > 100
    by_path: dict[str, set] = {}
    for path, status, _, error in results:
        by_path.setdefault(path, set()).add((status, error))
    assert by_path["/free"] == {(200, None)}
    assert by_path["/limited"] <= {(200, None), (429, "rate_limited")}
    assert (503, "rate_limit_unavailable") in by_path["/closed"]
    assert by_path["/closed"] <= {(200, None), (429, "rate_limited"), (503, "rate_limit_unavailable")}
    slowest = max(seconds for _, _, seconds, _ in results)
    assert slowest < 1.0, f"a request took {slowest:.3f} s"  # none waited on Redis (a loaded machine's margin)
    for gw in gateways:
        assert gw.proc.poll() is None and "Traceback" not in gw.log(), gw.log()[-3000:]
        assert "answers again: up" in gw.log()


def test_a_stopped_redis_delays_no_request_beyond_the_timeout(gatewayd, redis_server):
    redis = redis_server()
    gw = gatewayd(shared(redis.url, timeout="100ms"))
    with httpx.Client(base_url=gw.url, timeout=5.0) as client:
        assert client.get("/limited").status_code == 200
        redis.pause()
        try:
            took = []
            for path in ["/limited", "/closed", "/free"] * 20:
                t = time.perf_counter()
                r = client.get(path)
                took.append(time.perf_counter() - t)
                assert r.status_code in (200, 429, 503), r.text
                time.sleep(0.005)
            assert max(took) < 0.5, max(took)
            assert gw.health()["cluster"]["redis"] == "down"
            r = client.get("/latency", params={"scope": "cluster"})
            assert r.status_code == 503 and r.json()["error"] == "cluster_unavailable"
        finally:
            redis.resume()
        wait_for(lambda: gw.health()["cluster"]["redis"] == "up", "up again")


def test_latency_scope_cluster_merges_every_gateway(gatewayd, redis_server):
    redis = redis_server()
    one, two = (gatewayd(shared(redis.url)) for _ in range(2))
    for gw, n in ((one, 7), (two, 5)):
        with httpx.Client(base_url=gw.url) as client:
            for _ in range(n):
                assert client.get("/free").status_code == 200

    def merged():
        r = httpx.get(f"{one.url}/latency", params={"scope": "cluster"})
        assert r.status_code == 200, r.text
        doc = r.json()
        return doc if doc["routes"].get("free", {}).get("since_start", {}).get("count") == 12 else None

    doc = wait_for(merged, "both gateways' requests in the cluster's figures")
    assert doc["scope"] == "cluster" and doc["instances"] == 2 and doc["workers"] == 2
    own = httpx.get(f"{one.url}/latency", params={"format": "json"}).json()
    assert own["routes"]["free"]["since_start"]["count"] == 7 and "scope" not in own


QUIC_CLUSTER = """
cluster:
  redis: {{url: "{url}", timeout: 250ms}}
"""


def test_a_0rtt_ticket_is_used_once_across_gateways(gatewayd, tls_files, upstream, recorder, redis_server):  # noqa: F811
    """A ticket from gateway A resumes with 0-RTT at gateway B (it is in Redis); the same ticket
    again, at A, gets a full handshake: B took it."""
    redis = redis_server()
    demo = upstream("demo")
    a, b = (start(gatewayd, tls_files, demo.url, recorder, tail=QUIC_CLUSTER.format(url=redis.url)) for _ in range(2))
    _, handshake, ticket, _, _ = run(h3_session(a.port, a.ca, [("GET", "/static")]))
    assert not handshake.session_resumed and ticket is not None
    wait_for(lambda: "gatewayd/tickets/" in redis.cli("--scan", "--pattern", "gatewayd/tickets/*"), "the ticket in Redis")
    first = unique("cluster-0rtt")
    responses, handshake, _, _, _ = run(h3_session(b.port, b.ca, [("GET", first)], ticket))
    assert handshake.session_resumed and handshake.early_data_accepted
    assert responses[0].status == 200 and responses[0].json()["headers"]["early-data"] == "1"
    again = unique("cluster-again")
    responses, handshake, _, _, _ = run(h3_session(a.port, a.ca, [("GET", again)], ticket))
    assert not handshake.session_resumed and not handshake.early_data_accepted
    assert responses[0].status == 200 and "early-data" not in responses[0].json()["headers"]
