"""Rate limits shared by gateways through Redis: leasing slices of each key's budget (what gatewayd
does) against syncing local counters periodically (the alternative), under a steady overload.

    python bench/ratelimit_sync.py [--rounds 3] [--seconds 3] [--limit 500] [--burst 50] [--overload 3]

It starts a redis-server on a free loopback port and three instance processes, each an event loop
with its own connection to Redis (a `RedisLink`, as a gateway's worker has). For each setting, N of
them (1, 2 or 3) are offered `--overload` times the limit in all, split evenly and paced every
millisecond, on one key new to the run, for `--seconds`; the settings run one after another,
leasing and syncing interleaved in each round and their order reversed every other round.

- `lease`: gatewayd's own code: a `Limiter` with a `ClusterLeaser` (gatewayd/cluster/buckets.py),
  its slice swept by setting `bucket.SLICE_S` (10 ms of the rate by default) when it is made.
- `sync`: a model, since gatewayd does not ship it (`CounterSync` below): each instance admits
  from its estimate of a leaky meter shared in Redis (a token bucket counted the other way), and
  every `interval` adds its admissions since the last sync to it with one script call per key,
  reading back the total. Its `SYNC` script drains the meter at the limit's rate at Redis's clock.

Each row gives what the N instances admitted against `limit x T + burst`, the Redis commands per
1,000 decisions (the script calls the server counted, `INFO commandstats`: EVALSHA, EVAL and
SCRIPT LOAD; the commands a script runs are counted there too, and left out), the share of
decisions that asked Redis for nothing (a decision that asked for a lease is one that
synchronises; no decision of either ever waits for Redis: both decide in a plain function call,
and a sync runs on a timer), and a decision's cost in process (perf_counter_ns around it, a
clock read included). Its column `first 100 ms` is what the key, new to every instance, admitted
in the run's first 100 ms: what a burst on a new key (an attacker's, say) gets from N instances.

The bounds printed next to the measured figures, for a steady overload (R = limit's rate, N
instances, S the slice in tokens, I the sync interval):

- lease: the Redis bucket holds B = burst + S - 1 (bucket.py) and starts full, so it grants at
  most B + R x T. What an instance admitted is what it was granted, less the credit it holds at
  the end, plus the debt it owes then; it admits on debt only while it owes less than a slice
  (or than its belief of the bucket, about a token under overload, since every lease finds it
  empty), so it owes S at most. Over: at most (S - 1) + N x S; under: at most N x S - (S - 1)
  (the credit held at the end) and the tokens of a lease in flight then. A burst sprayed over
  the instances within one lease adds up to N x B more (the code's bound, buckets.py).
- sync: an instance sees the meter as it read it, its own admissions since, and the drain since
  its read; not the others' admissions since their last syncs, which the meter let each admit at
  about R x I (under overload it sits at the cap, and each admits what drains). Over: at most
  (N - 1) x R x I (plus R x a round trip). A new key is believed empty by every instance at
  once: the first interval admits up to N x (burst + R x I), owed back later.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from array import array
from pathlib import Path
from time import perf_counter_ns

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402

from gatewayd.cluster.buckets import KEY_PREFIX, ClusterLeaser  # noqa: E402
from gatewayd.cluster.link import RedisLink, Unavailable  # noqa: E402
from gatewayd.policies import bucket  # noqa: E402
from gatewayd.policies.rate_limit import Limiter  # noqa: E402
from gatewayd.store import MemoryStore  # noqa: E402
from loadresult import percentile  # noqa: E402
from redisproc import RedisServer  # noqa: E402

INSTANCES = (1, 2, 3)
SLICES_S = (0.002, 0.01, 0.05, 0.1)  # lease: a slice is this many seconds of the rate (gatewayd: 0.01)
INTERVALS_S = (0.01, 0.05, 0.1, 0.25)  # sync: seconds between two syncs of an instance
TIMEOUT_S = 1.0  # the link's timeout: generous, so that a busy shared machine does not fail it open
FIRST_S = 0.1  # what a key new to every instance gets at first: its admissions in this many seconds
TICK_S = 0.001  # an instance decides what is due, then sleeps this long
START_S = 0.3  # from sending a run to the instances to its start
KEY = "route"  # the one key of a run (what a rate limit keyed by route would see)
# the commands the instances send for their decisions (the rest is the clients' housekeeping, or
# run inside a script)
SCRIPT_CALLS = ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script|load")

# KEYS: one meter; ARGV: admissions to add, rate, seconds they were made over (for a meter not yet
# in Redis), the sync interval. Returns the meter's level after (a string: a Lua number in a reply
# is cut to an integer). The admissions drain with the rest: they were made over the interval, not
# now. A meter outlives its drain by an interval: admissions not yet added keep it from emptying.
SYNC = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local delta, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local level, stamp = 0, now - tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
if raw then
  level, stamp = struct.unpack('>d>d', raw)
end
level = math.max(0, level + delta - math.max(0, now - stamp) * rate)
if level > 0 then
  local ms = math.ceil((level / rate + tonumber(ARGV[4])) * 1000)
  redis.call('SET', KEYS[1], struct.pack('>d>d', level, now), 'PX', ms)
else
  redis.call('DEL', KEYS[1])
end
return string.format('%.17g', level)
"""


