"""Several worker processes under one supervisor (`server.workers`): connections spread over the
workers, reloads reach all of them, a killed worker is replaced while the others keep serving,
SIGTERM drains requests in flight, a crash loop stops everything, and `cpu_pinning` pins.

Every request here opens a fresh connection (`Connection: close`): the kernel picks a worker per
connection (SO_REUSEPORT), so fresh connections are what reach every worker, and what a killed
worker cannot take down with it. Each load loop is bounded both in requests and in time.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest
from conftest import HOST, ROOT, free_port, with_engine, write_atomically

WAIT_S = 15.0  # for workers to come up, be replaced, or reload (two workers start at once on 2 cores)
SPREAD_TRIES = 200  # fresh /health requests to see both workers (each lands on one at random)
LOAD_MAX_REQUESTS = 2000  # per client thread
LOAD_MAX_S = 30.0


def value_config(value: int, workers: int = 2, extra: str = "") -> str:
    return f"""
version: 1
server:
  workers: {workers}
{extra}routes:
  - name: value
    match: {{path: /value, methods: [GET]}}
    respond: {{json: {{value: {value}}}}}
"""


# --- a client that opens a new connection for every request --------------------------------------


@dataclass
class Outcome:
    started: float  # monotonic, before connecting
    ended: float
    status: int | None = None
    body: bytes = b""
    error: str | None = None  # exception class name
    phase: str | None = None  # "connect" (nothing was sent) or "response" (sent, no complete answer)


def fresh_get(port: int, path: str, timeout: float = 10.0) -> Outcome:
    out = Outcome(time.monotonic(), 0.0)
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        try:
            conn.connect()
        except OSError as exc:
            out.error, out.phase = type(exc).__name__, "connect"
            return out
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            r = conn.getresponse()
            out.body = r.read()
            out.status = r.status
        except (OSError, http.client.HTTPException) as exc:
            out.error, out.phase = type(exc).__name__, "response"
        return out
    finally:
        conn.close()
        out.ended = time.monotonic()


class Load:
    """`threads` clients, each sending GET `path` on fresh connections, one at a time, until stopped
    (or LOAD_MAX_REQUESTS each, or LOAD_MAX_S)."""

    def __init__(self, port: int, path: str, threads: int = 2, stop_on_refused: bool = False):
        self.port, self.path = port, path
        self.stop_on_refused = stop_on_refused
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + LOAD_MAX_S
        for _ in range(LOAD_MAX_REQUESTS):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            out = fresh_get(self.port, self.path)
            with self._lock:
                self.outcomes.append(out)
            if self.stop_on_refused and out.error == "ConnectionRefusedError":
                return

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=LOAD_MAX_S)


# --- helpers ---------------------------------------------------------------------------------------


def seen_workers(port: int, want: int = 2, tries: int = SPREAD_TRIES) -> dict[int, dict]:
    """/health of each worker, read over fresh connections until `want` distinct workers answered
    (or `tries` requests were made)."""
    seen: dict[int, dict] = {}
    for _ in range(tries):
        out = fresh_get(port, "/health", timeout=3.0)
        if out.status == 200:
            h = json.loads(out.body)
            seen[h["worker"]] = h
            if len(seen) == want:
                break
        else:
            time.sleep(0.05)
    return seen


def workers_by_index(gw, want: int = 2) -> dict[int, dict]:
    """Like `seen_workers`, waiting up to WAIT_S for the workers to come up; fails if they do not."""
    deadline = time.monotonic() + WAIT_S
    seen: dict[int, dict] = {}
    while time.monotonic() < deadline:
        seen = seen_workers(gw.port, want, tries=20)
        if len(seen) == want:
            return seen
        if gw.proc.poll() is not None:
            pytest.fail(f"gatewayd exited with {gw.proc.returncode}; stderr:\n{gw.log()}")
    pytest.fail(f"saw workers {sorted(seen)} only, over fresh connections for {WAIT_S}s; stderr:\n{gw.log()}")


def wait_until(predicate, what: str, gw, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r}); stderr:\n{gw.log()}")


def gone(pid: int) -> bool:
    """True once every thread of process `pid` has exited, so its sockets are closed. (Its main
    thread turns zombie before the others finish exiting: that is not enough.)"""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        return state in ("Z", "X") and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, ProcessLookupError):  # reaped, or being reaped
        return True


def wait_gone(pid: int, timeout: float = 5.0) -> float:
    """Wait (polling every millisecond) until `gone(pid)`; the monotonic time it was seen gone."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} still there {timeout}s after SIGKILL")
        time.sleep(0.001)
    return time.monotonic()


