"""The supervisor of a gateway with several worker processes (`server.workers` above 1).

Each worker is a complete gatewayd: it loads the config, watches the file, binds its own listening
sockets with SO_REUSEPORT (the kernel spreads new connections over the workers' sockets) and serves.
The supervisor serves nothing. It starts the workers, restarts one that dies (after 0.5 s, doubling
up to 30 s while it keeps dying), gives up when one worker dies `CRASH_LOOP_DEATHS` times within
`CRASH_LOOP_WINDOW_S` (stopping the others, exit code 1), forwards SIGHUP (reload) to every worker,
and on SIGTERM or SIGINT forwards SIGTERM and waits for the workers to finish their requests in
flight (up to `server.shutdown_timeout`, then 2 s more before it kills stragglers), exiting 0.

Readiness: each worker sends the supervisor SIGNAL_READY once it serves its first config; when every
worker has, the supervisor sends each of them SIGNAL_READY in turn, and from then on their `/health`
says `ok` instead of `starting` (503), so that a load balancer sends traffic only to a host whose
workers all serve. Workers started later (restarts) are told at start (`ENV_READY`): the host
stays ready.

Workers are subprocesses running `python -m gatewayd serve ...`, the command a single-process
gateway runs, told by environment variables (`ENV_*` below, internal) which worker they are, which
core to pin themselves to and where the host's state folder is. Chosen over a multiprocessing
spawn context because:

- a worker then is exactly a single-process gateway plus three settings: one code path to run and
  test, no pickled start-up arguments, and `ps` shows what each process is;
- the supervisor stays small and synchronous: it runs no event loop, engine or upstream client, so
  nothing of theirs can hang or crash it, and it needs no multiprocessing helper process (resource
  tracker) or pipes;
- the workers' signal mask is under our control: the supervisor blocks SIGTERM, SIGINT, SIGHUP,
  SIGCHLD and SIGNAL_READY and waits for them with `sigtimedwait`; a fork and exec keeps blocked
  signals blocked, so a worker receives no signal until its own handlers are installed and it
  unblocks them (`run._serve`). A SIGHUP or SIGTERM sent while a worker is still starting is
  delivered then, instead of killing it with the default action.

The mask is per thread, and a thread inherits its creator's: a signal sent to the process goes to
any thread that does not block it, and one that is not waiting for it takes the default action
(SIGHUP and SIGTERM kill the process). So `gatewayd serve` blocks SIGNALS before it imports anything
that can start a thread (`cli.main`; numpy starts its pool when it is imported), and every thread of
the supervisor (and of a worker, until it unblocks them in its main thread) blocks them too; only
the main thread, waiting in `sigtimedwait`, takes them.

With `server.quic`, the supervisor creates before starting any worker the eBPF socket arrays that
steer QUIC datagrams to their worker by connection id (quic/steering.py), and every worker, restarts
included, inherits them (`ENV_QUIC_STEERING`).

Workers ask the kernel for a SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so killing the
supervisor with SIGKILL does not leave them serving. The state folder (`tempfile.mkdtemp`) is
removed when the supervisor exits, except after a SIGKILL. Linux only (sigtimedwait, CPU affinity).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field

from ..config.model import Config
from .quic.steering import arrays_for_workers

log = logging.getLogger("gatewayd.supervisor")

# internal: set by the supervisor for its workers, never by users
ENV_WORKER = "GATEWAYD_WORKER"  # the worker's index, 0 to workers-1
ENV_CPU = "GATEWAYD_WORKER_CPU"  # with server.cpu_pinning: the core the worker pins itself to
ENV_SUPERVISOR = "GATEWAYD_SUPERVISOR_PID"
ENV_STATE_DIR = "GATEWAYD_STATE_DIR"  # the folder for state shared by the host's workers
ENV_READY = "GATEWAYD_HOST_READY"  # set once every worker of the host has served its first config
ENV_QUIC_STEERING = "GATEWAYD_QUIC_STEERING"  # `host:port=fd,...`: the socket array of each QUIC address

# worker -> supervisor: "I serve my first config" (with a mark in the state folder, since two
# workers' signals sent at once merge into one); supervisor -> worker: "every worker does"
SIGNAL_READY = signal.SIGUSR1


def serving_mark(state_dir: str, pid: int) -> str:
    """The file a worker leaves in the host's state folder once it serves its first config."""
    return os.path.join(state_dir, f"serving-{pid}")
