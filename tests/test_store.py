"""The host store's behaviour, the same for the in-process store and the host-wide one, and across processes."""

from __future__ import annotations

import multiprocessing
import random

import pytest

from gatewayd.store import LMDBStore, MemoryStore, StoreFull, open_host_store
from gatewayd.store.lmdb_store import MAX_KEY_BYTES

KEYS = 200
TAKERS = 4
JOIN_TIMEOUT_S = 60


class Clock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["memory", "lmdb"])
def store(request, tmp_path, clock):
    if request.param == "memory":
        s = MemoryStore(clock=clock)
    else:
        s = LMDBStore(str(tmp_path), map_size=8 << 20, clock=clock)
    yield s
    s.close()


def test_put_get_overwrite(store):
    assert store.get(b"tickets/a") is None
    store.put(b"tickets/a", b"1")
    store.put(b"tickets/b", b"2")
    assert store.get(b"tickets/a") == b"1" and store.get(b"tickets/b") == b"2"
    store.put(b"tickets/a", b"3")
    assert store.get(b"tickets/a") == b"3"


def test_ttl_expiry(store, clock):
    store.put(b"tickets/short", b"s", ttl=5)
    store.put(b"tickets/long", b"l", ttl=50)
    store.put(b"tickets/forever", b"f")
    clock.now += 4.9
    assert store.get(b"tickets/short") == b"s"
    clock.now += 0.1
    assert store.get(b"tickets/short") is None
    assert store.get(b"tickets/long") == b"l"
    clock.now += 1000
    assert store.get(b"tickets/long") is None
    assert store.get(b"tickets/forever") == b"f"
    assert store.take(b"tickets/long") is None


def test_overwrite_replaces_ttl(store, clock):
    store.put(b"k/ttl-then-none", b"1", ttl=1)
    store.put(b"k/ttl-then-none", b"2")
    store.put(b"k/none-then-ttl", b"3")
    store.put(b"k/none-then-ttl", b"4", ttl=1)
    clock.now += 2
    store.put(b"k/other", b"5")  # gives the host store a chance to purge
    assert store.get(b"k/ttl-then-none") == b"2"
    assert store.get(b"k/none-then-ttl") is None


def test_take_is_single_use(store):
    store.put(b"tickets/t", b"ticket", ttl=60)
    assert store.take(b"tickets/t") == b"ticket"
    assert store.take(b"tickets/t") is None
    assert store.get(b"tickets/t") is None
    assert store.take(b"tickets/never-put") is None
    store.put(b"tickets/t", b"again")
    assert store.take(b"tickets/t") == b"again"


def test_scan_order_and_prefix(store, clock):
    keys = [b"latency/%d" % i for i in (3, 10, 1, 2, 20)]
    for k in keys:
        store.put(k, k.upper())
    store.put(b"latency", b"no slash")
    store.put(b"latencz/1", b"next prefix")
    store.put(b"lat/1", b"shorter")
    store.put(b"latency/expiring", b"e", ttl=1)
    assert store.scan(b"latency/") == [(k, k.upper()) for k in sorted(keys)] + [(b"latency/expiring", b"e")]
    clock.now += 1
    assert store.scan(b"latency/") == [(k, k.upper()) for k in sorted(keys)]
    assert store.scan(b"nothing/") == []
    assert [k for k, _ in store.scan(b"")] == sorted(keys + [b"latency", b"latencz/1", b"lat/1"])


@pytest.mark.parametrize("size", [0, 1, 4096, 64 * 1024])
def test_values_up_to_64_kib(store, size):
    value = random.Random(size).randbytes(size)
    store.put(b"cache/v", value, ttl=60)
    assert store.get(b"cache/v") == value
    assert store.scan(b"cache/") == [(b"cache/v", value)]
    assert store.take(b"cache/v") == value


def test_open_host_store(tmp_path):
    private = open_host_store(None)
    assert isinstance(private, MemoryStore)
    private.close()
    first = open_host_store(str(tmp_path), map_size=1 << 20)
    assert isinstance(first, LMDBStore)
    first.put(b"k", b"v")
    first.close()
    second = open_host_store(str(tmp_path), map_size=1 << 20)
    assert second.get(b"k") == b"v"
    second.close()