def parent_of(pid: int) -> int:
    return int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE).group(1))


def proxy_config(upstream_url: str, workers: int, shutdown_timeout: str) -> str:
    return f"""
version: 1
server:
  workers: {workers}
  shutdown_timeout: {shutdown_timeout}
upstreams:
  up:
    targets: ["{upstream_url}"]
routes:
  - match: {{path_prefix: /up}}
    upstream: up
"""


# --- spreading and reloads ------------------------------------------------------------------------


def test_connections_spread_over_the_workers_and_reloads_reach_them_all(gatewayd, engine, tmp_path):
    """Fresh connections reach both workers; a SIGHUP to the supervisor and a change of the file
    each bring both workers to the same new generation, without restarting either.

    The config path starts as a symlink into a folder the workers do not watch, whose file is then
    replaced: only the SIGHUP that the supervisor forwards can make the workers see that change.
    Then the path itself is replaced by a new file, which the workers' file watchers see."""
    data, conf = tmp_path / "data", tmp_path / "conf"
    data.mkdir()
    conf.mkdir()
    (data / "gateway.yaml").write_text(with_engine(value_config(1), engine))
    (conf / "gateway.yaml").symlink_to(data / "gateway.yaml")
    gw = gatewayd(config_path=conf / "gateway.yaml")

    seen = workers_by_index(gw)
    pids = {h["pid"] for h in seen.values()}
    assert len(pids) == 2 and gw.proc.pid not in pids
    assert all(parent_of(pid) == gw.proc.pid for pid in pids), "the workers are the supervisor's children"
    assert {h["generation"] for h in seen.values()} == {1}

    # SIGHUP
    write_atomically(data / "gateway.yaml", with_engine(value_config(2), engine))
    time.sleep(0.5)  # what a file watcher would have needed
    assert {h["generation"] for h in workers_by_index(gw).values()} == {1}
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: {h["generation"] for h in workers_by_index(gw).values()} == {2}, "generation 2 on both workers", gw)
    log = gw.log()
    assert "SIGHUP: asking every worker to reload" in log
    for index in (0, 1):
        assert re.search(rf"\[worker {index}\]: reload \(SIGHUP\): generation 2", log), log

    # a new file, seen by each worker's watcher
    text = gw.write_config(value_config(3))
    sha = hashlib.sha256(text.encode()).hexdigest()

    def all_reloaded():
        now = workers_by_index(gw)
        return all(h["generation"] == 3 and h["config_sha256"] == sha for h in now.values()) and now

    now = wait_until(all_reloaded, "both workers on generation 3", gw)
    assert {h["pid"] for h in now.values()} == pids, "reloads restart no worker"
    for _ in range(20):
        out = fresh_get(gw.port, "/value")
        assert out.status == 200 and json.loads(out.body) == {"value": 3}, out


