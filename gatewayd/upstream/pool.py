"""Upstreams and their pooled keep-alive connections, kept across reloads.

The HTTP client is gatewayd's own HTTP/1.1 client (h1_pool.py, h1_connection.py), for `http://`
and `https://` targets alike.

One `Pool` (one set of connections) per upstream, defined by the settings its connections are
opened with (connect timeout, connection limit): a reload that changes anything else of an upstream
(its targets, its response timeout, its balancing) gets a new `Upstream` on the same pool, so warm
connections stay and the upstream never sees two pools' connections for one. A pool that no config
uses any more is closed as soon as its last request is done.
"""

from __future__ import annotations

import asyncio
import logging

from ..config.model import UpstreamConfig
from . import probe
from .balance import BALANCERS
from .h1_pool import H1Pool, endpoint
from .health import Settings
from .retry import Retries
from .targets import Rotation, Target

log = logging.getLogger("gatewayd.upstream")


def pool_key(config: UpstreamConfig) -> tuple:
    """What a pool is built from: upstreams whose keys are equal can share connections."""
    return (config.connect_timeout, config.max_connections)


class Pool:
    """One upstream's connections (`h1`, an H1Pool). `acquire`/`release` around every use, so that
    a retired pool is closed exactly when its last request is done."""

    __slots__ = ("key", "active", "retired", "h1")

    def __init__(self, config: UpstreamConfig):
        self.key = pool_key(config)
        self.active = 0  # requests (and health checks) using the connections
        self.retired = False
        connect_timeout, max_connections = self.key
        self.h1 = H1Pool(max_connections, connect_timeout)

    def acquire(self) -> None:
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        if self.retired and not self.active:
            self.h1.close()

    def retire(self) -> None:
        """No config uses this pool any more: close it now if idle, else when its last request is done.
        (A request that took the old table just before the swap may still `acquire` it; its
        connection is closed when it is put back.)"""
        self.retired = True
        if not self.active:
            self.h1.close()


class Upstream:
    """One config generation's view of an upstream: its settings, targets (with their state, which
    outlives the generation) and balancer, on a pool that may be shared with the generations before it."""

    __slots__ = ("config", "endpoints", "rotation", "pool", "retries")

    def __init__(self, config: UpstreamConfig, pool: Pool | None = None, members: tuple[Target, ...] | None = None):
        self.config = config
        self.endpoints = tuple(endpoint(t) for t in config.targets)
        if members is None:
            members = tuple(Target(config.name, t) for t in config.targets)
        h = config.health
        if h is not None:
            settings = Settings(h.healthy_threshold, h.unhealthy_threshold, config.slow_start)
        else:
            settings = Settings(slow_start=config.slow_start)
        self.rotation = Rotation(members, BALANCERS[config.balance](len(self.endpoints)), config.outlier, settings)
        self.pool = pool if pool is not None else Pool(config)
        self.retries = Retries(config.name, config.retries, len(self.endpoints)) if config.retries.attempts > 1 else None

    def probe_key(self) -> tuple | None:
        """What its health checks depend on (None: it has none): equal keys, one task across reloads."""
        c = self.config
        if c.health is None:
            return None
        return (c.name, c.targets, c.health, c.outlier, c.slow_start, id(self.pool))


class UpstreamRegistry:
    """Upstream name -> live `Upstream`. A new config gets the same `Upstream` when the upstream's
    settings are equal, a new one on the same pool when only settings outside the pool changed;
    either way each target it keeps keeps its state (ejected, or not). Also runs the active health
    checks of the live upstreams (probe.py), once the serving loop runs."""

    def __init__(self):
        self._live: dict[str, Upstream] = {}
        self._targets: dict[tuple[str, str], Target] = {}
        self._probes: dict[tuple, asyncio.Task] = {}
        self._running = False

    def resolve(self, configs: dict[str, UpstreamConfig]) -> tuple[dict[str, Upstream], list[Pool]]:
        """The upstreams for a new config, and the pools it no longer uses (to `retire` once it is swapped in)."""
        live = {}
        for name, config in configs.items():
            old = self._live.get(name)
            if old is not None and old.config == config:
                live[name] = old
                continue
            pool = old.pool if old is not None and old.pool.key == pool_key(config) else None
            members = tuple(self._targets.get((name, t)) or Target(name, t) for t in config.targets)
            live[name] = Upstream(config, pool, members)
        kept = {id(u.pool) for u in live.values()}
        retired = {id(u.pool): u.pool for u in self._live.values() if id(u.pool) not in kept}
        return live, list(retired.values())

    def commit(self, live: dict[str, Upstream]) -> None:
        """Make `live` current: start the health checks it adds, stop those it drops."""
        self._live = live
        targets = {(name, t.url): t for name, u in live.items() for t in u.rotation.members}
        for key, target in self._targets.items():
            if targets.get(key) is not target:
                target.forget()
        for target in targets.values():
            if not target.published:
                target.publish()
        self._targets = targets
        if self._running:
            self._sync_probes()

    def run(self) -> None:
        """Called on the serving loop once it runs: start the health checks of the current config."""
        self._running = True
        self._sync_probes()

    def close(self) -> None:
        """Stop the health checks and retire every pool."""
        _, retired = self.resolve({})
        self._running = False
        self.commit({})
        self._sync_probes()
        for pool in retired:
            pool.retire()

    def _sync_probes(self) -> None:
        wanted = {key: u for u in self._live.values() if (key := u.probe_key()) is not None}
        for key in [k for k in self._probes if k not in wanted]:
            self._probes.pop(key).cancel()
        if self._running:
            for key, upstream in wanted.items():
                if key not in self._probes:
                    self._probes[key] = asyncio.get_running_loop().create_task(probe.run(upstream))
