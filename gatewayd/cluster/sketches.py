"""`/latency?scope=cluster`: every gateway's latency sketches, published to Redis and merged on demand.

Each worker of each gateway copies the document it publishes to its host store once a second
(`observe/observer.py`: its DDSketch histograms, per route and overall) to Redis, under
`gatewayd/{latency}/<instance>/<pid>` with a TTL of `observer.PUBLISH_TTL_S`, so a gateway that
stops or loses Redis drops out within seconds. Asked for the cluster's figures, a worker publishes
its own first, then reads every live document (one SCAN and one MGET, within the timeout) and merges
them as `/latency` merges a host's workers: the sketches merge exactly, with the same 1% relative
error. The `{latency}` hash tag keeps them in one slot of a Redis Cluster, so that one MGET reads all.
"""

from __future__ import annotations

import asyncio
import os

from ..observe import latency
from ..observe.observer import LATENCY_PREFIX, PUBLISH_INTERVAL_S, PUBLISH_TTL_S, decode
from .buckets import KEY_PREFIX
from .link import RedisLink, Unavailable

LATENCY_KEYS = KEY_PREFIX + b"{latency}/"


class Sketches:
    def __init__(self, link: RedisLink, observer, instance: str):
        self.link = link
        self.observer = observer
        self.instance = instance
        self.own = LATENCY_PREFIX + b"%d" % os.getpid()  # this worker's document in its host store
        self.key = LATENCY_KEYS + f"{instance}/{os.getpid()}".encode()

    async def run(self) -> None:
        """Copy this worker's figures to Redis every PUBLISH_INTERVAL_S (skipped while Redis is down)."""
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            await self.publish()

    async def publish(self) -> None:
        raw = self.observer.store.get(self.own)
        if raw is None or not self.link.up:
            return
        try:
            await self.link.call(lambda client: client.set(self.key, raw, px=int(PUBLISH_TTL_S * 1000)))
        except Unavailable:
            pass

    async def withdraw(self) -> None:
        try:
            await self.link.call(lambda client: client.delete(self.key))
        except Unavailable:
            pass

    async def document(self) -> dict:
        """The `/latency` document of every live gateway together; raises `Unavailable` without Redis."""
        self.observer.refresh()
        await self.publish()
        found = await self.link.call(_read)
        docs, instances = [], set()
        for key, raw in found:
            doc = None if raw is None else decode(raw)
            if doc is not None:
                docs.append(doc)
                instances.add(key[len(LATENCY_KEYS) :].rpartition(b"/")[0])
        merged = latency.merge([d.get("latency") or {} for d in docs])
        return {
            **latency.report(merged, workers=len(docs)),
            "scope": "cluster",
            "instances": len(instances),
            "recording": all(d.get("recording", True) for d in docs),
        }


async def _read(client) -> list[tuple[bytes, bytes | None]]:
    keys = [key async for key in client.scan_iter(match=LATENCY_KEYS + b"*", count=1000)]
    return list(zip(keys, await client.mget(keys))) if keys else []
