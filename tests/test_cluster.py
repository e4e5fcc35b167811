"""Gateways sharing state through Redis, in one process against real redis-server processes: the
bucket script against `take_tokens`, leases shared by several leasers, `on_error` when Redis is
killed or stopped, the link's state table and backoff, QUIC tickets taken once, the config's checks,
and a Redis Cluster of three masters."""

from __future__ import annotations

import asyncio
import datetime
import os
import time
from dataclasses import replace

import pytest
import redis
from aioquic.tls import CipherSuite, SessionTicket

from gatewayd.cluster import same_redis
from gatewayd.cluster.buckets import KEY_PREFIX, MAX_KEYS_PER_CALL, ClusterLeaser, bucket_key, calls
from gatewayd.cluster.clients import sentinel_address, sentinel_problems, url_problems
from gatewayd.cluster.link import BACKOFF_S, MAX_BACKOFF_S, RedisLink, Unavailable, after_call
from gatewayd.cluster.sketches import Sketches
from gatewayd.cluster.tickets import SharedTickets
from gatewayd.config.model import ClusterConfig
from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes
from gatewayd.observe.observer import LATENCY_PREFIX, encode
from gatewayd.policies.rate_limit import REJECTED, Limiter, key_function, rate_limit_step
from gatewayd.server.quic.tickets import TicketStore
from gatewayd.store import MemoryStore
from gatewayd.store.base import take_tokens
from redisproc import SERVICE, RedisClusterNodes, SentinelGroup

TIMEOUT_S = 0.05


class Observed:
    """The part of an `Observer` that `Sketches` reads: this worker's document in its host store."""

    def __init__(self):
        self.store = MemoryStore()
        doc = {"worker": 0, "pid": os.getpid(), "recording": True, "latency": {}}
        self.store.put(LATENCY_PREFIX + b"%d" % os.getpid(), encode(doc))

    def refresh(self) -> None:
        pass


class Ex:
    def __init__(self):
        self.scope = {"client": ("192.0.2.1", 40000), "headers": []}
        self.route_name = "r"
        self.consumer = None
        self.extra = None

    def add_headers(self, pairs) -> None:
        self.extra = list(pairs)


async def member(url: str, spec: dict, on_error: str = "fail_open", mode: str = "single", timeout: float = TIMEOUT_S, sentinels=()):
    """One gateway's part, connected: its link, leaser, limiter (on a host store of its own) and request step."""
    link = RedisLink(url, timeout, 4, mode, tuple(sentinels))
    link.start()
    await link.connect()
    leaser = ClusterLeaser(link)
    limiter = Limiter("p", spec, MemoryStore(clock=time.time), leaser=leaser, on_error=on_error, link=link)
    limiter.start()
    return link, limiter, rate_limit_step(limiter, key_function("route", ()), REJECTED.labels("p"))


async def close(*members) -> None:
    for link, limiter, _ in members:
        limiter.close()
        await link.close()


# --- pure parts ------------------------------------------------------------------------------------


def test_link_state_table():
    up = after_call(True, 10.0, BACKOFF_S, True, 20.0)
    assert (up.up, up.since) == (True, 10.0)
    down = after_call(True, 10.0, BACKOFF_S, False, 20.0)
    assert (down.up, down.since, down.backoff) == (False, 20.0, BACKOFF_S)
    waits = []
    t = down
    for _ in range(10):
        t = after_call(False, t.since, t.backoff, False, 30.0)
        waits.append(t.backoff)
    assert t.since == 20.0 and waits[0] == 2 * BACKOFF_S and waits[-1] == MAX_BACKOFF_S
    back = after_call(False, 20.0, MAX_BACKOFF_S, True, 40.0)
    assert (back.up, back.since, back.backoff) == (True, 40.0, BACKOFF_S)


@pytest.mark.parametrize(
    "url, mode, problem",
    [
        ("redis://127.0.0.1:6379/0", "single", None),
        ("rediss://:secret@redis.internal:6380/2", "single", None),
        ("unix:///run/redis.sock", "single", None),
        ("redis://10.0.0.1:6379", "cluster", None),
        ("redis://h:99999/0", "single", "Port out of range"),
        ("redis://h:x/0", "single", "not a Redis URL"),
        ("redis:///0", "single", "no host"),
        ("redis://h/abc", "single", "must be a number"),
        ("redis://h/3", "cluster", "only database 0"),
        ("unix:///run/redis.sock", "cluster", "over TCP"),
        ("unix://", "single", "names a socket file"),
        ("redis://:secret@mymaster/2", "sentinel", None),
        ("rediss://mymaster", "sentinel", None),
        ("redis://mymaster:6379/0", "sentinel", "no port"),
        ("unix:///run/redis.sock", "sentinel", "not a socket"),
    ],
)
def test_url_problems(url, mode, problem):
    found = url_problems(url, mode)
    assert (found == []) if problem is None else (len(found) == 1 and problem in found[0]), found


