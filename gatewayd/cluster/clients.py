"""The redis-py clients of each `cluster.redis.mode`, and what a mode cannot use of `url` and
`sentinels` (for `gatewayd check`).

- `single`: the server `url` names; `Redis` over a `BlockingConnectionPool`.
- `cluster`: a Redis Cluster; `url` names one node, `RedisCluster` finds the others and each slot's.
- `sentinel`: the master of a group that Redis Sentinel watches. `url`'s host is the master's
  service name (the rest of it, credentials, database and TLS, is for the master), and `sentinels`
  are where the sentinels listen. redis-py's `Sentinel.master_for` asks them for the master's address
  before each new connection, and makes a connection to a master demoted since fail (`READONLY`);
  the link then finds the new master with new connections, without a restart. The sentinels are
  asked without a password or TLS.

Every client holds `pool` connections at most (a call waits up to `timeout` for one), has socket
timeouts of `timeout`, and makes no retries of its own: the link decides when to try again.
"""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

from redis import Redis as SyncRedis
from redis import RedisCluster as SyncRedisCluster
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry as SyncRetry
from redis.sentinel import Sentinel as SyncSentinel

SENTINEL_PORT = 26379  # a sentinel's port when its address names none


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """The master's connections, found through the sentinels, waited for as in the other modes
    (redis-py's own sentinel pool fails a call at once when all are busy)."""


def make_client(url: str, timeout: float, pool: int, mode: str, sentinels: tuple[str, ...] = ()):
    """An asyncio client for `mode`."""
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    if mode == "cluster":
        return RedisCluster.from_url(url, max_connections=pool, **options)
    if mode == "sentinel":
        service, master = _master(url)
        manager = Sentinel([sentinel_address(s) for s in sentinels], sentinel_kwargs=options)
        return manager.master_for(
            service, connection_pool_class=BlockingSentinelPool, max_connections=pool, timeout=timeout, **options, **master
        )
    return Redis(connection_pool=BlockingConnectionPool.from_url(url, max_connections=pool, timeout=timeout, **options))


def make_blocking(url: str, wait: float, mode: str, sentinels: tuple[str, ...] = ()):
    """A client that blocks its thread for at most `wait` per command (and per sentinel asked), with one connection."""
    options = {"socket_timeout": wait, "socket_connect_timeout": wait, "retry": SyncRetry(NoBackoff(), 0)}
    if mode == "cluster":
        return SyncRedisCluster.from_url(url, **options)
    if mode == "sentinel":
        service, master = _master(url)
        manager = SyncSentinel([sentinel_address(s) for s in sentinels], sentinel_kwargs=options)
        return manager.master_for(service, max_connections=1, **options, **master)
    return SyncRedis.from_url(url, max_connections=1, **options)


async def close(client) -> None:
    """Close an asyncio client and, for a sentinel's master, the connections to the sentinels."""
    with contextlib.suppress(Exception):  # closing connections to a server that is gone
        await client.aclose()
    if manager := _manager(client):
        with contextlib.suppress(Exception):
            await manager.aclose()


def close_blocking(client) -> None:
    with contextlib.suppress(Exception):
        client.close()
    if manager := _manager(client):
        with contextlib.suppress(Exception):
            manager.close()


def _manager(client):
    return getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)


def _master(url: str) -> tuple[str, dict]:
    """The master's service name (the URL's host) and the URL's options for the master's connections."""
    options = parse_url(url)
    service = options.pop("host")
    options.pop("port", None)
    options["ssl"] = options.pop("connection_class", None) is not None  # rediss://: the only class parse_url names
    return service, options


def sentinel_address(text: str) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` as (host, port); raises ValueError for a port out of range."""
    parts = urlsplit("//" + text)
    return parts.hostname or "", parts.port or SENTINEL_PORT


def sentinel_problems(address: str) -> list[str]:
    """What is wrong with one of `cluster.redis.sentinels` that the schema's pattern cannot say."""
    try:
        host, _ = sentinel_address(address)
    except ValueError as exc:
        return [f"not a sentinel's address, host[:port]: {exc}"]
    return [] if host else [f"no host in {address!r}: host[:port]"]


def url_problems(url: str, mode: str) -> list[str]:
    """What is wrong with `cluster.redis.url` (for `mode`) that the schema's pattern cannot say."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        parse_url(url)  # redis-py's own reading: its options in the query
    except ValueError as exc:
        return [f"not a Redis URL: {exc}"]
    if parts.scheme == "unix":
        if not parts.path:
            return ["a unix:// URL names a socket file: unix:///path/to/redis.sock"]
        if mode == "cluster":
            return ["Redis Cluster (mode: cluster) is reached over TCP, not a unix socket"]
        if mode == "sentinel":
            return ["with mode: sentinel the URL names the master's service: redis://SERVICE[/DB], not a socket"]
        return []
    if not parts.hostname:
        return [f"no host in the URL: {parts.scheme}://HOST[:PORT][/DB]"]
    db = parts.path.strip("/")
    if db and not db.isdigit():
        return [f"the database after the host must be a number, not {db!r}"]
    if mode == "cluster" and db not in ("", "0"):
        return ["a Redis Cluster has only database 0"]
    if mode == "sentinel" and parts.port is not None:
        return ["with mode: sentinel the URL's host is the master's service name, and its address comes from the sentinels: no port"]
    return []
