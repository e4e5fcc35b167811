"""The response cache across gateways: stored responses in Redis, purges broadcast, one fetch per key.

The cache's shared tier for a cluster (gatewayd/cache): what one gateway fetched is a hit for the
others. A key's record (the request fields its responses vary on, and its URL) and each stored
variant are Redis strings that expire when the entry could no longer be used even stale; Redis's
`maxmemory` policy bounds the rest. A URL's and a tag's keys are listed in sets, so a purge by URL,
path prefix (a `SCAN` of the URL sets) or tag deletes them; the purging gateway then publishes the
purge, and every gateway's workers drop it from their own tiers. A short lease key (`SET NX PX`)
makes one gateway fetch a cold key, or refresh a hot one early, while the others wait for its
answer in Redis. Redis down or slow: every call gives up within `cluster.redis.timeout` and the
cache goes on as a host alone (a miss, a fetch of its own); purges then reach this host only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import marshal

from ..cache.entry import Entry
from .buckets import KEY_PREFIX
from .link import RedisLink, Unavailable

log = logging.getLogger("gatewayd.cluster")

PREFIX = KEY_PREFIX + b"cache/"
CHANNEL = KEY_PREFIX + b"cache-purge"
RESUBSCRIBE_S = 1.0  # after the subscription broke, the wait before subscribing again
_GLOB = {ord(c): "\\" + c for c in "*?[]\\"}


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=12).hexdigest().encode()


def _glob(prefix: bytes) -> bytes:
    """A MATCH pattern for keys starting with `prefix` (its glob characters escaped)."""
    return prefix.decode("latin-1").translate(_GLOB).encode("latin-1") + b"*"


class ClusterCache:
    def __init__(self, link: RedisLink):
        self.link = link
        self._tasks: set[asyncio.Task] = set()
        self._stores: set[asyncio.Task] = set()  # puts still on their way to Redis
        self._subscriber: asyncio.Task | None = None

    # --- stored responses --------------------------------------------------------------------

    @staticmethod
    def _record(key: bytes) -> bytes:
        return PREFIX + b"{" + _h(key) + b"}"  # a hash tag: a key's record and variants on one node

    async def lookup(self, key: bytes, variants) -> tuple[tuple, Entry] | None:
        """The stored response of `key` for one of `variants(vary)` (as in the L2), or None (also
        when Redis is down)."""
        record = self._record(key)
        try:
            data = await self.link.call(lambda client: client.get(record))
            if data is None:
                return None
            vary = marshal.loads(data)[0]
            names = [(selected, record + b"/" + _variant(selected, consumer)) for selected, consumer in variants(vary)]
            found = await self.link.call(lambda client: client.mget([name for _, name in names]))
        except Unavailable:
            return None
        for (selected, _), value in zip(names, found):
            if value is not None and (entry := Entry.loads(value)) is not None:
                return selected, entry
        return None

    def put(self, key: bytes, selected: tuple, entry: Entry, ttl: float) -> None:
        """Store `entry` for `ttl` seconds, in the background (nobody waits on Redis to store)."""
        record = self._record(key)
        name = record + b"/" + _variant(selected, entry.consumer)
        px = max(1, int(ttl * 1000))
        url_set = PREFIX + b"u/" + entry.url

        def write(client):
            pipe = client.pipeline(transaction=False)
            pipe.set(record, marshal.dumps((entry.vary, entry.url)), px=px)
            pipe.set(name, entry.dumps(), px=px)
            pipe.sadd(url_set, record, name)
            pipe.pexpire(url_set, px, gt=True)
            pipe.pexpire(url_set, px, nx=True)
            for tag in entry.tags:
                pipe.sadd(PREFIX + b"t/" + tag, name)
                pipe.pexpire(PREFIX + b"t/" + tag, px, gt=True)
                pipe.pexpire(PREFIX + b"t/" + tag, px, nx=True)
            return pipe.execute()

        task = self._spawn(self._quietly(write))
        self._stores.add(task)
        task.add_done_callback(self._stores.discard)

    async def _quietly(self, make) -> None:
        try:
            await self.link.call(make)
        except Unavailable:
            pass

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- one gateway at a time -------------------------------------------------------------------

    async def lease(self, kind: bytes, key: bytes, seconds: float) -> bool:
        """Whether this gateway may fetch (or refresh) `key` now: one holds the lease at a time, for
        `seconds` at most or until `release`. Redis down: yes (each gateway fetches for itself)."""
        name = PREFIX + b"l/" + kind + b"/" + _h(key)
        try:
            return bool(await self.link.call(lambda client: client.set(name, b"1", nx=True, px=max(1, int(seconds * 1000)))))
        except Unavailable:
            return True

    def release(self, kind: bytes, key: bytes) -> None:
        """Give the lease up once what this gateway stored before is in Redis: a gateway waiting on
        the lease that got it before the response was there would fetch the key again."""
        name = PREFIX + b"l/" + kind + b"/" + _h(key)
        stores = tuple(self._stores)

        async def after_stores() -> None:
            if stores:
                await asyncio.wait(stores)
            await self._quietly(lambda client: client.delete(name))

        self._spawn(after_stores())

    # --- purges --------------------------------------------------------------------------------

    async def purge(self, kind: str, arg: bytes) -> int:
        """Delete what a purge names from Redis and tell every gateway; the stored responses deleted
        here (0 when Redis is down: the purge then reached this host only)."""
        try:
            if kind == "tag":
                sets = [PREFIX + b"t/" + arg]
            elif kind == "url":
                sets = [PREFIX + b"u/" + arg]
            else:
                sets = await self.link.call(lambda client: _scan(client, _glob(PREFIX + b"u/" + arg)))
            removed = 0
            for name in sets:
                members = await self.link.call(lambda client, name=name: client.smembers(name))
                if members:
                    await self.link.call(lambda client, m=list(members): _delete(client, m))
                    removed += sum(1 for m in members if b"}/" in m)
                await self.link.call(lambda client, name=name: client.delete(name))
            await self.link.call(lambda client: client.publish(CHANNEL, marshal.dumps((kind, arg))))
            return removed
        except Unavailable:
            log.warning("redis is down: a cache purge reached this host only")
            return 0

    def subscribe(self, apply) -> None:
        """Call `apply(kind, arg)` for every purge a gateway of the cluster publishes (this one's too)."""
        if self._subscriber is None:
            self._subscriber = asyncio.get_running_loop().create_task(self._listen(apply), name="gatewayd-cache-purges")

    async def _listen(self, apply) -> None:
        while True:
            pubsub = None
            try:
                if not self.link.up or self.link.client is None:
                    await asyncio.sleep(RESUBSCRIBE_S)
                    continue
                pubsub = self.link.client.pubsub()
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        kind, arg = marshal.loads(message["data"])
                        apply(kind, arg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: subscribe again once it is back
                log.debug("cache purge subscription broke: %s", exc)
            finally:
                if pubsub is not None:
                    try:
                        await pubsub.aclose()
                    except Exception:
                        pass
            await asyncio.sleep(RESUBSCRIBE_S)

    def close(self) -> None:
        if self._subscriber is not None:
            self._subscriber.cancel()
        for task in self._tasks:
            task.cancel()


def _variant(selected: tuple, consumer: str | None) -> bytes:
    return _h(marshal.dumps((selected, consumer)))


async def _scan(client, pattern: bytes) -> list[bytes]:
    return [name async for name in client.scan_iter(match=pattern, count=500)]


async def _delete(client, names: list[bytes]) -> int:
    """Delete `names` one by one in a pipeline (in a Redis Cluster they live on several nodes)."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.delete(name)
    return sum(await pipe.execute())