def test_sentinel_addresses():
    assert sentinel_address("10.0.0.1:26380") == ("10.0.0.1", 26380)
    assert sentinel_address("sentinel-a.internal") == ("sentinel-a.internal", 26379)
    assert sentinel_address("[::1]:5000") == ("::1", 5000)
    assert sentinel_problems("h:26379") == [] and "out of range" in sentinel_problems("h:70000")[0]


def test_calls_split_large_batches_and_group_by_slot():
    items = [(b"k%d" % i, 1, 1.0, 1.0) for i in range(MAX_KEYS_PER_CALL + 3)]
    assert [len(c) for c in calls(items)] == [MAX_KEYS_PER_CALL, 3]
    grouped = calls(items[:6], slot_of=lambda key: int(key[1:]) % 2)
    assert grouped == [[0, 2, 4], [1, 3, 5]]


def test_safe_url_hides_the_password():
    assert RedisLink("rediss://user:secret@h:6380/0", 1, 1).safe_url == "rediss://user:***@h:6380/0"
    assert RedisLink("redis://:secret@h/0", 1, 1).safe_url == "redis://:***@h/0"
    assert RedisLink("redis://h:6379/0", 1, 1).safe_url == "redis://h:6379/0"


# --- the bucket script ----------------------------------------------------------------------------


def test_the_script_does_take_tokens_arithmetic(redis_server):
    server = redis_server()

    async def run():
        link = RedisLink(server.url, 1.0, 2)
        link.start()
        leaser = ClusterLeaser(link)
        rate, capacity = 1e-6, 8.0  # no refill to speak of: the answers are exact
        wants = [3, 4, 5, -2, 9, 1, -20]
        got = await link.call(lambda c: leaser._draw_redis(c, [(b"t/exact", w, rate, capacity) for w in wants]))
        state, expected = None, []
        for w in wants:
            granted, left, state, _ = take_tokens(state, 0.0, w, rate, capacity)
            expected.append((granted, left))
        assert [(g, round(left, 3)) for g, left in got] == [(g, round(left, 3)) for g, left in expected]
        client = redis.Redis(port=server.port)
        assert client.exists(bucket_key(b"t/exact")) == 0  # full again (after the -20): no entry
        await link.call(lambda c: leaser._draw_redis(c, [(b"t/ttl", 5, 10.0, 10.0)]))
        assert 400 <= client.pttl(bucket_key(b"t/ttl")) <= 500  # expires when full again: 5 tokens at 10/s
        [(granted, left)] = await link.call(lambda c: leaser._draw_redis(c, [(b"t/ttl", 10, 10.0, 10.0)]))
        assert 5 <= granted <= 6 and left < 1  # and what accrued since (a loaded machine)
        await asyncio.sleep(1.1)  # 11 tokens accrue, capped at 10
        [(granted, _)] = await link.call(lambda c: leaser._draw_redis(c, [(b"t/ttl", 20, 10.0, 10.0)]))
        assert granted == 10
        client.close()
        await link.close()

    asyncio.run(run())


# --- leases shared by several gateways -------------------------------------------------------------


def test_three_members_admit_the_limit_together_under_a_steady_overload(redis_server):
    """Three leasers (as three gateways) on one key, each offered 3x the limit for 2 s."""
    server = redis_server()
    limit, burst, seconds = 200, 50, 3.0

    async def run():
        spec = {"limit": limit, "per": "1s", "burst": burst, "key": "route"}
        members = [await member(server.url, spec, timeout=0.5) for _ in range(3)]  # not down for a loaded machine
        admitted = 0
        t0 = time.time()
        while (now := time.time()) - t0 < seconds:
            for _, _, step in members:
                admitted += step(Ex(), now) is None
            await asyncio.sleep(1 / limit)  # 3 x limit offered in all
        elapsed = time.time() - t0
        await close(*members)
        return admitted, elapsed

    admitted, elapsed = asyncio.run(run())
    expected = limit * elapsed + burst
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected)


