"""This gateway as a member of a cluster: what it shares through Redis, started and stopped together.

Made once, at start, from the config's `cluster` section (a reload that changes it is served with
the Redis of the start, and says so in the log). One `RedisLink` per process carries everything, so
the whole process sees Redis as up or down at once (`/health`: `cluster: {redis, since}`):

- `leaser`: the rate limits' leases (`buckets.py`);
- `tickets`: QUIC session tickets, single-use across the cluster (`tickets.py`);
- `sketches`: the latency figures behind `/latency?scope=cluster` (`sketches.py`);
- `cache`: the response cache's tier shared by the gateways, its purges and fetch leases (`cache.py`);
- `link.client`: the redis-py client, for what else comes to be shared (a cache tier; `pubsub()`
  for broadcasts), and `link.on_change` to hear when Redis goes and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import replace

from ..config.model import ClusterConfig
from .buckets import ClusterLeaser
from .cache import ClusterCache
from .link import RedisLink
from .sketches import Sketches
from .tickets import SharedTickets

log = logging.getLogger("gatewayd.cluster")


def instance_name(supervised: bool) -> str:
    """How other gateways know this one: its host's name and its supervisor's pid (its own, alone)."""
    return f"{socket.gethostname()}:{os.getppid() if supervised else os.getpid()}"


def same_redis(started: ClusterConfig | None, loaded: ClusterConfig | None) -> bool:
    """Whether a reloaded `cluster` section asks for the Redis the process started with (or, like it,
    for none): only `on_error` takes effect at a reload."""
    if started is None or loaded is None:
        return started is loaded
    return replace(loaded, on_error=started.on_error) == started


class Cluster:
    def __init__(self, config: ClusterConfig, observer, instance: str):
        self.config = config
        self.link = RedisLink(config.url, config.timeout, config.pool, config.mode, config.sentinels)
        self.leaser = ClusterLeaser(self.link)
        self.tickets = SharedTickets(self.link)
        self.sketches = Sketches(self.link, observer, instance)
        self.cache = ClusterCache(self.link)
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        """On the serving loop: make the client, start publishing latency figures."""
        self.link.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.sketches.run(), name="gatewayd-cluster-sketches"),
            loop.create_task(self.link.connect(), name="gatewayd-cluster-connect"),
            loop.create_task(self.tickets.connect(), name="gatewayd-cluster-tickets"),
        ]
        log.info("sharing limits, tickets and latency through redis at %s (%s)", self.link.safe_url, self.config.mode)

    def health(self) -> dict:
        return self.link.health()


    async def close(self) -> None:
        if self._tasks:
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks)
            await self.sketches.withdraw()
        await self.link.close()
