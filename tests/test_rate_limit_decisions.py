"""The rate limit's decisions, without a server: the host bucket against an exact reference, the
step's answers and headers, keys, bounded state, reloads, and several workers sharing one store on
a fake clock (property tests of the over-admission bound and of compliant clients)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.policies import CompileContext
from gatewayd.policies.bucket import IDLE_S, Budget, take_tokens
from gatewayd.policies.client_ip import CACHE_SIZE, client_ip
from gatewayd.policies.effects import RATE_LIMIT
from gatewayd.policies.lease import Leaser
from gatewayd.policies.rate_limit import REJECTED, Limiter, compile_policy, key_function, rate_limit_step
from gatewayd.runtime.kept import Generation
from gatewayd.store import MemoryStore
from gatewayd.store.base import BUCKET

T0 = 1_000_000.0  # a fake clock's start: a power-of-two spacing keeps the arithmetic below exact


class Clock:
    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Ex:
    """The part of an exchange a rate limit reads and writes."""

    def __init__(self, client="192.0.2.1", headers=(), route="r", consumer=None):
        self.scope = {"client": (client, 40000) if client else None, "headers": list(headers)}
        self.route_name = route
        self.consumer = consumer
        self.extra = None

    def add_headers(self, pairs) -> None:
        self.extra = list(pairs) if self.extra is None else self.extra + list(pairs)

    def header(self, name: bytes) -> bytes:
        return dict(self.extra)[name]


def limiter(spec, store=None, clock=None, **kwargs) -> tuple[Limiter, Leaser]:
    clock = clock or Clock()
    leaser = Leaser(clock=clock)
    return Limiter("p", spec, store if store is not None else MemoryStore(clock=clock), leaser=leaser, **kwargs), leaser


def stepper(spec, key="route", **kwargs):
    lim, leaser = limiter(spec, **kwargs)
    return rate_limit_step(lim, key_function(key, ()), REJECTED.labels("p")), lim, leaser


# --- the host bucket -------------------------------------------------------------------------------


def test_budget_numbers():
    assert Budget.of(100, 60.0, 0) == Budget(100 / 60, 1, 1, 1)
    assert Budget.of(1000, 1.0, 50) == Budget(1000.0, 50, 10, 59)
    assert Budget.of(250, 1.0).slice == 3  # ceil(2.5)
    one, two = Budget.of(200, 1.0, 50), Budget.of(200, 1.0, 50)
    assert one.bound(1.0, 1) == 200 + 51 + 2 * 2 and two.bound(1.0, 2) == 200 + 51 + 2 * (51 + 2)
    assert one.bound(1.0, 2, trust_belief=False) == 200 + 51 + 2 * 4


def reference_bucket(ops, rate: Fraction, capacity: int):
    """The bucket computed exactly: tokens accrue continuously, capped; whole tokens are taken."""
    level, last, out = Fraction(capacity), None, []
    for at, want in ops:
        if last is not None:
            level = min(Fraction(capacity), level + max(Fraction(0), at - last) * rate)
        last = at if last is None else max(last, at)
        granted = -want if want < 0 else min(want, int(level))
        if want < 0:
            level = min(Fraction(capacity), level - want)
            granted = want
        else:
            level -= granted
        out.append((granted, level))
    return out


@settings(max_examples=300, deadline=None)
@given(
    rate=st.sampled_from([Fraction(1, 4), Fraction(1), Fraction(5, 2), Fraction(16), Fraction(1000)]),
    capacity=st.integers(1, 20),
    ops=st.lists(st.tuples(st.integers(0, 400), st.integers(-5, 12)), max_size=40),
)
def test_take_tokens_matches_the_exact_bucket(rate, capacity, ops):
    # times in 1/64 s steps and dyadic rates: the floats are exact, so both must agree to the token
    timeline, at = [], Fraction(0)
    for step, want in ops:
        at += Fraction(step, 64)
        timeline.append((at, want))
    state = None
    for (at, want), (granted, level) in zip(timeline, reference_bucket(timeline, rate, capacity)):
        got, left, state, ttl = take_tokens(state, T0 + float(at), want, float(rate), float(capacity))
        assert (got, left) == (granted, float(level))
        assert (state is None) == (level == capacity)
        if state is not None:
            assert BUCKET.unpack(state) == (float(level), T0 + float(at)) and ttl == pytest.approx(
                float((capacity - level) / rate)
            )


# --- one worker's step -----------------------------------------------------------------------------


def test_admitted_then_refused_with_retry_after_and_both_fields():
    step, _, leaser = stepper({"limit": 6, "per": "1m", "burst": 3})
    now = T0
    fields = []
    for _ in range(3):
        ex = Ex()
        assert step(ex, now) is None
        fields.append((ex.header(b"ratelimit-policy"), ex.header(b"ratelimit")))
        leaser.flush(now)
    assert fields == [
        (b'"p";q=6;w=60', b'"p";r=2;t=10'), (b'"p";q=6;w=60', b'"p";r=1;t=10'), (b'"p";q=6;w=60', b'"p";r=0;t=10'),
    ]  # fmt: skip
    before = REJECTED.values.get(("p",), 0)
    answer = step(Ex(), now + 1)
    assert answer.status == 429 and answer.error == "rate_limited"
    headers = dict(answer.headers)
    assert headers[b"retry-after"] == b"9"  # the next token is due 10 s after the last lease was asked for
    assert headers[b"ratelimit"] == b'"p";r=0;t=9' and headers[b"ratelimit-policy"] == b'"p";q=6;w=60'
    assert REJECTED.values[("p",)] == before + 1
    leaser.flush(now + 1)
    assert step(Ex(), now + 10) is None  # the token is there


def test_policy_field_for_a_period_that_is_not_whole_seconds():
    _, lim, _ = stepper({"limit": 3, "per": "250ms"})
    assert lim.policy_header == (b"ratelimit-policy", b'"p";q=12;w=1')
    _, lim, _ = stepper({"limit": 10, "per": "1.5s"})
    assert lim.policy_header == (b"ratelimit-policy", b'"p";q=13;w=2')


def test_a_cold_key_and_a_burst_are_admitted_before_any_lease():
    step, lim, leaser = stepper({"limit": 1, "per": "1h", "burst": 5})
    assert [step(Ex(), T0) is None for _ in range(7)] == [True] * 5 + [False] * 2  # believed full: 5 on debt
    leaser.flush(T0)
    (share,) = lim.shares.values()
    assert share.credit == -5 + 5 + 0 and share.pending is False  # the lease repaid the debt, nothing more was there
    assert step(Ex(), T0 + 1) is not None


def test_debt_is_limited_to_a_slice_when_beliefs_are_not_trusted():
    step, _, leaser = stepper({"limit": 1, "per": "1h", "burst": 5}, trust_belief=False)
    assert [step(Ex(), T0) is None for _ in range(3)] == [True, False, False]
    leaser.flush(T0)  # repays one, holds one: one on credit, one on debt, then wait for the lease
    assert [step(Ex(), T0) is None for _ in range(3)] == [True, True, False]


def test_consumer_route_header_and_compound_keys():
    spec = {"limit": 1, "per": "1h"}
    consumer, _, _ = stepper(spec, key="consumer")
    assert consumer(Ex(consumer="acme"), T0) is None and consumer(Ex(consumer="acme"), T0) is not None
    assert consumer(Ex(consumer="other"), T0) is None
    route, _, _ = stepper(spec, key="route")
    assert (
        route(Ex(route="a"), T0) is None and route(Ex(route="b"), T0) is None and route(Ex(route="a"), T0) is not None
    )
    header, lim, _ = stepper(spec, key="header:X-Tenant")
    assert header(Ex(headers=[(b"x-tenant", b"t1")]), T0) is None
    assert header(Ex(headers=[(b"x-tenant", b"t2")]), T0) is None
    assert header(Ex(), T0) is None and header(Ex(), T0) is not None  # a missing header is one value
    header(Ex(headers=[(b"x-tenant", b"a"), (b"x-tenant", b"b")]), T0)
    assert set(lim.shares) == {b"t1", b"t2", None, b"a,b"}
    long_one, long_two = b"x" * 8000 + b"1", b"x" * 8000 + b"2"
    assert header(Ex(headers=[(b"x-tenant", long_one)]), T0) is None
    assert header(Ex(headers=[(b"x-tenant", long_two)]), T0) is None
    assert header(Ex(headers=[(b"x-tenant", long_one)]), T0) is not None
    assert max(len(k) for k in lim.shares if k is not None) <= 64  # long values are kept as digests
    both, lim, _ = stepper(spec, key=["consumer", "header:X-Tenant"])
    assert both(Ex(consumer="acme", headers=[(b"x-tenant", b"t1")]), T0) is None
    assert both(Ex(consumer="acme", headers=[(b"x-tenant", b"t2")]), T0) is None
    assert both(Ex(consumer="acme", headers=[(b"x-tenant", b"t1")]), T0) is not None
    assert set(lim.shares) == {("acme", b"t1"), ("acme", b"t2")}


def test_host_keys_are_the_same_in_every_worker_and_hide_the_value():
    spec = {"limit": 5, "per": "1s", "key": "header:Authorization"}
    one, _ = limiter(spec)
    two, _ = limiter(dict(reversed(spec.items())))
    key = one.host_key(b"Bearer secret-token")
    assert key == two.host_key(b"Bearer secret-token") and b"secret" not in key and key.startswith(b"ratelimit/p/")
    assert key != one.host_key(b"Bearer other") and key != limiter({**spec, "limit": 6})[0].host_key(
        b"Bearer secret-token"
    )


# --- client_ip -------------------------------------------------------------------------------------


def networks(*entries):
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def test_client_ip_is_the_peer_without_trusted_proxies():
    key = client_ip(())
    assert key(Ex(client="192.0.2.1", headers=[(b"x-forwarded-for", b"203.0.113.9")])) == "192.0.2.1"
    assert key(Ex(client=None)) == ""


def test_client_ip_walks_x_forwarded_for_from_the_right_past_trusted_proxies():
    key = client_ip(networks("10.0.0.0/8", "127.0.0.1"))
    xff = lambda *values: [(b"x-forwarded-for", v) for v in values]
    assert key(Ex(client="127.0.0.1", headers=xff(b"203.0.113.9"))) == "203.0.113.9"
    assert key(Ex(client="127.0.0.1", headers=xff(b"6.6.6.6, 203.0.113.9, 10.1.2.3"))) == "203.0.113.9"
    assert key(Ex(client="127.0.0.1", headers=xff(b"6.6.6.6", b"203.0.113.9 , 10.1.2.3"))) == "203.0.113.9"
    assert key(Ex(client="127.0.0.1", headers=xff(b"10.9.9.9, 10.1.2.3"))) == "10.9.9.9"  # all trusted: the farthest
    assert key(Ex(client="127.0.0.1")) == "127.0.0.1"  # no header
    # an untrusted peer's header is ignored
    assert key(Ex(client="192.0.2.1", headers=xff(b"203.0.113.9"))) == "192.0.2.1"
    assert key(Ex(client="::ffff:127.0.0.1", headers=xff(b"[2001:DB8::1]:443"))) == "2001:db8::1"
    assert key(Ex(client="127.0.0.1", headers=xff(b"198.51.100.7:5000, ,"))) == "198.51.100.7"
    assert key(Ex(client="127.0.0.1", headers=xff(b"unknown"))) == "unknown"
    assert len(key(Ex(client="127.0.0.1", headers=xff(b"u" * 5000)))) == 33


def test_client_ip_cache_is_bounded():
    key = client_ip(networks("127.0.0.1"))
    for i in range(CACHE_SIZE + 500):
        key(Ex(client="127.0.0.1", headers=[(b"x-forwarded-for", b"198.51.%d.%d" % (i // 256, i % 256))]))
    assert len(key.cache) == CACHE_SIZE


# --- bounded state, reloads ------------------------------------------------------------------------


def test_a_flood_of_keys_keeps_the_table_bounded():
    step, lim, leaser = stepper({"limit": 10, "per": "1s"}, key="header:X-Key", max_keys=100)
    for i in range(5000):
        step(Ex(headers=[(b"x-key", b"%d" % i)]), T0 + i * 1e-4)
        if i % 10 == 0:
            leaser.flush(T0 + i * 1e-4)
    assert len(lim.shares) == 100


def test_idle_keys_are_settled_then_dropped_as_new_keys_come():
    clock = Clock()
    store = MemoryStore(clock=clock)
    step, lim, leaser = stepper({"limit": 1, "per": "1h", "burst": 50}, key="header:X-Key", store=store, clock=clock)
    for i in range(10):
        step(Ex(headers=[(b"x-key", b"old-%d" % i)]), clock.now)
    leaser.flush(clock.now)
    assert all(s.credit == 1 for s in lim.shares.values())  # each repaid its request and holds one token
    old_keys = [lim.host_key(b"old-%d" % i) for i in range(10)]
    clock.now += IDLE_S
    for i in range(20):  # each new key tidies two old ones: their token is given back, then they go
        step(Ex(headers=[(b"x-key", b"new-%d" % i)]), clock.now)
        leaser.flush(clock.now)
    assert sorted(lim.shares) == sorted(b"new-%d" % i for i in range(20))
    for key in old_keys:
        tokens, _ = BUCKET.unpack(store.get(key))
        assert tokens == pytest.approx(49, abs=0.01)  # 50, less the one request admitted


def test_compile_keeps_the_limiter_while_its_definition_is_unchanged():
    live: dict = {}
    spec = {"limit": 5, "per": "1s", "key": "route"}
    first = Generation(live)
    ctx = CompileContext(kept=first)
    ((phase, _),) = compile_policy(spec, ctx, "p").steps
    assert phase == RATE_LIMIT
    live.update(first.held)
    again = Generation(live)
    compile_policy(dict(spec), CompileContext(kept=again), "p")
    changed = Generation(live)
    compile_policy({**spec, "limit": 6}, CompileContext(kept=changed), "p")
    (kept,) = first.held.values()
    assert list(again.held.values()) == [kept] and list(changed.held.values()) != [kept]


def test_per_must_be_more_than_zero(tmp_path):
    text = b"""version: 1