def test_fail_open_decides_from_the_host_store_and_resumes_when_redis_returns(redis_server):
    server = redis_server()

    async def run():
        one = await member(server.url, {"limit": 600, "per": "1h", "burst": 200, "key": "route"})
        link, limiter, step = one
        assert step(Ex(), time.time()) is None
        await asyncio.sleep(0.05)
        assert link.up and redis.Redis(port=server.port).keys(b"gatewayd/{?}ratelimit/*")  # full again in 12 s
        server.kill()
        answers = []
        t0 = time.monotonic()
        for _ in range(200):  # the host store's bucket of 200 admits most of them
            answers.append(step(Ex(), time.time()))
            await asyncio.sleep(0.001)
        assert time.monotonic() - t0 < 1.0  # nothing waited on the dead server
        assert not link.up
        assert all(a is None or a.status == 429 for a in answers) and sum(a is None for a in answers) >= 150
        [(_, left)] = limiter.store.draw([(limiter.shares["r"].key, 0, 10.0, 200.0)])
        assert left < 100  # leased from the host store
        server.start()
        deadline = time.monotonic() + 5
        while not link.up and time.monotonic() < deadline:
            step(Ex(), time.time())
            await asyncio.sleep(0.01)
        assert link.up, "the link did not come back"
        other = Ex()
        other.route_name = "other"  # a key not left dry by the host store's bucket (that one waits for its token)
        for _ in range(20):
            step(other, time.time())
            await asyncio.sleep(0.002)
        assert redis.Redis(port=server.port).keys(b"gatewayd/{?}ratelimit/*")  # leased from Redis again
        await close(one)

    asyncio.run(run())


def test_fail_closed_answers_503_beyond_what_it_holds(redis_server):
    server = redis_server()

    async def run():
        one = await member(server.url, {"limit": 5, "per": "1m", "burst": 5, "key": "route"}, on_error="fail_closed")
        link, limiter, step = one
        assert step(Ex(), time.time()) is None
        await asyncio.sleep(0.05)
        held = limiter.shares["r"].credit
        server.kill()
        answers = [step(Ex(), time.time()) for _ in range(held)]  # spent from what was leased
        assert answers == [None] * held
        first = step(Ex(), time.time())  # asks, the lease fails: now down
        await asyncio.sleep(0.05)
        assert not link.up
        refused = step(Ex(), time.time())
        assert refused.status == 503 and refused.error == "rate_limit_unavailable"
        assert dict(refused.headers)[b"retry-after"] == b"1"
        assert first is None or first.status in (429, 503)
        await close(one)

    asyncio.run(run())


def test_a_stopped_redis_holds_no_lease_longer_than_the_timeout(redis_server):
    server = redis_server()

    async def run():
        one = await member(server.url, {"limit": 1000, "per": "1s", "burst": 10, "key": "route"})
        link, limiter, step = one
        step(Ex(), time.time())
        await asyncio.sleep(0.05)
        server.pause()
        try:
            waits = []
            for _ in range(5):
                share = limiter.shares["r"]
                share.credit = 0
                step(Ex(), time.time())
                t0 = time.monotonic()
                while share.pending and time.monotonic() - t0 < 1:
                    await asyncio.sleep(0.001)
                waits.append(time.monotonic() - t0)
            assert not link.up
            assert max(waits) < TIMEOUT_S + 0.04, waits  # the first waits for the timeout, the others are not asked
        finally:
            server.resume()
        await close(one)

    asyncio.run(run())


# --- QUIC session tickets --------------------------------------------------------------------------


def ticket(label: bytes) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    return SessionTicket(
        age_add=7, cipher_suite=CipherSuite.AES_128_GCM_SHA256, not_valid_after=now + datetime.timedelta(hours=1),
        not_valid_before=now, resumption_secret=b"s" * 32, server_name="localhost", ticket=label,
        max_early_data_size=0xFFFFFFFF, other_extensions=[],
    )  # fmt: skip