class Meter:
    """One instance's view of a key's meter: its level when last read, when, and its own admissions
    sent and not yet answered (`sending`) or not yet sent (`unsynced`)."""

    __slots__ = ("key", "level", "read", "sending", "sent", "unsynced")

    def __init__(self, key: bytes, now: float):
        self.key = key
        self.level = 0.0  # believed empty (the bucket full) until the first sync says otherwise
        self.read = now
        self.sending = 0
        self.unsynced = 0
        self.sent = now  # since when `unsynced` counts


class CounterSync:
    """Strategy `sync`, a model (gatewayd does not ship it): admit while the estimated level of the
    key's meter leaves room for one more, and every `interval` sync every key with Redis."""

    def __init__(self, link: RedisLink, rate: float, capacity: int, interval: float, clock=time.time):
        self.link = link
        self.rate = rate
        self.capacity = capacity
        self.interval = interval
        self.clock = clock
        self.meters: dict[object, Meter] = {}
        self.running = True
        self._script = None

    def admit(self, value, now: float) -> bool:
        meter = self.meters.get(value)
        if meter is None:
            meter = self.meters[value] = Meter(KEY_PREFIX + b"sync/" + str(value).encode(), now)
        # a level below 0 is a meter that drained before these admissions: each still counts
        level = meter.level + meter.sending + meter.unsynced - (now - meter.read) * self.rate
        if level + 1 <= self.capacity:
            meter.unsynced += 1
            return True
        return False

    async def run(self) -> None:
        """Sync every `interval`, from a random phase (instances do not sync together), until
        `running` is False."""
        due = self.clock() + random.uniform(0, self.interval)
        while self.running:
            await asyncio.sleep(max(0.0, due - self.clock()))
            due += self.interval
            for meter in list(self.meters.values()):
                await self.sync(meter)

    async def sync(self, meter: Meter) -> None:
        now = self.clock()
        meter.sending, meter.unsynced = meter.unsynced, 0
        span, meter.sent = now - meter.sent, now
        if self._script is None or self._script.registered_client is not self.link.client:
            self._script = self.link.client.register_script(SYNC)
        args = [meter.sending, repr(self.rate), repr(span), repr(self.interval)]
        try:
            level = float(await self.link.call(lambda client: self._script(keys=[meter.key], args=args)))
        except Unavailable:  # counted again with the next sync
            meter.unsynced += meter.sending
        else:
            meter.level, meter.read = level, self.clock()
        meter.sending = 0


async def offer(decide, t0: float, seconds: float, rate: float) -> dict:
    """`decide(now) -> (admitted, asked)` for every request due at `rate` a second from `t0` for
    `seconds`: how many were admitted (in all, and in the first FIRST_S), decided, and asked Redis
    for something, and the ns of each decision."""
    await asyncio.sleep(max(0.0, t0 - time.time()))
    ns = array("q")
    admitted = first = asked = done = 0
    end = t0 + seconds
    while (now := time.time()) < end:
        for _ in range(int((now - t0) * rate) + 1 - done):
            now = time.time()
            t = perf_counter_ns()
            ok, asks = decide(now)
            ns.append(perf_counter_ns() - t)
            admitted += ok
            first += ok and now < t0 + FIRST_S
            asked += asks
            done += 1
        await asyncio.sleep(TICK_S)
    return {"admitted": admitted, "first": first, "decisions": done, "asked": asked, "ns": ns.tobytes()}