policies:
  never:
    rate_limit: {limit: 5, per: 0s}
routes:
  - match: {path: /x}
    policies: [never]
    respond: {status: 204}
"""
    with pytest.raises(ConfigError) as err:
        load_bytes(text, str(tmp_path / "gateway.yaml"))
    assert "gateway.yaml:4:" in str(err.value) and "per must be more than 0s" in str(err.value)


# --- the leaser on an event loop -------------------------------------------------------------------


def test_leaser_task_leases_soon_repays_debt_when_due_and_sleeps_when_idle():
    async def run():
        store = MemoryStore(clock=time.time)
        lim, leaser = limiter({"limit": 20, "per": "1s", "burst": 3}, store=store, clock=time.time)
        step = rate_limit_step(lim, key_function("route", ()), REJECTED.labels("p"))
        store.draw([(lim.host_key("r"), 3, 20.0, 3.0)])  # another worker emptied the bucket
        flushes = []
        flush = leaser.flush
        leaser.flush = lambda now: flushes.append(now) or flush(now)
        lim.start()
        assert [step(Ex(), time.time()) is None for _ in range(4)] == [True, True, True, False]  # believed full
        await asyncio.sleep(0.01)
        (share,) = lim.shares.values()
        assert len(flushes) == 1 and share.credit == -3 and not share.pending  # owed: the bucket was empty
        await asyncio.sleep(0.25)  # a token every 50 ms repays the debt, leased for when each is due
        assert share.credit == 0 and 4 <= len(flushes) <= 10, flushes  # when due, not polling (a loaded machine adds a few)
        idle = len(flushes)
        await asyncio.sleep(0.1)
        assert len(flushes) == idle  # nothing asked, nothing owed: asleep
        lim.close()
        await asyncio.sleep(0.01)
        assert leaser._task.done()

    asyncio.run(run())


class BrokenStore(MemoryStore):
    def draw(self, items):
        raise OSError("no room")


def test_a_failing_store_leaves_each_worker_limiting_alone(caplog):
    clock = Clock()
    step, _, leaser = stepper({"limit": 1, "per": "1h", "burst": 2}, store=BrokenStore(clock=clock), clock=clock)
    with caplog.at_level(logging.ERROR, logger="gatewayd.ratelimit"):
        answers = []
        for _ in range(4):
            answers.append(step(Ex(), clock.now) is None)
            leaser.flush(clock.now)
    assert answers == [True, True, False, False] and leaser.failing
    assert sum("refused rate-limit leases" in r.message for r in caplog.records) == 1


# --- several workers sharing one store, on a fake clock --------------------------------------------


class Host:
    """`workers` workers (each its own Limiter and Leaser) sharing one MemoryStore on a fake clock;
    a worker's leaser runs `delay()` seconds after it is asked, or after an owed token is due."""

    def __init__(self, spec: dict, workers: int, delay, trust_belief: bool = True):
        self.clock = Clock()
        store = MemoryStore(clock=self.clock)
        self.delay = delay
        self.workers = []
        for _ in range(workers):
            lim, leaser = limiter(spec, store=store, clock=self.clock, trust_belief=trust_belief)
            self.workers.append([leaser, rate_limit_step(lim, key_function("route", ()), REJECTED.labels("p")), None])

    def _advance(self, t: float) -> None:
        while True:
            due = [w for w in self.workers if w[2] is not None and w[2] <= t]
            if not due:
                break
            worker = min(due, key=lambda w: w[2])
            leaser, at = worker[0], worker[2]
            self.clock.now = at
            leaser.due(at)
            leaser.flush(at)
            worker[2] = max(at, leaser.owing[0][0]) + self.delay() if leaser.owing else None
        self.clock.now = t

    def request(self, worker: int, t: float) -> bool:
        self._advance(t)
        w = self.workers[worker]
        admitted = w[1](Ex(), t) is None
        if w[0].queue and w[2] is None:
            w[2] = t + self.delay()
        return admitted


