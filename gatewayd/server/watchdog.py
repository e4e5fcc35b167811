"""Connection timeouts the Granian engine cannot apply itself, applied on its sockets.

Granian's HTTP library (hyper, with hyper-util's protocol detection in front of it for
`server.http: auto`) has one timer for HTTP/1.1, `header_read_timeout`, running from the end of a
response until the next head is complete; and nothing for a connection that sends no byte at all,
which then holds one of the worker's connection slots for ever. Hypercorn has a keep-alive timer and
(see `hypercorn_engine._TCPServer`) a head deadline. To give both engines the same limits:

- a connection that has sent nothing is closed after `header_read_timeout` (or
  `keep_alive_timeout`, if shorter and not 0);
- an idle HTTP/1.1 connection (its last response sent, nothing received since) is closed after
  `keep_alive_timeout`;
- a request head begun after a response is closed after `header_read_timeout` from when the
  watchdog first sees its bytes (within `interval`).

A connection's first head is left to hyper's timer, set to the longer of the two timeouts: from
outside, its bytes cannot be told from an HTTP/2 preface or a TLS handshake.

Granian runs in this process, so its accepted sockets are this process's file descriptors: the
watchdog looks at those whose local port is one of the engine's, reads the kernel's TCP_INFO for
each (bytes received, time since data was last received and sent), learns from the app which
connections have a request in flight and when each finished its last one (`Tracker`, keyed by the
ASGI `client`), and shuts down the ones past their limit: Granian then sees the connection end
and drops it. Decisions are a pure function (`verdict`); `Watchdog.scan` does the I/O around it.
HTTP/2 connections are left to Granian's keep-alive pings, and TLS connections to Granian's
handshake timeout until their first request.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
from stat import S_ISSOCK
from dataclasses import dataclass
from time import monotonic, perf_counter

log = logging.getLogger("gatewayd.server")

_TCP_INFO_LEN = 136  # through tcpi_bytes_received (Linux 4.1+)
_NEVER = (None, None)  # no request finished on the connection
_ESTABLISHED = 1


class Tracker:
    """Which connections have a request in flight, and when each last finished one: the ASGI app
    wrapped so that every HTTP request is counted by its `client` (host, port). Granian's embedded
    server gives the app HTTP scopes only (no lifespan, no websockets here)."""

    __slots__ = ("busy", "done")

    def __init__(self) -> None:
        self.busy: dict[tuple, int] = {}  # client -> requests in flight
        self.done: dict[tuple, tuple[float, str]] = {}  # client -> (monotonic end, http_version) of its last request

    def wrap(self, app):
        busy, done = self.busy, self.done

        async def tracked(scope, receive, send) -> None:
            client = scope["client"]
            busy[client] = busy.get(client, 0) + 1
            try:
                await app(scope, receive, send)
            finally:
                left = busy[client] - 1
                if left:
                    busy[client] = left
                else:
                    del busy[client]
                done[client] = (monotonic(), scope["http_version"])

        return tracked

    def forget(self, keep: set) -> None:
        """Drop what is known of connections not in `keep` (gone), unless a request is in flight."""
        for client in [c for c in self.done if c not in keep and c not in self.busy]:
            del self.done[client]


@dataclass(frozen=True, slots=True)
class Limits:
    header_read: float  # seconds
    keep_alive: float  # seconds; 0: keep-alive off (Granian then closes after each response)

    @property
    def silent(self) -> float:
        return min(self.header_read, self.keep_alive) if self.keep_alive > 0 else self.header_read


@dataclass(slots=True)
class Seen:
    """What the watchdog remembers of one connection between scans."""

    first_seen: float
    client: tuple[str, str] = ("", "")  # the peer, as the ASGI `client` Granian gives
    head_since: float | None = None  # when bytes of an unfinished head were first seen
    done_at: float | None = None  # the request end `head_since` counts from


@dataclass(frozen=True, slots=True)
class Info:
    """The kernel's TCP_INFO of one connection, in seconds and bytes."""

    received: int
    sent: int
    since_received: float
    since_sent: float

    @classmethod
    def parse(cls, raw) -> Info:
        since_sent, _, since_received = struct.unpack_from("III", raw, 44)
        sent, received = struct.unpack_from("QQ", raw, 120)
        return cls(received, sent, since_received / 1000, since_sent / 1000)


# TCP_INFO's times since the last byte are whole kernel ticks (up to 10 ms), and the request's own
# bytes arrive just before its response ends: a head that began within this of the response is
# taken for none (its connection then has keep_alive_timeout, not header_read_timeout)
CLOCK_SLACK = 0.02