async def lease_run(link: RedisLink, job: dict) -> dict:
    """gatewayd's leases: a cluster `Limiter` (a key new to every instance is believed empty), its
    slice `job["param"]` seconds of the rate."""
    spec = {"limit": job["limit"], "per": "1s", "burst": job["burst"], "key": KEY}
    default, bucket.SLICE_S = bucket.SLICE_S, job["param"]
    try:
        limiter = Limiter(job["name"], spec, MemoryStore(), leaser=ClusterLeaser(link), link=link, cold_full=False)
    finally:
        bucket.SLICE_S = default
    shares, cold, admit = limiter.shares, limiter.cold, limiter.admit

    def decide(now: float) -> tuple[bool, bool]:
        share = shares.get(KEY)
        if share is None:
            share = cold(KEY, now)
        was = share.pending
        return admit(share, now), share.pending and not was

    limiter.start()
    try:
        return await offer(decide, job["t0"], job["seconds"], job["offered"])
    finally:
        limiter.close()


async def sync_run(link: RedisLink, job: dict) -> dict:
    """The counter-sync model, syncing every `job["param"]` seconds."""
    model = CounterSync(link, job["limit"], max(job["burst"], 1), job["param"])
    task = asyncio.get_running_loop().create_task(model.run())
    try:
        decide = lambda now: (model.admit(job["name"], now), False)  # noqa: E731
        return await offer(decide, job["t0"], job["seconds"], job["offered"])
    finally:
        # not a cancel: redis-py 8.1's asyncio client loses one that comes while a call awaits its
        # reply (the call returns), and the task would sync on into the next run's counts
        model.running = False
        await task


def instance(url: str, conn) -> None:
    """An instance process: one link to Redis, runs as they come down `conn` until None."""

    async def serve() -> None:
        link = RedisLink(url, TIMEOUT_S, 4)
        link.start()
        await link.connect()
        downs = []
        link.on_change(lambda up: downs.append(up) if not up else None)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while (job := await loop.run_in_executor(None, conn.recv)) is not None:
            run = lease_run if job["strategy"] == "lease" else sync_run
            downs.clear()
            answer = await run(link, job)
            await asyncio.sleep(0.05)  # a lease or sync in flight lands before the commands are counted
            conn.send({**answer, "downs": len(downs)})
        await link.close()

    asyncio.run(serve())


