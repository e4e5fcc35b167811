"""Steering QUIC datagrams by connection id (gatewayd.server.quic.cids and .steering), without a gateway:
the ids a connection issues, the kernel's choice of socket before and after one is replaced, and
what happens where the kernel refuses (tests/e2e/test_quic_restart.py kills a real worker)."""

from __future__ import annotations

import ctypes
import datetime
import errno
import logging
import os
import select
import socket
import ssl
import struct

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionIdIssued
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gatewayd.config.model import Listen
from gatewayd.server.quic import steering
from gatewayd.server.quic.cids import WorkerConnection
from gatewayd.server.supervisor import ENV_QUIC_STEERING, ENV_WORKER, WorkerRole

HOST = "127.0.0.1"
CLIENT, SERVER = ("10.0.0.1", 4433), ("10.0.0.2", 443)
SENT = 32  # datagrams per check, each from its own port: all on one of 2 sockets by chance is 2 in 2**32


# --- connection ids ------------------------------------------------------------------------------


def server_configuration() -> QuicConfiguration:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    config.certificate, config.private_key = certificate, key
    return config


def test_every_connection_id_a_worker_issues_starts_with_its_index():
    client_config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
    client = QuicConnection(configuration=client_config)
    client.connect(SERVER, now=0.0)
    first = client.datagrams_to_send(now=0.0)
    original = pull_quic_header(Buffer(data=first[0][0])).destination_cid  # the client's own pick
    server = WorkerConnection(
        cid_prefix=b"\x05", configuration=server_configuration(), original_destination_connection_id=original
    )
    to_server, issued = first, []
    for step in range(1, 10):  # the handshake and what follows, until neither side has more to say
        now = step / 100  # time moves, or the senders' pacing holds datagrams back
        for data, _ in to_server:
            server.receive_datagram(data, CLIENT, now=now)
        to_client = server.datagrams_to_send(now=now)
        for data, _ in to_client:
            client.receive_datagram(data, SERVER, now=now)
        issued += [e.connection_id for e in iter(server.next_event, None) if isinstance(e, ConnectionIdIssued)]
        to_server = client.datagrams_to_send(now=now)
        if not to_server and not to_client:
            break
    assert client._handshake_complete and server._handshake_complete
    ours = [c.cid for c in server._host_cids]
    assert len(ours) == 8 and len(set(ours)) == 8  # replenished after the handshake, all distinct
    assert all(len(cid) == 8 and cid[0] == 5 for cid in ours)
    assert server.host_cid == ours[0] and original not in ours
    seen_by_client = [client._peer_cid.cid, *(c.cid for c in client._peer_cid_available)]
    assert len(seen_by_client) == 8 and all(cid[0] == 5 for cid in seen_by_client)
    assert set(issued) <= set(ours) and issued


# --- the kernel's choice of socket ---------------------------------------------------------------


def kernel_refuses() -> str | None:
    try:
        os.close(steering.create_array(1))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


needs_steering = pytest.mark.skipif(
    (refused := kernel_refuses()) is not None, reason=f"the kernel refuses an eBPF socket array here ({refused})"
)


def reuseport_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.setblocking(False)
    return sock


def receivers(sockets: dict[str, socket.socket], port: int, datagram: bytes) -> dict[str, int]:
    """How many of SENT copies of `datagram`, each from a new source port, each socket received."""
    got: dict[str, int] = {}
    for _ in range(SENT):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(datagram, (HOST, port))
        ready, _, _ = select.select(list(sockets.values()), [], [], 2.0)
        assert ready, "a datagram was lost"
        for name, sock in sockets.items():
            if sock in ready:
                sock.recv(2048)
                got[name] = got.get(name, 0) + 1
    return got


def short_header(worker: int) -> bytes:
    return bytes([0x40, worker]) + os.urandom(40)  # 0x40: short header; then the destination id


@needs_steering
def test_the_kernel_steers_by_slot_and_slots_do_not_move_when_a_socket_is_replaced():
    first = reuseport_socket()
    port = first.getsockname()[1]
    sockets = {"w0": first, "w1": reuseport_socket(port), "w2": reuseport_socket(port)}
    array = steering.create_array(3)
    try:
        for worker, sock in enumerate(sockets.values()):
            steering.Steering(worker, {f"{HOST}:{port}": array}).join(Listen(HOST, port), sock)
        for worker, name in enumerate(sockets):
            assert receivers(sockets, port, short_header(worker)) == {name: SENT}
        long_header = bytes([0xC0, 0, 0, 0, 1, 8, 1]) + os.urandom(1200)  # an Initial for a new connection
        assert len(receivers(sockets, port, long_header)) > 1  # the kernel's hash, over every socket
        assert len(receivers(sockets, port, short_header(9))) > 1  # no such slot: the hash too

        sockets.pop("w0").close()  # w2 takes w0's place in the group's array; the slot is emptied
        assert receivers(sockets, port, short_header(1)) == {"w1": SENT}
        assert receivers(sockets, port, short_header(2)) == {"w2": SENT}
        assert len(receivers(sockets, port, short_header(0))) == 2  # an empty slot: the hash picks

        sockets["w0 again"] = reuseport_socket(port)
        steering.Steering(0, {f"{HOST}:{port}": array}).join(Listen(HOST, port), sockets["w0 again"])
        for worker, name in enumerate(["w0 again", "w1", "w2"]):
            assert receivers(sockets, port, short_header(worker)) == {name: SENT}
    finally:
        os.close(array)
        for sock in sockets.values():
            sock.close()