# blocked in the supervisor (and so, until they unblock them, in the workers it starts)
SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, SIGNAL_READY})

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_S = 60.0
KILL_AFTER_TIMEOUT_S = 2.0  # a worker still running this long after shutdown_timeout is killed
POLL_S = 1.0  # longest sleep between looks at the workers (SIGCHLD usually wakes us sooner)


def allowed_cpus() -> list[int]:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process learns from its supervisor."""

    index: int
    cpu: int | None
    state_dir: str | None
    supervisor_pid: int | None
    host_ready: bool = False  # every worker of the host has served its first config
    quic_steering: dict[str, int] = field(default_factory=dict)  # QUIC listen address -> its socket array's fd

    @classmethod
    def from_env(cls, env=os.environ) -> WorkerRole | None:
        """The role given in `env`, or None when this process was not started by a supervisor."""
        if ENV_WORKER not in env:
            return None
        cpu = env.get(ENV_CPU)
        supervisor = env.get(ENV_SUPERVISOR)
        steering = (item.rpartition("=") for item in env.get(ENV_QUIC_STEERING, "").split(",") if item)
        return cls(
            index=int(env[ENV_WORKER]),
            cpu=int(cpu) if cpu else None,
            state_dir=env.get(ENV_STATE_DIR) or None,
            supervisor_pid=int(supervisor) if supervisor else None,
            host_ready=env.get(ENV_READY) == "1",
            quic_steering={address: int(fd) for address, _, fd in steering},
        )


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name} (signal {-returncode})"
    return f"exited with code {returncode}"


@dataclass
class _Slot:
    index: int
    cpu: int | None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    restart_at: float | None = None
    backoff: float = BACKOFF_FIRST_S
    deaths: deque = field(default_factory=deque)  # monotonic times of recent deaths
    serving: bool = False  # its current process said it serves its config (SIGNAL_READY)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, path: str, listen: list[str], config: Config, workers: int):
        self.path = path
        self.listen = list(listen)
        self.config = config
        cpus = allowed_cpus()
        pin = config.server.cpu_pinning
        self.slots = [_Slot(i, cpus[i % len(cpus)] if pin else None) for i in range(workers)]
        self.state_dir = ""
        self._store = None  # the host store, opened at the first restart (to count restarts)
        self.ready = False  # every worker has served its first config (and has been told so)
        self.quic_steering: dict[str, int] = {}  # QUIC listen address -> socket array (quic/steering.py)

    def run(self) -> int:
        """Start the workers and look after them until a stop signal (0) or a crash loop (1)."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # already, when started by `gatewayd serve`
        self.state_dir = tempfile.mkdtemp(prefix="gatewayd-")
        try:
            server = self.config.server
            log.info(
                "gatewayd supervisor (pid %d) starting %d %s workers for %s (state folder %s)%s",
                os.getpid(),
                len(self.slots),
                server.engine,
                self.path,
                self.state_dir,
                " pinned to cores " + ",".join(str(s.cpu) for s in self.slots) if server.cpu_pinning else "",
            )
            if server.quic is not None:
                self.quic_steering = arrays_for_workers(server.quic.listen, len(self.slots))
            for slot in self.slots:
                self._spawn(slot)
            code = self._supervise()
            self._stop_all()
            log.info("gatewayd stopped")
            return code
        finally:
            for slot in self.slots:  # only left running when something above raised
                if slot.alive():
                    slot.proc.kill()
                    slot.proc.wait()
            if self._store is not None:
                self._store.close()
            for fd in self.quic_steering.values():
                os.close(fd)
            shutil.rmtree(self.state_dir, ignore_errors=True)
            # a readiness signal still pending (from a worker that died since) would kill this
            # process once unblocked: take it first
            while signal.sigtimedwait({SIGNAL_READY}, 0) is not None:
                pass
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    # --- workers ----------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        env = dict(os.environ)
        env[ENV_WORKER] = str(slot.index)
        env[ENV_SUPERVISOR] = str(os.getpid())
        env[ENV_STATE_DIR] = self.state_dir
        env.pop(ENV_CPU, None)
        if slot.cpu is not None:
            env[ENV_CPU] = str(slot.cpu)
        env[ENV_READY] = "1" if self.ready else "0"
        env[ENV_QUIC_STEERING] = ",".join(f"{address}={fd}" for address, fd in self.quic_steering.items())
        cmd = [sys.executable, "-m", "gatewayd", "serve", "--config", self.path, *(f"--listen={l}" for l in self.listen)]
        arrays = tuple(self.quic_steering.values())
        slot.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, pass_fds=arrays)
        slot.started = time.monotonic()
        slot.restart_at = None
        slot.serving = False
        log.info("worker %d started (pid %d%s)", slot.index, slot.proc.pid, "" if slot.cpu is None else f", core {slot.cpu}")

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.alive():
                try:
                    slot.proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    def _supervise(self) -> int:
        while True:
            now = time.monotonic()
            due = [s.restart_at - now for s in self.slots if s.restart_at is not None]
            info = signal.sigtimedwait(SIGNALS, max(0.0, min([POLL_S, *due])))
            if info is not None:
                if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                    log.info(
                        "%s: stopping the workers (requests in flight get up to %gs)",
                        signal.Signals(info.si_signo).name,
                        self.config.server.shutdown_timeout,
                    )
                    return 0
                if info.si_signo == signal.SIGHUP:
                    log.info("SIGHUP: asking every worker to reload")
                    self._signal_all(signal.SIGHUP)
            if not self.ready:
                self._serving()
            for slot in self.slots:
                if slot.proc is not None and slot.proc.poll() is not None and self._died(slot):
                    return 1
            now = time.monotonic()
            for slot in self.slots:
                if slot.restart_at is not None and slot.restart_at <= now:
                    self._spawn(slot)
                    self._count_restart()

    def _serving(self) -> None:
        """A worker serves its first config (maybe several: their signals merge); once every worker
        does, tell them all."""
        for slot in self.slots:
            if slot.proc is not None and os.path.exists(serving_mark(self.state_dir, slot.proc.pid)):
                slot.serving = True
        if not self.ready and all(slot.serving for slot in self.slots):
            self.ready = True
            log.info("all %d workers serve: ready", len(self.slots))
            self._signal_all(SIGNAL_READY)

    def _count_restart(self) -> None:
        """Add one to the host's `gatewayd_worker_restarts_total` (kept in the host store); never fatal."""
        try:
            from ..observe.metrics import worker_restarted
            from ..store.host import open_host_store

            if self._store is None:
                self._store = open_host_store(self.state_dir)
            worker_restarted(self._store)
        except Exception as exc:  # noqa: BLE001 - metrics are not worth a supervisor
            log.warning("could not count the worker restart: %s", exc)

    def _died(self, slot: _Slot) -> bool:
        """Record a worker's death and schedule its restart; True when it is a crash loop."""
        proc, now = slot.proc, time.monotonic()
        slot.proc = None
        how = describe_exit(proc.returncode)
        lived = now - slot.started
        if lived >= CRASH_LOOP_WINDOW_S:
            slot.backoff = BACKOFF_FIRST_S  # it had been serving for a while: not part of a loop
        slot.deaths.append(now)
        while slot.deaths and now - slot.deaths[0] > CRASH_LOOP_WINDOW_S:
            slot.deaths.popleft()
        if len(slot.deaths) >= CRASH_LOOP_DEATHS:
            log.error(
                "worker %d (pid %d) %s: %d deaths within %gs, a crash loop (its own messages above say why); stopping all workers, exit code 1",
                slot.index,
                proc.pid,
                how,
                len(slot.deaths),
                CRASH_LOOP_WINDOW_S,
            )
            return True
        delay = slot.backoff
        slot.backoff = min(slot.backoff * 2, BACKOFF_MAX_S)
        slot.restart_at = now + delay
        log.error("worker %d (pid %d) %s after %.1fs; restarting it in %gs", slot.index, proc.pid, how, lived, delay)
        return False

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still running after shutdown_timeout + 2 s."""
        for slot in self.slots:
            slot.restart_at = None
        running = [s for s in self.slots if s.alive()]
        for slot in running:
            slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.shutdown_timeout + KILL_AFTER_TIMEOUT_S
        while any(s.alive() for s in running):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            signal.sigtimedwait(SIGNALS, min(left, 0.1))  # SIGCHLD wakes us; further stop signals are moot
        for slot in running:
            if slot.alive():
                log.warning("worker %d (pid %d) still running after shutdown_timeout + %gs: killing it", slot.index, slot.proc.pid, KILL_AFTER_TIMEOUT_S)
                slot.proc.kill()
                slot.proc.wait()
            elif slot.proc.returncode != 0:
                log.warning("worker %d (pid %d) %s while stopping", slot.index, slot.proc.pid, describe_exit(slot.proc.returncode))
