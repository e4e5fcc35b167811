"""Listening sockets that gatewayd binds itself: SO_REUSEPORT, so each worker of the host binds its
own and the kernel spreads connections (and keeps a QUIC client's datagrams on one worker), and
TCP_FASTOPEN where asked for and available; and how many connections a worker may hold."""

from __future__ import annotations

import logging
import os
import resource
import socket

from ..config.model import Listen, ServerConfig

log = logging.getLogger("gatewayd.server")

FASTOPEN_QUEUE = 256  # pending TCP Fast Open connections a listener accepts before falling back to a plain handshake
# connections the kernel queues for a listener before the engine accepts them (capped by the
# net.core.somaxconn sysctl); the engines' defaults are 128 (Granian's embedded server) and 100 (Hypercorn)
BACKLOG = 4096


def connection_limit() -> int:
    """How many client connections one worker may hold at once: half of its open-file limit, after
    raising the soft limit to the hard one (as Go's runtime does), so that the other half stays for
    upstream connections and files, and an engine that accepts up to this limit never loops on
    EMFILE. Granian's embedded server otherwise holds 128 (`backpressure`, from its backlog), and
    the 129th connection waits until one of them closes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return max(128, soft // 2)


def fastopen_wanted(server: ServerConfig) -> bool:
    """`server.tcp_fastopen`, where this system has it (a warning otherwise)."""
    available = hasattr(socket, "TCP_FASTOPEN")
    if server.tcp_fastopen and not available:
        log.warning("server.tcp_fastopen: this system has no TCP Fast Open; listening without it")
    return server.tcp_fastopen and available


def set_fastopen(fd: int) -> None:
    """Set TCP_FASTOPEN on the listening socket `fd`, which stays its owner's."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, FASTOPEN_QUEUE)


def bind(listen: Listen, kind: int = socket.SOCK_STREAM, *, fastopen: bool = False) -> socket.socket:
    """A socket of `kind` bound to `listen` with SO_REUSEPORT (TCP: also TCP_NODELAY and SO_REUSEADDR,
    as the engines set them; listen() is the engine's). A busy address is an OSError saying which."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fastopen:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, FASTOPEN_QUEUE)
        elif family == socket.AF_INET6:  # or `[::]` would also take the datagrams meant for `0.0.0.0`'s socket
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            proto = "" if kind == socket.SOCK_STREAM else " (UDP)"
            raise OSError(exc.errno, f"cannot listen on {listen}{proto}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock
