"""`gatewayd serve`: load the config, start the engine on its listeners, reload on change, stop on signal.

With `server.workers` above 1 this process becomes the supervisor of that many worker processes
(supervisor.py), each of which comes back here and serves in-process as worker N.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import sys

import uvloop

from ..config.errors import ConfigError
from ..config.load import load_bytes, read
from ..config.model import Listen, ServerConfig
from ..runtime.gateway import Gateway
from ..runtime.watch import reload_on_sighup, watch_file
from ..store import open_host_store
from .app import GatewayApp
from .supervisor import SIGNAL_READY, SIGNALS, Supervisor, WorkerRole, allowed_cpus, serving_mark

log = logging.getLogger("gatewayd")

_PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>


def _engine(name: str):
    if name == "hypercorn":
        from . import hypercorn_engine as engine
    else:
        from . import granian_engine as engine
    return engine


def serve(path: str, listen: list[str]) -> int:
    """Serve `path` in this process (`server.workers: 1`, or as a supervisor's worker), or start a
    supervisor with one worker process per `server.workers` (see supervisor.py). The exit code."""
    role = WorkerRole.from_env()
    if role is not None:
        _die_with_supervisor(role.supervisor_pid)
        _label_logs(role.index)
        return _serve_process(path, listen, role.index, role.cpu, role.state_dir, role)
    try:
        config = load_bytes(read(path), path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    workers = config.server.workers or len(allowed_cpus())
    if workers > 1:
        return Supervisor(path, listen, config, workers).run()
    cpu = allowed_cpus()[0] if config.server.cpu_pinning else None
    return _serve_process(path, listen, 0, cpu, None)


def _serve_process(
    path: str, listen: list[str], worker: int, cpu: int | None, state_dir: str | None, role: WorkerRole | None = None
) -> int:  # fmt: skip
    if cpu is not None:
        _pin(cpu)  # before any thread starts: threads inherit the affinity of the thread creating them
    store = open_host_store(state_dir)  # shared by the host's workers, or private when serving alone
    try:
        gateway = Gateway(path, store=store, state_dir=state_dir)
        gateway.status.worker = worker
        if role is not None:
            gateway.status.ready = role.host_ready
        try:
            config = gateway.start()
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        listeners = tuple(Listen.parse(s) for s in listen) or config.server.listen
        log.info(
            "gatewayd serving %s on %s with %s (pid %d, generation %d, %d routes)",
            path,
            ", ".join(f"http://{l}" for l in listeners),
            config.server.engine,
            os.getpid(),
            gateway.status.generation,
            len(config.routes),
        )
        try:
            uvloop.run(_serve(gateway, listeners, config.server, role))
        except OSError as exc:  # a listener could not be bound
            log.error("%s", exc)
            return 1
        return 0
    finally:
        store.close()


async def _together(servers, stop: asyncio.Event) -> None:
    """Run the servers side by side; the first to end (one that cannot bind, say) stops the others,
    and its error is raised."""
    tasks = [asyncio.create_task(s) for s in servers]
    for task in tasks:
        task.add_done_callback(lambda _: stop.set())
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


async def _serve(gateway: Gateway, listeners, server: ServerConfig, role: WorkerRole | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    gateway.run()
    if role is not None and role.supervisor_pid is not None:  # readiness (see supervisor.py)
        loop.add_signal_handler(SIGNAL_READY, lambda: setattr(gateway.status, "ready", True))

    def on_stop_signal() -> None:
        if not stop.is_set():
            log.info("stopping: no new connections; requests in flight get up to %gs", server.shutdown_timeout)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    reload_on_sighup(gateway)
    # `gatewayd serve` starts with these blocked (and a worker inherits them from its supervisor), so
    # that one sent during start-up waits for the handlers above instead of killing the process;
    # deliver any that are pending now
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    watcher = asyncio.create_task(watch_file(gateway, stop))
    gateway.observer.start()  # fold (10/s, in slices) and publish (1/s) latency and metrics; write the access log
    app = GatewayApp(gateway)
    if server.tls:
        log.info("serving HTTPS on %s", ", ".join(f"https://{l}" for l in server.tls.listen))
    servers = [_engine(server.engine).serve(app, listeners, server, stop)]
    if server.quic is not None:  # HTTP/3 beside the TCP listeners: same app, same loop
        from .quic.listener import serve as serve_quic
        from .quic.steering import Steering

        # session tickets: in Redis when the gateway shares them with others, else in the host store
        tickets = gateway.store if gateway.cluster is None else gateway.cluster.tickets
        steering = Steering(role.index, role.quic_steering) if role is not None and role.quic_steering else None
        servers.append(serve_quic(app, tickets, server, stop, steering))
    if role is not None and role.supervisor_pid is not None:
        loop.call_soon(_tell_serving, role.supervisor_pid, role.state_dir)  # its config loaded, its engines starting
    try:
        await _together(servers, stop)
    finally:
        stop.set()
        await watcher
        await gateway.close()
        log.info("gatewayd stopped")


def _tell_serving(supervisor_pid: int, state_dir: str) -> None:
    """Leave a mark the supervisor reads (signals sent at once by two workers merge into one), then
    wake it."""
    try:
        open(serving_mark(state_dir, os.getpid()), "wb").close()
        os.kill(supervisor_pid, SIGNAL_READY)
    except ProcessLookupError:  # the supervisor is gone, and this worker will be soon
        pass


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError) as exc:
        log.warning("cannot pin this process to core %d: %s", cpu, exc)


def _die_with_supervisor(supervisor_pid: int | None) -> None:
    """Ask the kernel for a SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux
        return
    if supervisor_pid is not None and os.getppid() != supervisor_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the request took effect; delivered once unblocked


class _WorkerLabel(logging.Filter):
    """Adds `[worker N]` to the logger name, so that the workers' lines on the shared stderr can be told apart."""

    def __init__(self, index: int):
        super().__init__()
        self.label = f"[worker {index}]"

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith(self.label):
            record.name += self.label
        return True


def _label_logs(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerLabel(index))
