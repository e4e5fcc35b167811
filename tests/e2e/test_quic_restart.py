"""HTTP/3 connections across a worker's restart: with 2 workers, long-lived aioquic connections held
on both, one worker is killed with SIGKILL and restarted by the supervisor; every connection of the
other worker keeps working, and new connections are served by both.

Without steering by connection id this fails: the restarted worker's socket joins the SO_REUSEPORT
group at the end of its array, and when the killed one was not the last, the kernel's hash sends the
survivor's datagrams to the new socket (see gatewayd/server/quic/steering.py). Which worker's socket
is first in that array is not known from outside, so each worker in turn is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from conftest import HOST
from test_http3 import H3Client, Response, demo, recorder, run, start, tls_files  # noqa: F401 - fixtures too
from test_quic_steering import needs_steering

PER_WORKER = 3  # long-lived connections held on each worker
MOST_CONNECTIONS = 40  # opened to get PER_WORKER on both (all on one worker: 2 chances in 2**40)
RESTART_WAIT_S = 20.0
REQUEST_TIMEOUT_S = 5.0  # aioquic's client resends what is lost well within this


async def health(client: H3Client) -> dict:
    """/health over this connection: the answering worker's index and pid."""
    r = client.send_request("GET", "/health")
    async with asyncio.timeout(REQUEST_TIMEOUT_S):
        await r["done"]
    response = Response(r)
    assert response.status == 200, response.body
    return response.json()


async def wait_for_restart(gw, victim: int, bound_before: int) -> None:
    """Until the supervisor has replaced pid `victim` and the new worker listens on UDP."""
    deadline = time.monotonic() + RESTART_WAIT_S
    while gw.log().count("HTTP/3 on ") <= bound_before:
        assert time.monotonic() < deadline, f"worker pid {victim} not replaced within {RESTART_WAIT_S}s:\n{gw.log()}"
        await asyncio.sleep(0.05)


async def kill_each_worker_in_turn(h3) -> list[str]:
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    config.load_verify_locations(h3.ca)
    rounds = []
    for victim_index in (0, 1):
        async with contextlib.AsyncExitStack() as stack:

            async def opened() -> tuple[H3Client, dict]:
                connecting = connect(HOST, h3.port, configuration=config, create_protocol=H3Client)
                client = await stack.enter_async_context(connecting)
                return client, await health(client)

            held: dict[int, list[tuple[H3Client, int]]] = {0: [], 1: []}
            for _ in range(MOST_CONNECTIONS):
                client, seen = await opened()
                held[seen["worker"]].append((client, seen["pid"]))
                if min(len(on) for on in held.values()) >= PER_WORKER:
                    break
            assert min(len(on) for on in held.values()) >= PER_WORKER, {w: len(on) for w, on in held.items()}
            survivor = 1 - victim_index
            victim = held[victim_index][0][1]
            bound_before = h3.gw.log().count("HTTP/3 on ")
            os.kill(victim, signal.SIGKILL)
            await wait_for_restart(h3.gw, victim, bound_before)

            for client, pid in held[survivor]:
                try:
                    seen = await health(client)
                except (TimeoutError, ConnectionError) as exc:
                    pytest.fail(f"a connection to the surviving worker {survivor} broke ({exc!r}):\n{h3.gw.log()}")
                assert (seen["worker"], seen["pid"]) == (survivor, pid)

            answered: dict[int, int] = {}
            for _ in range(MOST_CONNECTIONS):
                _, seen = await opened()
                answered[seen["worker"]] = seen["pid"]
                if len(answered) == 2:
                    break
            assert set(answered) == {0, 1}, f"new connections reached worker(s) {sorted(answered)} only"
            assert answered[victim_index] != victim
            rounds.append(f"worker {victim_index} killed: {len(held[survivor])} connections on worker {survivor} kept")
    return rounds


@needs_steering
def test_connections_on_the_other_worker_survive_a_killed_worker(gatewayd, tls_files, demo, recorder, engine):
    if engine != "granian":
        pytest.skip("the QUIC listener is the same whatever the TCP engine; checked once")
    h3 = start(gatewayd, tls_files, demo.url, recorder, server_extra="  workers: 2\n")
    assert "not steered" not in h3.gw.log() and "cannot be steered" not in h3.gw.log(), h3.gw.log()
    print(*run(asyncio.wait_for(kill_each_worker_in_turn(h3), 120)), sep="\n")