def test_a_ticket_is_taken_once_across_gateways_and_not_at_all_without_redis(redis_server):
    server = redis_server()

    async def run():
        links = [RedisLink(server.url, TIMEOUT_S, 2) for _ in range(2)]
        for link in links:
            link.start()
        shared = [SharedTickets(link) for link in links]
        await asyncio.gather(*(s.connect() for s in shared))
        issuer, other = (TicketStore(s) for s in shared)
        issuer.add(ticket(b"a" * 64))
        await asyncio.sleep(0.05)  # the write is a task of its own
        taken = other.take(b"a" * 64)
        assert taken is not None and taken.resumption_secret == b"s" * 32
        assert issuer.take(b"a" * 64) is None and other.take(b"a" * 64) is None
        issuer.add(ticket(b"b" * 64))
        await asyncio.sleep(0.05)
        assert 3_500_000 < redis.Redis(port=server.port).pttl(KEY_PREFIX + b"tickets/" + b"b" * 64) <= 3_600_000
        server.pause()
        try:
            t0 = time.perf_counter()
            assert other.take(b"b" * 64) is None  # no answer in time: a full handshake
            assert time.perf_counter() - t0 < 0.02 and links[1].up  # slow for a handshake, not down
        finally:
            server.resume()
        server.kill()
        assert other.take(b"b" * 64) is None and not links[1].up  # refused: down
        t0 = time.perf_counter()
        assert other.take(b"b" * 64) is None  # down: not even asked
        assert time.perf_counter() - t0 < 0.001
        for link in links:
            await link.close()

    asyncio.run(run())


# --- config ---------------------------------------------------------------------------------------


def test_same_redis_ignores_on_error_only():
    started = ClusterConfig("redis://h:6379/0")
    assert same_redis(started, replace(started, on_error="fail_closed")) and same_redis(None, None)
    assert not same_redis(started, replace(started, timeout=1.0))
    assert not same_redis(started, None) and not same_redis(None, started)


CONFIG = """version: 1
{cluster}policies:
  limited:
    rate_limit: {{limit: 5, per: 1s{extra}}}
routes:
  - match: {{path: /x}}
    policies: [limited]
    respond: {{status: 204}}
"""


def test_cluster_section_is_read_with_defaults(tmp_path):
    text = CONFIG.format(cluster='cluster:\n  redis: {url: "redis://10.0.0.1:6379/0"}\n', extra="")
    config = load_bytes(text.encode(), str(tmp_path / "gateway.yaml"))
    assert (config.cluster.url, config.cluster.timeout, config.cluster.pool) == ("redis://10.0.0.1:6379/0", 0.05, 16)
    assert (config.cluster.mode, config.cluster.on_error, config.cluster.sentinels) == ("single", "fail_open", ())
    sentinel = 'cluster:\n  redis: {url: "redis://mymaster/0", mode: sentinel, sentinels: ["10.0.0.1", "10.0.0.2:26380"]}\n'
    config = load_bytes(CONFIG.format(cluster=sentinel, extra="").encode(), str(tmp_path / "gateway.yaml"))
    assert (config.cluster.mode, config.cluster.sentinels) == ("sentinel", ("10.0.0.1", "10.0.0.2:26380"))


@pytest.mark.parametrize(
    "cluster, extra, where, message",
    [
        ("", ", on_error: fail_closed", "gateway.yaml:4:37", "on_error applies only to gateways that share limits"),
        ('cluster:\n  redis: {url: "redis://h/abc"}\n', "", "gateway.yaml:3:16", "must be a number"),
        ('cluster:\n  redis: {url: "redis://h:6379/0", timeout: 0s}\n', "", "gateway.yaml:3:45", "timeout must be more than 0s"),
        ('cluster:\n  redis: {url: "http://h:6379/0"}\n', "", "gateway.yaml:3:16", "is not valid"),
        ('cluster:\n  redis: {url: "redis://h/0"}\n  on_error: sometimes\n', "", "gateway.yaml:4:13", "fail_open"),
        ('cluster:\n  redis: {url: "redis://m/0", mode: sentinel}\n', "", "gateway.yaml:3:37", "list them in `sentinels`"),
        ('cluster:\n  redis: {url: "redis://h/0", sentinels: ["h:1"]}\n', "", "gateway.yaml:3:31", "read only with mode: sentinel"),
        ('cluster:\n  redis: {url: "redis://m/0", mode: sentinel, sentinels: ["h:1", "a b"]}\n', "", "gateway.yaml:3:66", "sentinel's address"),
        ('cluster:\n  redis: {url: "redis://m/0", mode: sentinel, sentinels: ["h:99999"]}\n', "", "gateway.yaml:3:59", "out of range"),
        ('cluster:\n  redis: {url: "redis://m:1/0", mode: sentinel, sentinels: ["h"]}\n', "", "gateway.yaml:3:16", "no port"),
    ],
)
def test_cluster_problems_are_located(tmp_path, cluster, extra, where, message):
    with pytest.raises(ConfigError) as err:
        load_bytes(CONFIG.format(cluster=cluster, extra=extra).encode(), str(tmp_path / "gateway.yaml"))
    assert where in str(err.value) and message in str(err.value), str(err.value)