@pytest.mark.parametrize("size", [1024, 2100, 64 * 1024])  # 2100: just too big for a page, a page of its own
def test_full_store_raises_store_full_and_recovers(tmp_path, size):
    store = LMDBStore(str(tmp_path), map_size=1 << 20)
    value = bytes(size)
    written = []
    with pytest.raises(StoreFull):
        for i in range(1000):
            store.put(b"big/%d" % i, value)
            written.append(b"big/%d" % i)
    assert len(written) >= (1 << 20) // 4 // size
    assert [k for k, _ in store.scan(b"big/")] == sorted(written)
    for key in written:
        assert store.take(key) == value
    for key in written:
        store.put(key, value)
    with pytest.raises(StoreFull):
        store.put(b"big/one-more", value)
    store.close()


def test_expired_entries_make_room(tmp_path, clock):
    store = LMDBStore(str(tmp_path), map_size=1 << 20, clock=clock)
    value = bytes(64 * 1024)
    for i in range(100):  # 6.4 MiB through a 1 MiB store: only the purge of expired entries makes room
        clock.now += 0.5
        store.put(b"big/%d" % i, value, ttl=1)
    assert len(store.scan(b"big/")) == 2
    store.close()


def test_full_store_purges_every_expired_entry(tmp_path, clock):
    store = LMDBStore(str(tmp_path), map_size=1 << 20, clock=clock)
    small = []
    with pytest.raises(StoreFull):
        for i in range(10_000):
            store.put(b"small/%05d" % i, bytes(1024), ttl=1)
            small.append(i)
    assert len(small) > 8 * 8
    clock.now += 1
    for i in range(4):  # far more room than the few expired entries that each put purges
        store.put(b"big/%d" % i, bytes(64 * 1024))
    assert store.scan(b"small/") == [] and len(store.scan(b"big/")) == 4
    store.close()


def test_full_map_makes_room_for_a_big_value_once_expired(tmp_path, clock):
    store = LMDBStore(str(tmp_path), map_size=1 << 20, clock=clock)
    store._capacity = 1 << 30  # let LMDB's map fill up before the store's own limit does
    with pytest.raises(StoreFull):
        for i in range(100):
            store.put(b"big/%d" % i, bytes(64 * 1024), ttl=1)
    clock.now += 1
    store.put(b"new", bytes(64 * 1024))
    assert store.scan(b"big/") == [] and store.get(b"new") == bytes(64 * 1024)
    store.close()


def test_put_purges_expired_entries_as_it_goes(tmp_path, clock):
    store = LMDBStore(str(tmp_path), map_size=8 << 20, clock=clock)
    for i in range(1000):
        store.put(b"tickets/%d" % i, b"t", ttl=10)
    clock.now += 10
    for i in range(100):
        store.put(b"latency/%d" % i, b"h")
    with store._env.begin() as txn:
        assert txn.stat(store._kv)["entries"] == 1000 + 100 - 100 * 8
        assert txn.stat(store._expiry)["entries"] == 1000 - 100 * 8
    store.close()


def test_keys_beyond_lmdb_limit_are_refused(tmp_path):
    store = LMDBStore(str(tmp_path), map_size=1 << 20)
    for bad in (b"", b"k" * (MAX_KEY_BYTES + 1)):
        with pytest.raises(ValueError):
            store.put(bad, b"v")
        assert store.get(bad) is None and store.take(bad) is None
    store.put(b"k" * MAX_KEY_BYTES, b"v", ttl=1)
    assert store.take(b"k" * MAX_KEY_BYTES) == b"v"
    store.close()


def _take_all(state_dir: str, seed: int, start, results) -> None:
    store = open_host_store(state_dir, map_size=8 << 20)
    keys = [b"tickets/%d" % i for i in range(KEYS)]
    random.Random(seed).shuffle(keys)
    start.wait(timeout=JOIN_TIMEOUT_S)
    results.put([(k, v) for k in keys if (v := store.take(k)) is not None])
    store.close()


def _exchange(state_dir: str, results) -> None:
    store = open_host_store(state_dir, map_size=8 << 20)
    results.put(store.get(b"from/parent"))
    store.put(b"from/child", b"hello parent", ttl=60)
    store.close()


