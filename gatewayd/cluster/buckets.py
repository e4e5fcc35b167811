"""Rate limits shared by several gateways: the host's leases (`policies/lease.py`), taken from Redis.

Each worker of each gateway leases slices of a key's budget from one token bucket in Redis, as the
workers of one host do from the host store: the same `Share`s, the same decisions on the request
path, which never waits for Redis. `ClusterLeaser` settles a batch of shares with one script call
(`DRAW`), which runs `store.base.take_tokens`'s arithmetic atomically in Redis, at Redis's clock
(`TIME`), so that the gateways' clocks need not agree. A bucket is a string of two doubles (the
`BUCKET` layout of the host store), expiring when it would be full again.

Over-admission: with L leasers in all (gateways × workers), a slice S = max(1, ceil(rate × 10 ms))
and B = max(burst, 1) + S - 1, the cluster admits at most limit×T/per + B + L×(B + S) over any T
seconds (the host's bound, `bucket.py`, with L for W); a steady overload admits limit×T/per + burst
give or take a few slices per leaser, less the tokens of any lease answered after the timeout
(taken in Redis, never spent). The L×B is the debt of a burst sprayed over every
leaser within one lease, each believing the bucket as full as its last lease found it; it is owed
back from later tokens. A key new to a worker is believed empty here (`Limiter(cold_full=False)`),
not full as on one host: the first requests of a new key reach every gateway at once, and would
each be admitted a bucketful: the first burst of a new key gets about a slice per leaser before
the leases answer.

When Redis is down or slower than `cluster.redis.timeout`, each limit does as its `on_error` says:
`fail_open` leases from the host store (the single-host limits), `fail_closed` leaves the share to
what it already holds: the request step then refuses with 503 what that does not cover. Leases
come from Redis again from the first batch after the link's probe finds it back.
"""

from __future__ import annotations

import asyncio
import time

from ..policies.lease import GAP_S, Leaser
from .link import RedisLink, Unavailable

# the prefix of every key gatewayd keeps in Redis
KEY_PREFIX = b"gatewayd/"
# buckets per script call: a batch larger than this is split into calls made together
MAX_KEYS_PER_CALL = 256

# KEYS: buckets; ARGV: want, rate, capacity for each. Returns granted, tokens left (as a string: a
# Lua number in a reply is cut to an integer) for each. The arithmetic of store.base.take_tokens.
DRAW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local want = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1])
  local capacity = tonumber(ARGV[3 * i])
  local level = capacity
  local raw = redis.call('GET', key)
  if raw then
    local tokens, stamp = struct.unpack('>d>d', raw)
    level = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
  end
  local granted
  if want < 0 then
    granted = want
    level = math.min(capacity, level - want)
  else
    granted = math.min(want, math.floor(level))
    level = level - granted
  end
  if level >= capacity then
    redis.call('DEL', key)
  else
    local ms = math.max(1, math.ceil((capacity - level) / rate * 1000))
    redis.call('SET', key, struct.pack('>d>d', level, now), 'PX', ms)
  end
  out[2 * i - 1] = granted
  out[2 * i] = string.format('%.17g', level)
end
return out
"""


def bucket_key(key: bytes) -> bytes:
    """A bucket's key in Redis. Its hash tag, the key's last (hex) character, puts the buckets in 16
    slots of a Redis Cluster: spread over its masters, and a batch of leases needs 16 calls at most
    (a script's keys must share a slot, and redis-py runs no scripts in a cluster pipeline)."""
    return KEY_PREFIX + b"{" + key[-1:] + b"}" + key


def calls(items: list, slot_of=None) -> list[list[int]]:
    """Indexes of `items` grouped into script calls: at most MAX_KEYS_PER_CALL each, and with
    `slot_of` (Redis Cluster) the keys of one call in one hash slot, as a script's keys must be."""
    groups: dict = {}
    for i, item in enumerate(items):
        groups.setdefault(None if slot_of is None else slot_of(item[0]), []).append(i)
    return [g[at : at + MAX_KEYS_PER_CALL] for g in groups.values() for at in range(0, len(g), MAX_KEYS_PER_CALL)]


class ClusterLeaser(Leaser):
    """The leases of the rate limits of a process that belongs to a cluster (one per link)."""

    def __init__(self, link: RedisLink, gap: float = GAP_S, clock=time.time):
        super().__init__(gap, clock)
        self.link = link
        self._script = None
        self._slots: asyncio.Semaphore | None = None

    async def lease(self) -> None:
        entries = self.take()
        if not entries:
            return
        asks, items = self.items(entries, self.clock())
        try:
            answers = await self.link.call(lambda client: self._draw_redis(client, items))
        except Unavailable:
            opened = []
            for entry in entries:
                if entry[1].on_error == "fail_open":
                    opened.append(entry)
                else:
                    entry[0].pending = False  # it keeps what it holds, and is asked for again by the next request
            self.draw_from_stores(opened, self.clock())
            return
        self.apply(entries, asks, answers, self.clock())

    async def _draw_redis(self, client, items: list) -> list[tuple[int, float]]:
        if self._script is None or self._script.registered_client is not client:
            self._script = client.register_script(DRAW)
        groups = calls(items, getattr(client, "keyslot", None) and (lambda key: client.keyslot(bucket_key(key))))
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.link.pool)  # no more calls at once than connections
        replies = await asyncio.gather(*(self._call(group, items) for group in groups))
        answers: list = [None] * len(items)
        for group, reply in zip(groups, replies):
            for n, i in enumerate(group):
                answers[i] = (int(reply[2 * n]), float(reply[2 * n + 1]))
        return answers

    async def _call(self, group: list[int], items: list):
        keys = [bucket_key(items[i][0]) for i in group]
        args = [x for i in group for x in (items[i][1], repr(items[i][2]), repr(items[i][3]))]
        async with self._slots:
            return await self._script(keys=keys, args=args)