def ideal(times, rate: Fraction, capacity: int) -> list[bool]:
    """One exact token bucket deciding every request: the slow, obviously correct reference."""
    level, last, out = Fraction(capacity), None, []
    for t in times:
        t = Fraction(t)
        if last is not None:
            level = min(Fraction(capacity), level + (t - last) * rate)
        last = t
        out.append(level >= 1)
        if level >= 1:
            level -= 1
    return out


POLICIES = [(1, 1, 0), (10, 1, 0), (10, 1, 5), (100, 1, 10), (1000, 1, 0), (1000, 1, 100), (5, 60, 5)]


@settings(max_examples=60, deadline=None)
@given(
    policy=st.sampled_from(POLICIES), workers=st.integers(1, 4), trust=st.booleans(), seed=st.integers(0, 2**32),
    load=st.sampled_from([0.5, 1.0, 3.0, 10.0]), bursty=st.booleans(),
)  # fmt: skip
def test_no_window_admits_more_than_the_bound(policy, workers, trust, seed, load, bursty):
    limit, per, burst = policy
    rnd = random.Random(seed)
    budget = Budget.of(limit, per, burst)
    host = Host({"limit": limit, "per": f"{per}s", "burst": burst}, workers, lambda: rnd.uniform(1e-4, 3e-3), trust)
    t, admitted = T0, []
    for _ in range(400):
        t += rnd.expovariate(load * budget.rate) if not bursty or rnd.random() < 0.1 else 1e-5
        if host.request(rnd.randrange(workers), t):
            admitted.append(t)
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= budget.bound(admitted[j] - admitted[i], workers, trust) + 1e-9


