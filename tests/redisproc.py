"""Real `redis-server` processes on free loopback ports, for the tests of gateways that share state.

`RedisServer` starts one with nothing persisted (its data lives and dies with the process), and can
kill it, start it again on the same port, or stop it (SIGSTOP) to play a Redis that does not
answer. `redis_cluster` makes a Redis Cluster of three masters with `redis-cli --cluster create`.
"""

from __future__ import annotations

import os
import random
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
    def __init__(self, workdir: Path, *extra: str, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://{HOST}:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start (again, after `kill`) on the same port; returns once it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{self.log()}")
            time.sleep(0.02)
        return self

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


def redis_cluster(workdir: Path, masters: int = 3) -> list[RedisServer]:
    """`masters` servers with `--cluster-enabled yes`, joined by `redis-cli --cluster create` and
    ready (every node knows the others, every slot served) when this returns."""
    nodes: list[RedisServer] = []
    try:
        for i in range(masters):
            options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            nodes.append(RedisServer(workdir / f"node{i}", *options, port=cluster_port()).start())
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in nodes), "--cluster-replicas", "0",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(f"cluster_known_nodes:{masters}" in (info := n.cli("cluster", "info")) and "cluster_state:ok" in info for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    return nodes