# --- a worker killed ------------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_while_the_other_serves(gatewayd, engine):
    """kill -9 of one worker while two clients send requests on fresh connections.

    Asserted: the worker is replaced (a new pid for its index) within WAIT_S; every request whose
    connection was opened after the killed process had exited got 200, so the surviving worker
    served throughout. Not asserted: requests opened before the killed worker exited may have
    been on its connections (or in its accept queue) and can get no response; they are counted
    separately as lost in the kill, must be transport errors (never an HTTP error), and are at
    most a few (each client has one request in flight at a time).
    """
    gw = gatewayd(value_config(1))
    before = workers_by_index(gw)
    victim = before[0]["pid"]
    with Load(gw.port, "/value") as load:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        dead_at = wait_gone(victim)
        replaced = wait_until(
            lambda: (h := seen_workers(gw.port, tries=20)).get(0, {}).get("pid", victim) != victim and 1 in h and h,
            "worker 0 to be replaced",
            gw,
        )
        time.sleep(0.5)  # keep the load on the replacement too
    assert replaced[1]["pid"] == before[1]["pid"], "the other worker was not touched"
    assert replaced[0]["pid"] not in (victim, before[1]["pid"])

    outcomes = load.outcomes
    ok = [o for o in outcomes if o.status == 200]
    lost = [o for o in outcomes if o.status is None and o.started <= dead_at]
    failed = [o for o in outcomes if o.status != 200 and o not in lost]
    print(f"\n{engine}: {len(outcomes)} requests, {len(ok)} ok, {len(lost)} lost in the kill, {len(failed)} failed")
    assert not failed, f"failed after the worker was gone: {failed[:5]}"
    assert len(lost) <= 6, f"lost in the kill: {lost}"
    assert all(o.error for o in lost)
    assert any(o.started > dead_at for o in ok) and any(o.started < killed_at for o in ok)
    assert re.search(rf"worker 0 \(pid {victim}\) was killed by SIGKILL \(signal 9\)", gw.log())


