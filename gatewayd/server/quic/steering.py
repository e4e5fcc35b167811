"""Steering each QUIC datagram to the worker that holds its connection, across worker restarts.

Why: the workers' UDP sockets form one SO_REUSEPORT group, and the kernel picks a socket of the
group by a hash of the datagram's addresses, modulo the group's size, over the group's array of
sockets. When a socket closes, the kernel moves the group's last socket into its place; a new
socket is appended (`reuseport_detach_sock` and `reuseport_add_sock` in net/core/sock_reuseport.c).
So after a worker is killed and restarted, the same hash reaches other sockets, and the connections
of a surviving worker move to the new one, which does not know them. A classic BPF program
(SO_ATTACH_REUSEPORT_CBPF) returns a position in that array, which shifts the same way.

How: each worker's connection ids start with its index (`cids.py`). For each QUIC listen address,
the supervisor creates an eBPF socket array (BPF_MAP_TYPE_REUSEPORT_SOCKARRAY) with one slot per
worker before it starts any, and every worker inherits it (`arrays_for_workers`). A worker puts its
socket in its own slot and attaches `program` to the group (`Steering.join`). The kernel empties a
slot when its socket closes and a restarted worker fills it again, so slots never move. For a
short-header packet the program selects the socket in the slot that the destination connection id's
first byte names; for anything else it lets the kernel's hash pick: long-header packets (a client's
first Initial and its 0-RTT carry an id the client chose; the rest of a handshake follows them by
the hash), datagrams too short, and ids whose slot is empty (a worker being restarted: new
connections go to the others meanwhile).

Where the kernel refuses (no CAP_BPF, an old kernel, not Linux on x86-64 or arm64), one log line,
and datagrams are spread by the hash alone, as without steering.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import socket
import struct

from ...config.model import Listen

log = logging.getLogger("gatewayd.quic")

MAX_WORKERS = 256  # a worker's index is one byte of its connection ids

# bpf(2)'s number, where we know it (both little-endian, as `_insn` packs)
_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}.get(platform.machine()) if platform.system() == "Linux" else None
_BPF_MAP_CREATE, _BPF_MAP_UPDATE_ELEM, _BPF_PROG_LOAD = 0, 2, 5
_BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 20
_BPF_PROG_TYPE_SK_REUSEPORT = 21
_SO_ATTACH_REUSEPORT_EBPF = 52
_ATTR_SIZE = 128  # bytes of `union bpf_attr` we pass, zero past the fields we set (the kernel checks)
_LOG_SIZE = 1 << 16  # the verifier's explanation, when it refuses the program


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (`struct bpf_insn`: opcode, dst and src registers in one byte, offset, immediate)."""
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def program(array_fd: int) -> bytes:
    """The BPF_PROG_TYPE_SK_REUSEPORT program steering by the socket array `array_fd`. It runs for
    each datagram with r1 = `struct sk_reuseport_md`, whose `data` (offset 0) starts at the UDP header
    and `data_end` (offset 8) ends the bytes that may be read."""
    return b"".join((
        _insn(0xBF, dst=6, src=1),  # r6 = r1: keep the context for the helper call
        _insn(0x79, dst=2, src=6, off=0),  # r2 = md->data (u64 load)
        _insn(0x79, dst=3, src=6, off=8),  # r3 = md->data_end
        _insn(0xBF, dst=4, src=2),  # r4 = r2
        _insn(0x07, dst=4, imm=10),  # r4 += 10: UDP header (8), QUIC's first byte, the id's first byte
        _insn(0x2D, dst=4, src=3, off=11),  # if r4 > r3 goto pass (+11): too short (the verifier demands this check)
        _insn(0x71, dst=4, src=2, off=8),  # r4 = QUIC's first byte (u8 load)
        _insn(0x45, dst=4, off=9, imm=0x80),  # if r4 & 0x80 goto pass (+9): a long header
        _insn(0x71, dst=4, src=2, off=9),  # r4 = the destination id's first byte: a worker's index
        _insn(0x63, dst=10, src=4, off=-4),  # *(u32 *)(r10 - 4) = r4: the key, on the stack
        _insn(0x18, dst=2, src=1, imm=array_fd),  # r2 = the array (a 64-bit load of a map fd: 2 slots)
        _insn(0x00),
        _insn(0xBF, dst=3, src=10),  # r3 = r10
        _insn(0x07, dst=3, imm=-4),  # r3 -= 4: &key
        _insn(0xBF, dst=1, src=6),  # r1 = the context
        _insn(0xB7, dst=4, imm=0),  # r4 = 0: flags
        _insn(0x85, imm=82),  # call bpf_sk_select_reuseport(md, array, &key, 0); an empty slot selects nothing
        _insn(0xB7, dst=0, imm=1),  # pass: r0 = SK_PASS: the selected socket, or the kernel's hash when none
        _insn(0x95),  # exit
    ))  # fmt: skip


