"""The UDP socket of a QUIC listener: buffers large enough for bursts.

Every client's datagrams arrive on one socket, and while a worker handles one batch the next waits
in the kernel's receive buffer. Linux's default (net.core.rmem_default, 208 KiB) holds about 170
full-size datagrams: at c=50 x 10 streams it overflowed thousands of times a second (`RcvbufErrors`
in /proc/net/snmp), and each datagram dropped cost the client a loss-detection timeout.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("gatewayd.quic")

BUFFER_BYTES = 4 << 20  # asked for each way; Linux grants up to net.core.rmem_max / wmem_max (and doubles it)


def enlarge_buffers(sock) -> tuple[int, int]:
    """Ask for `BUFFER_BYTES` of receive and send buffer on `sock`; returns what the kernel granted,
    (receive, send) in bytes, and warns when the receive buffer is smaller than asked for."""
    granted = []
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, BUFFER_BYTES)
        granted.append(sock.getsockopt(socket.SOL_SOCKET, option))
    if granted[0] < BUFFER_BYTES:
        log.warning("QUIC receive buffer: %d bytes granted of %d asked for (raise net.core.rmem_max)",
                    granted[0], BUFFER_BYTES)
    return granted[0], granted[1]
