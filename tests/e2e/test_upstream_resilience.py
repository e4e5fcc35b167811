"""Upstream resilience through a running gatewayd and real demo upstreams: pools across reloads,
a target killed under load, active health checks bringing it back, retries and readiness.

Load here is bounded twice, like every load loop of the tests: in requests per client and in time.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import HOST, free_port

LOAD_MAX_S = 20.0
LOAD_MAX_REQUESTS = 5000  # per client


@dataclass
class Outcome:
    started: float  # monotonic
    ended: float
    status: int | None  # None: no response (the error says why)
    upstream: str | None = None  # the demo upstream's name, from its JSON answer
    error: str | None = None


class Load:
    """`clients` threads, each sending GET `path` over its own keep-alive connection, one request at
    a time, until stopped (or LOAD_MAX_REQUESTS each, or LOAD_MAX_S)."""

    def __init__(self, port: int, path: str, clients: int):
        self.port, self.path = port, path
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            for _ in range(LOAD_MAX_REQUESTS):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                out = Outcome(time.monotonic(), 0.0, None)
                try:
                    conn.request("GET", self.path)
                    r = conn.getresponse()
                    body = r.read()
                    out.status = r.status
                    if r.status == 200 and body.startswith(b"{"):
                        out.upstream = httpx.Response(200, content=body).json().get("upstream")
                except (OSError, http.client.HTTPException) as exc:
                    out.error = type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
                out.ended = time.monotonic()
                with self._lock:
                    self.outcomes.append(out)
        finally:
            conn.close()

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=LOAD_MAX_S)


def established_to(port: int) -> int:
    """TCP connections in state ESTABLISHED whose remote end is 127.0.0.1:`port` (the gateway's
    pooled connections to an upstream listening there), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state = fields[2], fields[3]
        if state == "01" and remote == f"0100007F:{port:04X}":
            count += 1
    return count


# --- pools across reloads ------------------------------------------------------------------------

RELOAD_CONFIG = """
version: 1
upstreams:
  up:
    targets: ["{url}"]
    timeouts: {{connect: 1s, response: {response}s}}
    max_connections: {max_connections}
routes:
  - match: {{path_prefix: /up, methods: [GET]}}
    upstream: up
"""

RELOAD_CLIENTS = 50
RELOAD_MAX_CONNECTIONS = 60  # a pool may open more connections than requests in flight (hyper races
# a new connection against waiting for a pooled one), up to its max_connections
RELOADS = 10
RELOAD_EVERY_S = 0.5


def _reload_under_load(gw, up, change) -> tuple[list[Outcome], list[int]]:
    """Rewrite the config every RELOAD_EVERY_S, RELOADS times, with `change(n)`'s settings, while
    RELOAD_CLIENTS clients send requests; the connections open to the upstream, sampled meanwhile."""
    samples = []
    with Load(gw.port, "/up/x", RELOAD_CLIENTS) as load:
        time.sleep(1.0)  # every client has its connection and the pool is warm
        for n in range(1, RELOADS + 1):
            gw.write_config(RELOAD_CONFIG.format(url=up.url, **change(n)))
            deadline = time.monotonic() + RELOAD_EVERY_S
            while time.monotonic() < deadline:
                samples.append(established_to(up.port))
                time.sleep(0.05)
        generation = gw.health()["generation"]
    assert generation >= RELOADS // 2, f"only {generation - 1} reloads happened"
    return load.outcomes, samples


def test_reloads_that_change_an_upstream_keep_its_pool(gatewayd, upstream):
    """Reloads that change an upstream's response timeout keep its pool (and so its connections):
    the gateway never holds more connections to the upstream than the pool's max_connections."""
    up = upstream("pooled")
    gw = gatewayd(RELOAD_CONFIG.format(url=up.url, response=10, max_connections=RELOAD_MAX_CONNECTIONS))
    outcomes, samples = _reload_under_load(gw, up, lambda n: {"response": 10 + n % 2, "max_connections": RELOAD_MAX_CONNECTIONS})
    failed = [o for o in outcomes if o.status != 200]
    assert len(outcomes) > 200 and not failed, failed[:5]
    assert max(samples) <= RELOAD_MAX_CONNECTIONS, f"connections to the upstream during reloads: {samples}"


def test_a_replaced_pool_closes_its_connections_once_idle(gatewayd, upstream):
    """Reloads that change the pool itself (max_connections) replace it; the old one closes its
    connections once its last request is done, so pools do not pile up, and the count is back to
    one pool's soon after the last reload. (A dropped pool's connections close within a few tenths
    of a second: its connects still under way finish first, so at a reload every 0.5 s up to three
    pools can overlap for a moment.)"""
    up = upstream("replaced")
    gw = gatewayd(RELOAD_CONFIG.format(url=up.url, response=10, max_connections=RELOAD_MAX_CONNECTIONS))
    outcomes, samples = _reload_under_load(gw, up, lambda n: {"response": 10, "max_connections": RELOAD_MAX_CONNECTIONS + n})
    failed = [o for o in outcomes if o.status != 200]
    assert len(outcomes) > 200 and not failed, failed[:5]
    limit = RELOAD_MAX_CONNECTIONS + RELOADS
    assert max(samples) <= 3 * limit, f"connections to the upstream during reloads: {samples}"
    deadline = time.monotonic() + 3.0
    while established_to(up.port) > limit and time.monotonic() < deadline:
        time.sleep(0.05)
    assert established_to(up.port) <= limit, "the retired pools' connections are closed"