def verdict(now: float, info: Info, seen: Seen, busy: bool, done_at: float | None, version: str | None, limits: Limits) -> str | None:
    """Why this connection is to be closed now ("silent", "idle", "slow head"), or None. `done_at`
    and `version` are the tracker's for the connection's client (None: no request finished on it)."""
    if busy:
        seen.head_since = None
        return None
    if info.received == 0:
        return "silent" if info.since_received >= limits.silent else None
    if done_at is not None and done_at < seen.first_seen - 1.0:
        done_at = None  # finished on an earlier connection from the same client port
    if done_at is None:
        # a first head: hyper's own timer applies (it cannot be told here from an HTTP/2 client
        # waiting for a server that has not answered its preface yet, or from a TLS handshake)
        return None
    if version not in ("1", "1.1"):
        return None  # HTTP/2: Granian's keep-alive pings apply
    elif info.since_received + CLOCK_SLACK >= now - done_at:  # nothing received since the last response
        seen.head_since = None
        if limits.keep_alive > 0 and min(now - done_at, info.since_sent) >= limits.keep_alive:
            return "idle"
        return None
    else:
        if seen.head_since is None or seen.done_at != done_at:
            seen.head_since, seen.done_at = now, done_at
        start = seen.head_since
    return "slow head" if now - start >= limits.header_read else None


class Watchdog:
    """Scans this process's sockets on `ports` every `interval` seconds and closes the connections
    `verdict` condemns (see the module's docstring)."""

    def __init__(self, tracker: Tracker, ports: set[int], limits: Limits, interval: float | None = None):
        self.tracker = tracker
        self.ports = ports
        self.limits = limits
        smallest = min(limits.header_read, limits.keep_alive or limits.header_read)
        self.interval = interval if interval is not None else min(1.0, max(0.05, smallest / 8))
        self.seen: dict[int, Seen] = {}  # socket inode -> what was seen of it
        self.others: set[int] = set()  # socket inodes that are not connections to `ports`
        self.closed = 0  # connections closed so far

    async def run(self, stop: asyncio.Event) -> None:
        """Scan every `interval` seconds, or less often when scans take long (many connections): the
        wait is at least 25 times the last scan, so scanning takes 4% of a core at most."""
        while not stop.is_set():
            started = perf_counter()
            try:
                self.scan(monotonic())
            except Exception:  # never let a scan error end the watchdog
                log.exception("connection watchdog: scan failed")
            try:
                await asyncio.wait_for(stop.wait(), max(self.interval, 25 * (perf_counter() - started)))
            except TimeoutError:
                pass

    def scan(self, now: float) -> int:
        """One pass over this process's file descriptors; the number of connections closed."""
        tracker, limits, others, known = self.tracker, self.limits, self.others, self.seen
        alive: dict[int, Seen] = {}
        sockets: set[int] = set()
        clients = set()
        closed = 0
        try:
            fds = os.listdir("/proc/self/fd")
        except OSError:
            return 0
        buf, size = _INFO_BUF, _INFO_SIZE
        for name in fds:
            try:
                fd = int(name)
                st = os.fstat(fd)
            except (OSError, ValueError):
                continue
            if not S_ISSOCK(st.st_mode):
                continue
            inode = st.st_ino
            sockets.add(inode)
            if inode in others:
                continue
            seen = known.get(inode)
            if seen is None:
                seen = _first_look(fd, inode, self.ports, now)
                if seen is None:
                    others.add(inode)
                    continue
            size.value = _TCP_INFO_LEN
            if _getsockopt(fd, socket.IPPROTO_TCP, socket.TCP_INFO, buf, ctypes.byref(size)) != 0:
                continue
            try:
                if os.fstat(fd).st_ino != inode:
                    continue  # the fd was closed and reused meanwhile: that was another socket's
            except OSError:
                continue
            if buf.raw[0] != _ESTABLISHED:
                continue  # closing already
            client = seen.client
            alive[inode] = seen
            clients.add(client)
            done_at, version = tracker.done.get(client, _NEVER)
            why = verdict(now, Info.parse(buf), seen, client in tracker.busy, done_at, version, limits)
            if why is not None and _shut_down(fd, inode):
                log.debug("closed the connection from %s:%s: %s", client[0], client[1], why)
                closed += 1
        self.seen = alive
        others &= sockets
        tracker.forget(clients)
        self.closed += closed
        return closed


_libc = ctypes.CDLL(None, use_errno=True)
_getsockopt = _libc.getsockopt
_getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_INFO_BUF = ctypes.create_string_buffer(_TCP_INFO_LEN)
_INFO_SIZE = ctypes.c_uint32(_TCP_INFO_LEN)


def _first_look(fd: int, inode: int, ports: set[int], now: float) -> Seen | None:
    """A `Seen` for a connection accepted on one of `ports`, or None for any other socket."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    with socket.socket(fileno=dup) as sock:
        if os.fstat(dup).st_ino != inode:
            return None
        client = _client_of(sock, ports)
        return None if client is None else Seen(first_seen=now, client=client)


def _shut_down(fd: int, inode: int) -> bool:
    """Shut the connection down (Granian then sees its end and drops it), through a duplicate of
    `fd` checked to be the same socket, so that a reused fd number is never the one shut."""
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            return False
        with socket.socket(fileno=os.dup(dup)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        os.close(dup)


def _client_of(sock: socket.socket, ports: set[int]) -> tuple[str, str] | None:
    """The peer of `sock` as the ASGI `client` Granian gives, if it is a TCP connection accepted on
    one of `ports`; None for anything else (listeners, upstream connections, UDP, Unix sockets)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return None
    try:
        if sock.getsockname()[1] not in ports or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return None
        peer = sock.getpeername()
    except OSError:
        return None
    return peer[0], str(peer[1])