def commands(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(stats[name]["calls"] for name in SCRIPT_CALLS if name in stats)


def slice_tokens(limit: float, seconds: float) -> int:
    return max(1, math.ceil(limit * seconds - 1e-9))  # bucket.Budget.of's slice, at `seconds`


def bound(strategy: str, param: float, n: int, limit: float) -> float:
    """The most a steady overload admits over `limit x T + burst`, in tokens (the module's docstring)."""
    if strategy == "lease":
        s = slice_tokens(limit, param)
        return (s - 1) + n * s
    return (n - 1) * limit * param


def settings() -> list[tuple[str, float, int]]:
    """Every setting, leasing and syncing interleaved."""
    out = []
    for n in INSTANCES:
        for slice_s, interval in zip(SLICES_S, INTERVALS_S):
            out += [("lease", slice_s, n), ("sync", interval, n)]
    return out


def run(client: redis.Redis, pipes: list, setting: tuple, args, name: str) -> dict:
    strategy, param, n = setting
    job = {
        "strategy": strategy, "param": param, "name": name, "limit": args.limit, "burst": args.burst,
        "t0": time.time() + START_S, "seconds": args.seconds, "offered": args.overload * args.limit / n,
    }  # fmt: skip
    client.config_resetstat()
    for conn in pipes[:n]:
        conn.send(job)
    answers = [conn.recv() for conn in pipes[:n]]
    calls = commands(client)
    admitted, first, decisions, asked, downs = (
        sum(a[k] for a in answers) for k in ("admitted", "first", "decisions", "asked", "downs")
    )  # fmt: skip
    ns = sorted(x for a in answers for x in array("q", a["ns"]))
    expected = args.limit * args.seconds + args.burst
    return {
        "offered": decisions, "admitted": admitted, "error": 100 * (admitted - expected) / expected,
        "first": first, "per_1000": 1000 * calls / decisions, "in_memory": 100 * (1 - asked / decisions),
        "p50_us": percentile(ns, 50) / 1000, "p99_us": percentile(ns, 99) / 1000, "downs": downs,
    }  # fmt: skip


def table(results: dict, args) -> list[str]:
    expected = args.limit * args.seconds + args.burst
    first = args.burst + args.limit * FIRST_S
    offered = args.overload * args.limit * FIRST_S
    lines = [
        f"| strategy | setting | instances | offered | admitted | limit x T + burst | error | error, rounds "
        f"| bound (steady) | first {FIRST_S * 1000:g} ms (offered {offered:.0f}; burst + limit x "
        f"{FIRST_S * 1000:g} ms: {first:.0f}) "
        "| Redis calls / 1,000 decisions | decisions asking Redis nothing | decision µs p50 | p99 |",
        "| --- | --- | --: | --: | --: | --: | --: | --- | --: | --: | --: | --: | --: | --: |",
    ]
    for strategy in ("lease", "sync"):
        for (s, param, n), rows in results.items():
            if s != strategy:
                continue
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            if s == "lease":
                setting = f"slice {slice_tokens(args.limit, param)} ({param * 1000:g} ms)"
            else:
                setting = f"interval {param * 1000:g} ms"
            over = bound(s, param, n, args.limit)
            rounds = ", ".join(f"{r['error']:+.2f}" + ("*" if r["downs"] else "") for r in rows)
            lines.append(
                f"| {s} | {setting} | {n} | {med['offered']:.0f} | {med['admitted']:.0f} | {expected:.0f} "
                f"| {med['error']:+.2f}% | {rounds} | +{over:.0f} (+{100 * over / expected:.1f}%) | {med['first']:.0f} "
                f"| {med['per_1000']:.0f} | {med['in_memory']:.1f}% | {med['p50_us']:.2f} | {med['p99_us']:.2f} |"
            )
    if any(r["downs"] for rows in results.values() for r in rows):
        lines.append(f"\n*: a Redis call of this round outlasted the link's timeout ({TIMEOUT_S:g} s): down for it")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--limit", type=int, default=500, help="requests a second")
    p.add_argument("--burst", type=int, default=50)
    p.add_argument("--overload", type=float, default=3.0, help="offered load, in times the limit")
    args = p.parse_args()
    print(f"Load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ctx = multiprocessing.get_context("spawn")
    results: dict[tuple, list] = {}
    with tempfile.TemporaryDirectory() as d:
        server = RedisServer(Path(d)).start()
        client = redis.Redis.from_url(server.url)
        pipes, procs = [], []
        try:
            for _ in range(max(INSTANCES)):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(target=instance, args=(server.url, theirs), daemon=True)
                proc.start()
                pipes.append(mine)
                procs.append(proc)
            for conn in pipes:
                if not conn.poll(30) or conn.recv() != "ready":
                    raise SystemExit("an instance process did not start")
            print(f"redis-server {client.info('server')['redis_version']}; {args.rounds} rounds of {args.seconds:g} s")
            for i, strategy in enumerate(("lease", "sync")):  # unrecorded: connections, scripts loaded
                run(client, pipes, (strategy, 0.01, max(INSTANCES)), args, f"warm{i}")
            for r in range(args.rounds):
                order = settings()
                for i, setting in enumerate(order if r % 2 == 0 else order[::-1]):
                    results.setdefault(setting, []).append(run(client, pipes, setting, args, f"r{r}s{i}"))
        finally:
            for conn in pipes:
                conn.send(None)
            for proc in procs:
                proc.join(5)
                if proc.is_alive():
                    proc.kill()
            client.close()
            server.stop()
    print(
        f"\nLimit {args.limit}/s, burst {args.burst}, {args.overload:g}x offered for {args.seconds:g} s "
        f"(split over the instances); medians over {args.rounds} rounds\n"
    )
    print("\n".join(table(results, args)))
    print(f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