# --- a target killed under load -------------------------------------------------------------------

TWO_TARGETS = """
version: 1
upstreams:
  pair:
    targets: ["{a}", "{b}"]
{extra}routes:
  - match: {{path_prefix: /pair, methods: [GET]}}
    upstream: pair
"""
KILL_CLIENTS = 4


def _kill_under_load(gw, victim, after_s: float = 1.0, then_s: float = 2.0) -> tuple[list[Outcome], float]:
    """KILL_CLIENTS clients on /pair; `victim` killed after `after_s`; load for `then_s` more."""
    with Load(gw.port, "/pair/x", KILL_CLIENTS) as load:
        time.sleep(after_s)
        killed_at = time.monotonic()
        victim.proc.kill()
        victim.proc.wait()
        time.sleep(then_s)
    return load.outcomes, killed_at


def test_a_killed_target_leaves_rotation(gatewayd, upstream):
    """With no health settings, a target that stops accepting connections leaves rotation after a
    few failures (passive ejection): the other target serves the rest of the run. (Retries off,
    so that the failures that eject it are seen.)"""
    a, b = upstream("a"), upstream("b")
    gw = gatewayd(TWO_TARGETS.format(a=a.url, b=b.url, extra="    retries: {attempts: 1}\n"))
    outcomes, killed_at = _kill_under_load(gw, b)
    before = [o for o in outcomes if o.ended < killed_at]
    after = [o for o in outcomes if o.started > killed_at]
    assert {o.upstream for o in before} == {"a", "b"}
    failed = [o for o in after if o.status != 200]
    print(f"\n{gw.engine}: {len(after)} requests after the kill, {len(failed)} failed")
    assert len(after) > 100
    assert len(failed) <= 5 + KILL_CLIENTS, f"{len(failed)} of {len(after)} failed after the kill"
    assert all(o.status in (502, 200) for o in after)
    last_second = [o for o in after if o.started > killed_at + 1.0]
    assert last_second and all(o.status == 200 and o.upstream == "a" for o in last_second)


def test_with_the_default_retries_a_killed_target_fails_no_get(gatewayd, upstream):
    """GETs that fail on the killed target (refused, or reset before their response) are retried
    on the other one: the clients see no failure at all."""
    a, b = upstream("a"), upstream("b")
    gw = gatewayd(TWO_TARGETS.format(a=a.url, b=b.url, extra=""))
    outcomes, killed_at = _kill_under_load(gw, b)
    after = [o for o in outcomes if o.started > killed_at]
    assert len(after) > 100
    assert [o for o in outcomes if o.status != 200] == []
    retried = re.search(r'gatewayd_upstream_retries_total\{result="sent",upstream="pair",worker="0"\} (\d+)', httpx.get(f"{gw.url}/metrics").text)
    assert retried and 1 <= int(retried.group(1)) <= 5 + KILL_CLIENTS, "retries until b was ejected"


DEAD_FIRST = """
version: 1
upstreams:
  pair:
    targets: ["http://127.0.0.1:{dead}", "{a}"]
{extra}routes:
  - match: {{path_prefix: /pair}}
    upstream: pair
"""


def test_only_idempotent_requests_without_a_body_are_retried(gatewayd, upstream):
    """Round robin sends the first request to the dead target, the second to the live one, and
    so on (passive ejection off, so the dead one stays in turn)."""
    a = upstream("a")
    gw = gatewayd(DEAD_FIRST.format(dead=free_port(), a=a.url, extra="    outlier: {consecutive_failures: 0}\n"))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        assert client.post("/pair/echo", content=b"body").status_code == 502, "a POST is not retried"
        assert client.get("/pair/x").json()["upstream"] == "a"
        assert client.get("/pair/x").json()["upstream"] == "a", "the GET sent to the dead target was retried"
        assert [client.delete("/pair/x").status_code for _ in range(2)] == [200, 200], "DELETE is idempotent"
        with_body = [client.put("/pair/echo", content=b"streamed").status_code for _ in range(2)]
        assert sorted(with_body) == [200, 502], "a PUT with a body is not retried"
        assert [client.put("/pair/x").status_code for _ in range(2)] == [200, 200], "one without is"
        assert [client.post("/pair/x").status_code for _ in range(2)] in ([200, 502], [502, 200]), "POST never is"


