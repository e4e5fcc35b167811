"""Real `redis-server` processes on free loopback ports, for the tests of gateways that share state.

`RedisServer` starts one with nothing persisted (its data lives and dies with the process), and can
kill it, start it again on the same port, or stop it (SIGSTOP) to play a Redis that does not
answer. `RedisClusterNodes` makes a Redis Cluster of three masters with `redis-cli --cluster
create`; `SentinelGroup` a master, its replica and sentinels watching them (`redis-server --sentinel`).
Each of the three has `settings`, its `cluster.redis` keys for a gateway's config (`url`, `mode`,
`sentinels`), `masters()`, the servers that hold the keys, and `stop()`: `start(mode)` makes the one
of a `cluster.redis.mode`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cluster_port() -> int:
    """A free port P of at most 55535 whose bus port, P + 10000, is free too (Redis Cluster's rule)."""
    for _ in range(100):
        port = random.randint(20000, 55535)
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((HOST, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on `port` answers PING (in RESP, without a client library)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, workdir: Path, *extra: str, port: int | None = None, sentinel: bool = False):
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.sentinel = sentinel  # a sentinel, which keeps its state in workdir/sentinel.conf
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start (again, after `kill`) on the same port; returns once it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        mode = []
        if self.sentinel:
            (self.workdir / "sentinel.conf").touch()
            mode = [str(self.workdir / "sentinel.conf"), "--sentinel"]
        self.proc = subprocess.Popen(
            ["redis-server", *mode, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.02)
        return self

    @property
    def settings(self) -> str:
        return f'url: "{self.url}"'

    def masters(self) -> list["RedisServer"]:
        return [self]

    def script_calls(self) -> int:
        """How many scripts by their digest (EVALSHA: the rate limits' leases) this server ran since it started."""
        found = re.search(r"cmdstat_evalsha:calls=(\d+)", self.cli("info", "commandstats"))
        return int(found.group(1)) if found else 0

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything it held."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered (a Redis that is slow without end)."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args], capture_output=True, text=True, errors="replace",
            timeout=10, check=True,
        ).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


class RedisClusterNodes:
    """`masters` servers with `--cluster-enabled yes`, joined by `redis-cli --cluster create` and
    ready (every node knows the others, every slot served) when made."""

    def __init__(self, workdir: Path, masters: int = 3):
        self.nodes: list[RedisServer] = []
        try:
            for i in range(masters):
                options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
                self.nodes.append(RedisServer(workdir / f"node{i}", *options, port=cluster_port()).start())
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes), "--cluster-replicas", "0",
                 "--cluster-yes"],
                capture_output=True, text=True, timeout=30, check=True,
            )  # fmt: skip
            known = f"cluster_known_nodes:{masters}"
            until(lambda: all(known in (info := n.cli("cluster", "info")) and "cluster_state:ok" in info for n in self.nodes),
                  "the Redis Cluster at cluster_state:ok")  # fmt: skip
        except BaseException:
            self.stop()
            raise

    @property
    def settings(self) -> str:
        return f'url: "{self.nodes[0].url}", mode: cluster'

    def masters(self) -> list[RedisServer]:
        return self.nodes

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


SERVICE = "gatewayd"  # the master's name for the sentinels


class SentinelGroup:
    """A master, a replica of it and `count` sentinels watching them, ready (the sentinels know the
    replica and each other) when made. The sentinels fail over once the master has not answered for
    `down_after_ms`, or at `failover()`."""

    def __init__(self, workdir: Path, count: int = 1, down_after_ms: int = 500):
        self.servers: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        try:
            master = RedisServer(workdir / "redis0", "--repl-diskless-sync-delay", "0").start()
            replica = ("--replicaof", HOST, str(master.port), "--repl-diskless-sync-delay", "0")
            self.servers = [master, RedisServer(workdir / "redis1", *replica)]
            self.servers[1].start()
            until(lambda: "master_link_status:up" in self.servers[1].cli("info", "replication"), "the replica in sync")
            watch = ("--sentinel", "monitor", SERVICE, HOST, str(master.port), str(count // 2 + 1),
                     "--sentinel", "down-after-milliseconds", SERVICE, str(down_after_ms),
                     "--sentinel", "failover-timeout", SERVICE, "5000")  # fmt: skip
            for i in range(count):
                self.sentinels.append(RedisServer(workdir / f"sentinel{i}", *watch, sentinel=True).start())
            until(self._ready, "the sentinels know the replica and each other")
        except BaseException:
            self.stop()
            raise

    @property
    def addresses(self) -> list[str]:
        return [f"{HOST}:{s.port}" for s in self.sentinels]

    @property
    def settings(self) -> str:
        return f'url: "redis://{SERVICE}/0", mode: sentinel, sentinels: {json.dumps(self.addresses)}'

    def masters(self) -> list[RedisServer]:
        return [self.master()]

    def _ready(self) -> bool:
        """Whether every sentinel knows the others, and the replica as one it could promote."""
        for s in self.sentinels:
            master, replica = (_fields(s.cli("sentinel", what, SERVICE)) for what in ("master", "replicas"))
            if master.get("num-other-sentinels") != str(len(self.sentinels) - 1):
                return False
            if (replica.get("flags"), replica.get("master-link-status")) != ("slave", "ok"):
                return False
        return True

    def master(self) -> RedisServer:
        """The server the sentinels give as the master."""
        port = int(self.sentinels[0].cli("sentinel", "get-master-addr-by-name", SERVICE).split()[1])
        return next(s for s in self.servers if s.port == port)

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: the replica becomes the master, the master its replica."""
        reply = self.sentinels[0].cli("sentinel", "failover", SERVICE)
        if reply.strip() != "OK":
            raise RuntimeError(f"SENTINEL FAILOVER: {reply.strip()}")

    def stop(self) -> None:
        for server in self.sentinels + self.servers:
            server.stop()


def _fields(reply: str) -> dict[str, str]:
    """redis-cli's lines of field and value (of the first entry, for a list of them) as a dict."""
    lines = reply.splitlines()
    return dict(zip(lines[::2], lines[1::2]))


def until(predicate, what: str, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def start(mode: str, workdir: Path) -> RedisServer | RedisClusterNodes | SentinelGroup:
    """What gateways of `cluster.redis.mode` `mode` share."""
    if mode == "cluster":
        return RedisClusterNodes(workdir)
    if mode == "sentinel":
        return SentinelGroup(workdir)
    return RedisServer(workdir).start()