def _run(ctx, target, *args) -> list:
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, results)) for a in args]
    for p in procs:
        p.start()
    gathered = [results.get(timeout=JOIN_TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(timeout=JOIN_TIMEOUT_S)
        assert p.exitcode == 0
    return gathered


def test_concurrent_takes_across_processes_take_each_key_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    store = open_host_store(str(tmp_path), map_size=8 << 20)
    for i in range(KEYS):
        store.put(b"tickets/%d" % i, b"ticket %d" % i, ttl=60)
    start = ctx.Barrier(TAKERS)
    gathered = _run(ctx, _take_all, *[(str(tmp_path), seed, start) for seed in range(TAKERS)])
    taken = [kv for got in gathered for kv in got]
    assert sorted(taken) == sorted((b"tickets/%d" % i, b"ticket %d" % i) for i in range(KEYS))
    assert store.scan(b"tickets/") == []
    store.close()


def test_writes_are_visible_across_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    store = open_host_store(str(tmp_path), map_size=8 << 20)
    store.put(b"from/parent", b"hello child", ttl=60)
    assert _run(ctx, _exchange, (str(tmp_path),)) == [b"hello child"]
    assert store.get(b"from/child") == b"hello parent"
    store.close()


# --- token buckets (`draw`) ----------------------------------------------------------------------

RATE = 10.0  # tokens a second, in the bucket tests


def test_draw_starts_full_and_grants_whole_tokens(store, clock):
    assert store.draw([(b"ratelimit/a", 3, RATE, 5.0)]) == [(3, 2.0)]
    assert store.draw([(b"ratelimit/a", 3, RATE, 5.0)]) == [(2, 0.0)]
    assert store.draw([(b"ratelimit/a", 1, RATE, 5.0)]) == [(0, 0.0)]
    clock.now += 0.26  # 2.6 tokens accrue: two are granted, the rest stays
    [(granted, left)] = store.draw([(b"ratelimit/a", 5, RATE, 5.0)])
    assert granted == 2 and left == pytest.approx(0.6, abs=1e-4)


def test_draw_refills_up_to_capacity_and_a_full_bucket_leaves_no_entry(store, clock):
    store.draw([(b"ratelimit/b", 5, RATE, 5.0)])
    assert len(store.scan(b"ratelimit/")) == 1
    clock.now += 0.5  # exactly full again: the entry has expired
    assert store.scan(b"ratelimit/") == []
    clock.now += 100
    assert store.draw([(b"ratelimit/b", 9, RATE, 5.0)]) == [(5, 0.0)]


def test_draw_gives_back_up_to_capacity(store, clock):
    store.draw([(b"ratelimit/c", 4, RATE, 5.0)])
    assert store.draw([(b"ratelimit/c", -3, RATE, 5.0)]) == [(-3, 4.0)]
    assert store.draw([(b"ratelimit/c", -3, RATE, 5.0)]) == [(-3, 5.0)]
    assert store.scan(b"ratelimit/") == []  # full: nothing kept


def test_draw_settles_a_batch_of_buckets_at_once(store, clock):
    items = [(b"ratelimit/x", 2, RATE, 3.0), (b"ratelimit/y", 7, 1.0, 4.0), (b"ratelimit/x", 2, RATE, 3.0)]
    assert store.draw(items) == [(2, 1.0), (4, 0.0), (1, 0.0)]
    assert [k for k, _ in store.scan(b"ratelimit/")] == [b"ratelimit/x", b"ratelimit/y"]


def test_draw_counts_a_clock_gone_back_as_no_time(store, clock):
    store.draw([(b"ratelimit/d", 5, RATE, 5.0)])
    clock.now -= 60
    assert store.draw([(b"ratelimit/d", 5, RATE, 5.0)]) == [(0, 0.0)]
    clock.now += 0.15
    [(granted, left)] = store.draw([(b"ratelimit/d", 5, RATE, 5.0)])
    assert granted == 1 and left == pytest.approx(0.5, abs=1e-4)


def test_draw_refuses_keys_beyond_lmdb_limit(tmp_path):
    store = LMDBStore(str(tmp_path), map_size=1 << 20)
    with pytest.raises(ValueError):
        store.draw([(b"r" * (MAX_KEY_BYTES + 1), 1, RATE, 1.0)])
    store.close()


DRAWERS = 4
BUCKET_TOKENS = 300
DRAWS = 1000  # per process: the bucket runs dry while they draw


def _draw_all(state_dir: str, start, results) -> None:
    store = open_host_store(state_dir, map_size=8 << 20)
    start.wait(timeout=JOIN_TIMEOUT_S)
    got = 0
    for _ in range(DRAWS):  # one token at a time, with a second key in each batch
        items = [(b"ratelimit/shared", 1, 1e-6, float(BUCKET_TOKENS)), (b"ratelimit/other", 1, 1e-6, 1.0)]
        got += store.draw(items)[0][0]
    results.put(got)
    store.close()


def test_concurrent_draws_across_processes_grant_each_token_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(DRAWERS)
    granted = _run(ctx, _draw_all, *[(str(tmp_path), start) for _ in range(DRAWERS)])
    assert sum(granted) == BUCKET_TOKENS, granted
