"""Upstream pools across reloads, without a network: which settings keep a pool, and when a
retired pool lets its connections go."""

from __future__ import annotations

from dataclasses import replace

from gatewayd.config.model import UpstreamConfig
from gatewayd.upstream.pool import UpstreamRegistry

BASE = UpstreamConfig("up", ("http://127.0.0.1:9001",), "round_robin", 1.0, 30.0, 100)


def test_equal_settings_keep_the_upstream():
    registry = UpstreamRegistry()
    live, retired = registry.resolve({"up": BASE})
    registry.commit(live)
    again, retired = registry.resolve({"up": replace(BASE)})
    assert again["up"] is live["up"] and retired == []


def test_settings_outside_the_pool_keep_the_pool():
    registry = UpstreamRegistry()
    live, _ = registry.resolve({"up": BASE})
    registry.commit(live)
    for changed in (
        replace(BASE, response_timeout=5.0),
        replace(BASE, balance="least_requests"),
        replace(BASE, targets=("http://127.0.0.1:9001", "http://127.0.0.1:9002")),
    ):
        new, retired = registry.resolve({"up": changed})
        assert new["up"] is not live["up"] and new["up"].pool is live["up"].pool and retired == []


def test_pool_settings_retire_the_pool():
    registry = UpstreamRegistry()
    live, _ = registry.resolve({"up": BASE})
    registry.commit(live)
    for changed in (replace(BASE, max_connections=10), replace(BASE, connect_timeout=2.0)):
        new, retired = registry.resolve({"up": changed})
        assert new["up"].pool is not live["up"].pool and retired == [live["up"].pool]
    _, retired = registry.resolve({})
    assert retired == [live["up"].pool]


def test_a_retired_pool_closes_when_its_last_request_is_done():
    registry = UpstreamRegistry()
    live, _ = registry.resolve({"up": BASE})
    pool = live["up"].pool
    pool.acquire()
    pool.retire()
    assert not pool.h1.closing, "kept while a request uses it"
    pool.acquire()
    pool.release()
    assert not pool.h1.closing
    pool.release()
    assert pool.h1.closing, "closed (its idle connections, and each busy one when it comes back) with the last release"


def test_an_idle_pool_closes_when_retired():
    registry = UpstreamRegistry()
    live, _ = registry.resolve({"up": BASE})
    pool = live["up"].pool
    pool.acquire()
    pool.release()
    pool.retire()
    assert pool.h1.closing


def test_only_targets_in_service_are_in_the_metrics():
    from gatewayd.observe.metrics import TARGET_STATE

    registry = UpstreamRegistry()
    two = replace(BASE, name="metered", targets=("http://127.0.0.1:9001", "http://127.0.0.1:9002"))
    live, _ = registry.resolve({"metered": two})
    assert not any(k[0] == "metered" for k in TARGET_STATE.values), "not before the config is in service"
    registry.commit(live)
    assert {k[1] for k in TARGET_STATE.values if k[0] == "metered"} == set(two.targets)
    fewer, _ = registry.resolve({"metered": replace(two, targets=two.targets[:1])})
    registry.commit(fewer)
    assert {k[1] for k in TARGET_STATE.values if k[0] == "metered"} == {"http://127.0.0.1:9001"}
    assert fewer["metered"].rotation.members[0] is live["metered"].rotation.members[0], "its state is kept"