def test_the_retry_budget_stops_a_storm(gatewayd, upstream):
    """Budget 0: only the few retries any upstream gets (10 in 10 to 20 seconds); half the GETs go
    to the dead target first, so of 40 GETs 10 are retried and 10 fail."""
    a = upstream("a")
    extra = "    outlier: {consecutive_failures: 0}\n    retries: {budget: 0}\n"
    gw = gatewayd(DEAD_FIRST.format(dead=free_port(), a=a.url, extra=extra))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        statuses = [client.get("/pair/x").status_code for _ in range(40)]
    assert statuses.count(502) == 10 and statuses.count(200) == 30
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert 'gatewayd_upstream_retries_total{result="over_budget",upstream="pair",worker="0"} 10.0' in metrics


def test_per_try_and_overall_timeouts(gatewayd, upstream):
    """Each try waits per_try_timeout; a slow answer is tried on the other target, and the whole
    request never waits longer than the response timeout."""
    a, b = upstream("a"), upstream("b")
    extra = "    timeouts: {response: 2s}\n    retries: {per_try_timeout: 300ms}\n"
    gw = gatewayd(TWO_TARGETS.format(a=a.url, b=b.url, extra=extra))
    with httpx.Client(base_url=gw.url, timeout=10) as client:
        started = time.monotonic()
        r = client.get("/pair/slow/1000")
        elapsed = time.monotonic() - started
        assert r.status_code == 504 and r.json()["error"] == "upstream_timeout"
        assert 0.55 <= elapsed < 1.5, f"two tries of 300 ms, not the 2 s response timeout: {elapsed:.2f}s"
        assert client.get("/pair/slow/50").status_code == 200


# --- active health checks: a target that comes back -------------------------------------------------

CHECK_INTERVAL_S = 0.3


def restart(up) -> float:
    """Start the demo upstream `up` again on its port; the monotonic time it answered."""
    import subprocess
    import sys

    from conftest import ROOT, UPSTREAM_SCRIPT

    with open(up.log_path, "ab") as log:
        up.proc = subprocess.Popen(
            [sys.executable, "-S", str(UPSTREAM_SCRIPT), "--host", HOST, "--port", str(up.port), "--name", up.name],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{up.url}/ready", timeout=0.5)
            return time.monotonic()
        except httpx.TransportError:
            time.sleep(0.01)
    pytest.fail(f"upstream {up.name} did not come back:\n{up.log()}")


def target_states(gw, upstream: str = "pair") -> dict[str, str]:
    return {t["target"]: t["state"] for t in gw.health()["upstreams"][upstream]}


def wait_state(gw, url: str, state: str, timeout: float = 5.0) -> float:
    """The monotonic time /health was seen saying so (its answer's arrival)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target_states(gw)[url] == state:
            return time.monotonic()
        time.sleep(0.01)
    pytest.fail(f"{url} not {state} after {timeout}s: {gw.health()}; stderr:\n{gw.log()}")


def test_a_target_that_comes_back_is_in_rotation_within_one_check_interval(gatewayd, upstream):
    a, b = upstream("a"), upstream("b")
    extra = f"    health: {{path: /healthz, interval: {CHECK_INTERVAL_S * 1000:.0f}ms, timeout: 200ms}}\n"
    gw = gatewayd(TWO_TARGETS.format(a=a.url, b=b.url, extra=extra))
    assert target_states(gw) == {a.url: "healthy", b.url: "healthy"}
    with Load(gw.port, "/pair/x", 2) as load:
        time.sleep(0.5)
        killed_at = time.monotonic()
        b.proc.kill()
        b.proc.wait()
        out_at = wait_state(gw, b.url, "ejected")
        metrics = httpx.get(f"{gw.url}/metrics").text
        time.sleep(0.5)
        back_at = restart(b)
        healthy_at = wait_state(gw, b.url, "healthy")
        time.sleep(0.5)
    print(f"\n{gw.engine}: out of rotation {out_at - killed_at:.2f}s after the kill, back {healthy_at - back_at:.2f}s after it returned")
    assert f'gatewayd_upstream_target_state{{state="ejected",target="{b.url}",upstream="pair",worker="0"}} 1.0' in metrics
    assert healthy_at - back_at <= CHECK_INTERVAL_S + 0.5
    served_by_b = [o for o in load.outcomes if o.upstream == "b" and o.started > back_at]
    assert served_by_b and served_by_b[0].started - back_at <= CHECK_INTERVAL_S + 0.5
    failed = [o for o in load.outcomes if o.status != 200]
    assert all(killed_at <= o.started <= out_at for o in failed), "failures only until b was out"


# --- readiness --------------------------------------------------------------------------------------


def test_a_single_process_gateway_is_ready_once_it_serves(gatewayd, upstream):
    """(The multi-worker case is in test_workers.py.)"""
    a = upstream("a")
    gw = gatewayd(TWO_TARGETS.format(a=a.url, b=a.url.replace(str(a.port), str(free_port())), extra=""))
    r = httpx.get(f"{gw.url}/health?ready")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    health = gw.health()
    assert health["status"] == "ok"
    assert [t["state"] for t in health["upstreams"]["pair"]] == ["healthy", "healthy"]