def test_a_classic_bpf_program_picks_a_position_which_another_socket_takes_when_one_is_replaced():
    """Why steering uses a socket array: SO_ATTACH_REUSEPORT_CBPF (unprivileged) returns a position
    in the group's array of sockets, and the kernel fills a closed socket's position with the last one."""
    first = reuseport_socket()
    port = first.getsockname()[1]
    sockets = {"w0": first, "w1": reuseport_socket(port)}
    load_payload_byte_1, return_it = struct.pack("=HBBI", 0x30, 0, 0, 1), struct.pack("=HBBI", 0x16, 0, 0, 0)
    code = ctypes.create_string_buffer(load_payload_byte_1 + return_it)  # the id's first byte, as a position
    first.setsockopt(socket.SOL_SOCKET, 51, struct.pack("=HxxxxxxQ", 2, ctypes.addressof(code)))
    try:
        assert receivers(sockets, port, short_header(1)) == {"w1": SENT}
        sockets.pop("w0").close()
        sockets["w0 again"] = reuseport_socket(port)
        assert receivers(sockets, port, short_header(1)) == {"w0 again": SENT}  # w1's datagrams, lost to it
    finally:
        for sock in sockets.values():
            sock.close()


# --- where the kernel refuses ----------------------------------------------------------------------


def test_the_supervisor_makes_no_arrays_where_the_kernel_refuses(monkeypatch, caplog):
    listens = [Listen(HOST, 8443), Listen("::1", 8443)]
    made = []

    def first_only(cmd, attr):  # the first array is made, the second refused: the first is closed again
        if made:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))
        made.append(os.open(os.devnull, os.O_RDONLY))
        return made[-1]

    monkeypatch.setattr(steering, "_bpf", first_only)
    with caplog.at_level(logging.WARNING, "gatewayd.quic"):
        assert steering.arrays_for_workers(listens, 2) == {}
    with pytest.raises(OSError):
        os.fstat(made[0])
    assert "cannot be steered to their worker by connection id (Operation not permitted)" in caplog.text

    caplog.clear()
    monkeypatch.undo()
    monkeypatch.setattr(steering, "_BPF_SYSCALL", None)  # not Linux on x86-64 or arm64
    with caplog.at_level(logging.WARNING, "gatewayd.quic"):
        assert steering.arrays_for_workers(listens, 2) == {}
        assert steering.arrays_for_workers(listens, steering.MAX_WORKERS + 1) == {}
    assert "(no eBPF on " in caplog.text and f"(more than {steering.MAX_WORKERS} workers)" in caplog.text


def test_a_worker_whose_socket_cannot_join_serves_as_without_steering(caplog):
    sock = reuseport_socket()
    port = sock.getsockname()[1]
    read_end, write_end = os.pipe()  # not a socket array: the kernel refuses it
    try:
        with caplog.at_level(logging.WARNING, "gatewayd.quic"):
            steering.Steering(1, {f"{HOST}:{port}": read_end}).join(Listen(HOST, port), sock)
            steering.Steering(1, {"127.0.0.1:1": read_end}).join(Listen(HOST, port), sock)
        assert caplog.text.count(f"HTTP/3 on {HOST}:{port}: datagrams not steered by connection id") == 2
        assert f"{HOST}:{port} was not a QUIC address when the supervisor started" in caplog.text
        assert receivers({"w1": sock}, port, short_header(1)) == {"w1": SENT}
    finally:
        os.close(read_end)
        os.close(write_end)
        sock.close()


def test_a_worker_learns_its_arrays_from_its_supervisor():
    env = {ENV_WORKER: "1", ENV_QUIC_STEERING: "127.0.0.1:8443=7,[::1]:8443=8"}
    assert WorkerRole.from_env(env).quic_steering == {"127.0.0.1:8443": 7, "[::1]:8443": 8}
    assert WorkerRole.from_env({ENV_WORKER: "1", ENV_QUIC_STEERING: ""}).quic_steering == {}