def test_a_worker_restarted_while_the_file_is_broken_serves_the_last_good_config(gatewayd):
    """The replacement of a killed worker starts on the host's last good config, and says why in /health."""
    gw = gatewayd(value_config(1))
    before = workers_by_index(gw)
    gw.write_config(value_config(1).replace("methods: [GET]", "methods: [get]"))
    wait_until(lambda: all(h["last_reload_error"] for h in seen_workers(gw.port).values()), "both to reject it", gw)
    victim = before[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_until(
        lambda: (h := seen_workers(gw.port, tries=20)).get(0, {}).get("pid", victim) != victim and h,
        "worker 0 to be replaced",
        gw,
    )
    assert replaced[0]["config_sha256"] == before[0]["config_sha256"]
    assert re.match(r"^.+:\d+:\d+: error: ", replaced[0]["last_reload_error"])
    assert gw.proc.poll() is None


# --- graceful stop --------------------------------------------------------------------------------

SHUTDOWN_TIMEOUT_S = 5.0
SLOW_MS = 2000
ACCEPTED_MARGIN_S = 0.05


def test_sigterm_finishes_requests_in_flight_and_exits_0(gatewayd, engine, upstream):
    """Two workers; a 2-second upstream request and two clients sending 100 ms upstream requests,
    then SIGTERM to the supervisor. (A single-process gateway runs the same worker code.)

    Asserted: the slow request and every request started more than ACCEPTED_MARGIN_S before the
    SIGTERM (so connected and sent, its upstream call under way) completes with 200; the process
    exits 0 within shutdown_timeout. Requests started later may find the listeners closed: they
    may only fail before anything was sent (connection refused), or, in the last instants before
    the listeners close, get no response; never an HTTP error or a cut body.
    """
    up = upstream("slow")
    gw = gatewayd(proxy_config(up.url, 2, f"{SHUTDOWN_TIMEOUT_S:g}s"))
    workers_by_index(gw)
    slow: list[Outcome] = []
    slow_thread = threading.Thread(target=lambda: slow.append(fresh_get(gw.port, f"/up/slow/{SLOW_MS}", timeout=15)))
    with Load(gw.port, "/up/slow/100", stop_on_refused=True) as load:
        slow_thread.start()
        time.sleep(1.0)
        term_at = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        try:
            code = gw.proc.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {SHUTDOWN_TIMEOUT_S}s after SIGTERM; stderr:\n{gw.log()}")
        exited_at = time.monotonic()
        slow_thread.join(timeout=15)
    assert code == 0, gw.log()
    [s] = slow
    assert s.status == 200 and json.loads(s.body)["upstream"] == "slow", s
    assert s.ended >= term_at + 0.5, "the slow request was in flight at SIGTERM"

    accepted = [o for o in load.outcomes if o.started < term_at - ACCEPTED_MARGIN_S]
    late = [o for o in load.outcomes if o.started >= term_at - ACCEPTED_MARGIN_S]
    assert len(accepted) >= 5
    bad = [o for o in accepted if o.status != 200]
    assert not bad, f"requests started before SIGTERM that did not complete: {bad[:5]}"
    assert all(o.status == 200 or o.status is None for o in late), [o for o in late if o.status not in (200, None)]
    assert all(o.phase == "connect" for o in late if o.status is None and o.started > exited_at)
    print(f"\n{engine}: {len(accepted)} accepted before SIGTERM, all 200; exit after {exited_at - term_at:.2f}s")
    log = gw.log()
    assert "killing it" not in log and "while stopping" not in log, log


# --- start-up failures -----------------------------------------------------------------------------


def _held_port() -> tuple[socket.socket, int]:
    """A listening loopback socket without SO_REUSEPORT (nor SO_REUSEADDR): nobody else can bind its port."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    s.listen()
    return s, s.getsockname()[1]


def _run(config: Path, port: int, timeout: float) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--config", str(config), "--listen", f"{HOST}:{port}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return proc.returncode, proc.stderr, time.monotonic() - started


def test_a_port_in_use_stops_a_single_process_gateway_with_exit_1(engine, tmp_path):
    holder, port = _held_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(with_engine(value_config(1, workers=1), engine))
    with holder:
        code, stderr, _ = _run(config, port, timeout=30)
    assert code == 1, stderr
    assert f"cannot listen on {HOST}:{port}" in stderr and "Traceback" not in stderr, stderr


def test_a_crash_loop_stops_the_supervisor_with_exit_1(tmp_path):
    """Both workers die at start-up (their port is taken); restarted after 0.5, 1, 2 and 4 s, one
    of them dies a 5th time and the supervisor stops everything with exit code 1."""
    holder, port = _held_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(value_config(1, workers=2))
    with holder:
        code, stderr, elapsed = _run(config, port, timeout=60)
    assert code == 1, stderr
    assert re.search(r"worker \d \(pid \d+\) exited with code 1: 5 deaths within 60s, a crash loop \(its own messages above say why\); stopping all workers, exit code 1", stderr), stderr
    assert re.search(r"restarting it in 0\.5s.*restarting it in 1s.*restarting it in 2s.*restarting it in 4s", stderr, re.DOTALL), stderr
    assert f"cannot listen on {HOST}:{port}" in stderr
    assert elapsed < 45
    state_dir = re.search(r"state folder (\S+)\)", stderr).group(1)
    assert not os.path.exists(state_dir), "the supervisor removes the state folder"


class Supervised:
    """A gatewayd started here (not by the engine-parametrized fixtures), with its stderr in a file."""

    def __init__(self, tmp_path: Path, config_text: str):
        config = tmp_path / "gateway.yaml"
        config.write_text(config_text)
        self.port = free_port()
        self.log_path = tmp_path / "stderr.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gatewayd", "--config", str(config), "--listen", f"{HOST}:{self.port}"],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def supervised(tmp_path):
    started: list[Supervised] = []

    def start(config_text: str) -> Supervised:
        folder = tmp_path / f"gw{len(started)}"
        folder.mkdir()
        started.append(Supervised(folder, config_text))
        return started[-1]

    yield start
    for gw in started:
        gw.close()


def test_killing_the_supervisor_stops_its_workers(supervised):
    gw = supervised(value_config(1))
    pids = [h["pid"] for h in workers_by_index(gw).values()]
    gw.proc.kill()
    gw.proc.wait(timeout=5)
    deadline = time.monotonic() + 5.0
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in pids), "workers outlived their supervisor"
    # a supervisor killed with SIGKILL cannot remove the host's state folder: done here
    shutil.rmtree(re.search(r"state folder (\S+)\)", gw.log()).group(1), ignore_errors=True)


def blocked_signals(pid: int, tid: int) -> set[signal.Signals]:
    """The signals thread `tid` of process `pid` blocks (SigBlk in /proc; a thread waiting in
    sigtimedwait shows the signals it waits for as unblocked)."""
    mask = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", Path(f"/proc/{pid}/task/{tid}/status").read_text(), re.MULTILINE).group(1), 16)
    return {s for s in signal.Signals if mask >> (s - 1) & 1}


def test_every_thread_of_the_supervisor_but_its_main_one_blocks_the_signals_it_handles(supervised, monkeypatch):
    """A signal sent to a process goes to any of its threads that does not block it, and a thread
    not waiting for it takes the default action: a SIGHUP (reload) or SIGTERM taken by numpy's
    thread pool, started when numpy is imported, would kill the supervisor. Every thread other than
    the main one must block them all (the main one takes them in sigtimedwait)."""
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # numpy's pool has a thread whatever the core count
    gw = supervised(value_config(1))
    workers_by_index(gw)
    pid = gw.proc.pid
    others = [int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid]
    assert others, "the supervisor has no thread but its main one: nothing to check"
    handled = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGUSR1}
    assert {tid: handled - blocked_signals(pid, tid) for tid in others} == {tid: set() for tid in others}


# --- cpu pinning ----------------------------------------------------------------------------------


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs at least 2 allowed cores")
def test_cpu_pinning_puts_each_worker_on_its_own_core(supervised):
    gw = supervised(value_config(1, extra="  cpu_pinning: true\n"))
    cores = sorted(os.sched_getaffinity(0))
    allowed = {}
    for index, h in workers_by_index(gw).items():
        status = Path(f"/proc/{h['pid']}/status").read_text()
        allowed[index] = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.MULTILINE).group(1)
    assert allowed[0] != allowed[1], allowed
    assert allowed == {0: str(cores[0]), 1: str(cores[1])}


# --- readiness ------------------------------------------------------------------------------------

SLOW_WORKER_S = 3.0


def test_health_says_starting_until_every_worker_serves(tmp_path):
    """Worker 1 is started SLOW_WORKER_S late (the supervisor runs it through a shell script that
    sleeps first): meanwhile worker 0 serves and its /health says `starting` with 503, as does
    `/health?ready`; once both serve, both say `ok`."""
    shim = tmp_path / "python-shim"
    shim.write_text(f'#!/bin/sh\n[ "$GATEWAYD_WORKER" = 1 ] && sleep {SLOW_WORKER_S}\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    config = tmp_path / "gateway.yaml"
    config.write_text(value_config(1))
    port = free_port()
    log_path = tmp_path / "stderr.log"
    code = f"import sys; sys.executable = {str(shim)!r}; from gatewayd.cli.main import main; sys.exit(main())"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "--config", str(config), "--listen", f"{HOST}:{port}"],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
    try:
        started = time.monotonic()
        first = None
        while first is None and time.monotonic() - started < WAIT_S:
            out = fresh_get(port, "/health", timeout=2)
            first = out if out.status is not None else None
            time.sleep(0.05)
        assert first is not None, log_path.read_text()
        answered_at = time.monotonic()
        assert first.status == 503 and json.loads(first.body)["status"] == "starting", first
        ready = fresh_get(port, "/health?ready")
        assert (ready.status, json.loads(ready.body)) == (503, {"status": "starting"})
        assert fresh_get(port, "/value").status == 200, "worker 0 serves meanwhile"
        seen: dict = {}
        while len(seen) < 2 and time.monotonic() - answered_at < WAIT_S:
            seen = seen_workers(port, tries=20)
        assert len(seen) == 2 and all(h["status"] == "ok" for h in seen.values()), log_path.read_text()
        assert time.monotonic() - answered_at > 1.0, "ready only once worker 1 served"
        assert all(fresh_get(port, "/health?ready").status == 200 for _ in range(10))
        assert "all 2 workers serve: ready" in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