def _bpf(cmd: int, attr: bytes) -> int:
    """bpf(2) with `attr` (zero-padded to `_ATTR_SIZE`): its result, or OSError with the kernel's errno."""
    if _BPF_SYSCALL is None:
        raise OSError(f"no eBPF on {platform.system()} {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    result = libc.syscall(ctypes.c_long(_BPF_SYSCALL), ctypes.c_long(cmd), buf, ctypes.c_long(_ATTR_SIZE))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def create_array(slots: int) -> int:
    """A new socket array of `slots` slots (u32 index -> socket), as a file descriptor."""
    # map_type, key_size, value_size (a socket's fd), max_entries, map_flags
    return _bpf(_BPF_MAP_CREATE, struct.pack("=IIIII", _BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 4, 4, slots, 0))


def put_socket(array_fd: int, slot: int, sock: socket.socket) -> None:
    """Put `sock` (bound, with SO_REUSEPORT) in `slot`, replacing what is there."""
    key, value = ctypes.c_uint32(slot), ctypes.c_uint32(sock.fileno())
    # map_fd, padding, key, value (pointers), flags (BPF_ANY)
    _bpf(_BPF_MAP_UPDATE_ELEM, struct.pack("=IIQQQ", array_fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))


def attach(array_fd: int, sock: socket.socket) -> None:
    """Load `program(array_fd)` and make it the one that picks sockets in `sock`'s group."""
    code = program(array_fd)
    insns, license_ = ctypes.create_string_buffer(code), ctypes.create_string_buffer(b"Apache-2.0")
    verifier_log = ctypes.create_string_buffer(_LOG_SIZE)
    # prog_type, insn_cnt, insns, license, log_level (1: explain a refusal), log_size, log_buf
    attr = struct.pack(
        "=IIQQIIQ", _BPF_PROG_TYPE_SK_REUSEPORT, len(code) // 8, ctypes.addressof(insns), ctypes.addressof(license_),
        1, _LOG_SIZE, ctypes.addressof(verifier_log),
    )  # fmt: skip
    try:
        prog_fd = _bpf(_BPF_PROG_LOAD, attr)
    except OSError as exc:
        said = verifier_log.value.decode(errors="replace").strip().splitlines()
        raise OSError(exc.errno, f"{exc.strerror} ({said[-1]})" if said else exc.strerror) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_EBPF, prog_fd)  # the group keeps the program
    finally:
        os.close(prog_fd)


def arrays_for_workers(listens: list[Listen], workers: int) -> dict[str, int]:
    """For the supervisor, before it starts any worker: a socket array per QUIC listen address (by
    its text), with a slot per worker; none (and a log line) where the kernel refuses."""
    arrays: dict[str, int] = {}
    try:
        if workers > MAX_WORKERS:
            raise OSError(f"more than {MAX_WORKERS} workers")
        for listen in listens:
            arrays[str(listen)] = create_array(workers)
    except OSError as exc:
        for fd in arrays.values():
            os.close(fd)
        log.warning(
            "QUIC datagrams cannot be steered to their worker by connection id (%s): a restarted worker "
            "may take over other workers' HTTP/3 connections, which then break",
            exc.strerror or exc,
        )
        return {}
    return arrays


class Steering:
    """A worker's part: its index, the first byte of its connection ids, and the host's socket arrays."""

    def __init__(self, worker: int, arrays: dict[str, int]):
        self.cid_prefix = bytes([worker])
        self.worker = worker
        self.arrays = arrays

    def join(self, listen: Listen, sock: socket.socket) -> None:
        """Put `sock`, just bound to `listen`, in this worker's slot, and steer its group; where that
        fails, a log line, and the kernel's hash alone spreads the datagrams."""
        array_fd = self.arrays.get(str(listen))
        try:
            if array_fd is None:
                raise OSError(f"{listen} was not a QUIC address when the supervisor started")
            put_socket(array_fd, self.worker, sock)
            attach(array_fd, sock)
        except OSError as exc:
            log.warning(
                "HTTP/3 on %s: datagrams not steered by connection id (%s); a restarted worker may "
                "take over this worker's connections",
                listen, exc.strerror or exc,
            )  # fmt: skip