# --- Redis Cluster --------------------------------------------------------------------------------


def test_leases_tickets_and_sketches_on_a_redis_cluster_of_three_masters(redis_server):
    nodes = redis_server("cluster").nodes

    async def run():
        spec = {"limit": 1000, "per": "1h", "burst": 10, "key": ["route", "header:X-Tenant"]}  # full again in 7 s
        link, limiter, _ = one = await member(nodes[0].url, spec, mode="cluster", timeout=0.5)  # a loaded machine
        step = rate_limit_step(limiter, key_function(spec["key"], ()), REJECTED.labels("p"))
        for tenant in range(40):  # keys in many slots, so on every master
            ex = Ex()
            ex.scope["headers"] = [(b"x-tenant", b"%d" % tenant)]
            assert step(ex, time.time()) is None
        deadline = time.monotonic() + 5
        while any(s.pending for s in limiter.shares.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert link.up and all(s.credit > 0 for s in limiter.shares.values())
        per_node = [len(redis.Redis(port=n.port).keys(b"gatewayd/{?}ratelimit/*")) for n in nodes]
        assert sum(per_node) == 40 and all(per_node), per_node
        shared = SharedTickets(link)
        await shared.connect()
        tickets = TicketStore(shared)
        tickets.add(ticket(b"c" * 64))
        await asyncio.sleep(0.05)
        assert tickets.take(b"c" * 64) is not None and tickets.take(b"c" * 64) is None
        sketches = [Sketches(link, Observed(), name) for name in ("host-a:1", "host-b:2")]
        for each in sketches:
            await each.publish()
        doc = await sketches[0].document()  # SCAN over every master, one MGET in the hash tag's slot
        assert (doc["scope"], doc["instances"], doc["workers"]) == ("cluster", 2, 2)
        await close(one)

    asyncio.run(run())


# --- Redis Sentinel -------------------------------------------------------------------------------


def test_members_follow_the_master_the_sentinels_promote_when_it_dies(redis_server):
    """Two members share a limit through the sentinels' master, which is then killed: they decide
    without Redis (fail_open) and, without a restart, lease from the replica the sentinel promotes
    (500 ms without an answer, then the failover, then the link's next probe: 2 s apart at most)."""
    group = redis_server("sentinel")
    old = group.master()

    async def run():
        spec = {"limit": 2000, "per": "1s", "burst": 10, "key": "route"}
        members = [await member(f"redis://{SERVICE}/0", spec, mode="sentinel", timeout=0.25, sentinels=group.addresses) for _ in range(2)]
        links = [link for link, _, _ in members]

        async def steps(until, seconds: float) -> list:
            answers, t0 = [], time.monotonic()
            while not until() and time.monotonic() - t0 < seconds:
                answers += [step(Ex(), time.time()) for _, _, step in members]
                await asyncio.sleep(0.005)
            return answers

        await steps(lambda: old.script_calls() >= 2, 5)
        assert old.script_calls() >= 2 and all(link.up for link in links)
        old.kill()
        killed = time.monotonic()
        answers = await steps(lambda: not any(link.up for link in links), 5)
        assert not any(link.up for link in links)
        answers += await steps(lambda: all(link.up for link in links) and group.master() is not old, 15)
        new = group.master()
        answers += await steps(lambda: new.script_calls() >= 2, 5)
        followed = time.monotonic() - killed
        assert new is not old and new.script_calls() >= 2 and all(link.up for link in links)
        assert followed < 10, followed
        assert all(a is None or a.status == 429 for a in answers)  # fail_open meanwhile: no 503
        await close(*members)

    asyncio.run(run())


def test_unavailable_is_raised_at_once_while_down():
    async def run():
        link = RedisLink("redis://127.0.0.1:1/0", TIMEOUT_S, 1)  # nothing listens on port 1
        link.start()
        with pytest.raises(Unavailable):
            await link.call(lambda c: c.ping())
        t0 = time.perf_counter()
        with pytest.raises(Unavailable):
            await link.call(lambda c: c.ping())
        assert time.perf_counter() - t0 < 0.001 and link.health()["redis"] == "down"
        await link.close()

    asyncio.run(run())