@settings(max_examples=60, deadline=None)
@given(policy=st.sampled_from(POLICIES), seed=st.integers(0, 2**32), delay=st.sampled_from([1e-4, 1e-3, 3e-3]))
def test_one_worker_admits_every_request_of_a_compliant_client(policy, seed, delay):
    """Bursts up to the bucket, spaced out as the limit allows: the exact bucket admits them all,
    and so does a worker whose leases take `delay` each (in flight while the burst comes)."""
    limit, per, burst = policy
    rnd = random.Random(seed)
    rate, capacity = Fraction(limit, per), max(burst, 1)
    times, t = [], T0
    while len(times) < 300:
        n = rnd.randint(1, capacity)
        for _ in range(n):
            times.append(t)
            t += rnd.random() * 2e-4
        t += float(n / rate) * (1 + rnd.random() * 0.3) + 2 * delay
    assert all(ideal(times, rate, capacity))
    host = Host({"limit": limit, "per": f"{per}s", "burst": burst}, 1, lambda: delay)
    assert all(host.request(0, t) for t in times)


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_steady_overload_admits_the_limit(workers):
    """Three times the limit for 20 s (on the fake clock), spread over the workers: within 1% of limit×T + burst."""
    rnd = random.Random(workers)
    host = Host({"limit": 200, "per": "1s", "burst": 50}, workers, lambda: rnd.uniform(1e-4, 2e-3))
    t, admitted = T0, 0
    for i in range(12_000):
        t = T0 + i / 600
        admitted += host.request(rnd.randrange(workers), t)
    expected = 200 * (t - T0) + 50
    assert abs(admitted - expected) <= 0.01 * expected, (admitted, expected)
