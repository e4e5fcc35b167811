"""Child-process handling for the benchmark: start, wait until ready, stop.

Every server is started in its own session (so a Ctrl-C in the terminal reaches
only the harness, which then stops the children in order) and, on Linux, with
a parent-death signal so that it goes away even if the harness is killed hard.
Stopping sends SIGTERM to the child, then SIGKILL to its whole process group if
anything of it is still alive (e.g. worker processes).
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
    _PRCTL = _LIBC.prctl
except (OSError, AttributeError):  # not Linux
    _PRCTL = None


def child_setup() -> None:
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


class StartupError(RuntimeError):
    pass


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Proc:
    """A started child process whose output goes to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=child_setup,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_description(self) -> str:
        rc = self.popen.returncode
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            return f"was killed by {name}, not sent by this harness"
        return f"exited with status {rc}"

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.popen.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL whatever is left of the process group."""
        try:
            self._stop(timeout)
        except BaseException:  # e.g. a second Ctrl-C while waiting: do not leave it running
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            raise
        finally:
            self._log.close()

    def _stop(self, timeout: float) -> None:
        if self.alive():
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.alive() or self._group_alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass


def wait_listening(proc: Proc, port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            raise StartupError(f"{proc.name} {proc.exit_description()} during startup:\n{proc.tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StartupError(f"{proc.name} did not listen on port {port} within {timeout:.0f} s:\n{proc.tail()}")
        time.sleep(0.05)


def wait_http_ok(proc: Proc, port: int, path: str, timeout: float = 30.0) -> None:
    """Wait until GET path on 127.0.0.1:port answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if not proc.alive():
            raise StartupError(f"{proc.name} {proc.exit_description()} during startup:\n{proc.tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                return
            last = f"status {resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise StartupError(
                f"{proc.name} not ready (GET {path} -> {last}) within {timeout:.0f} s:\n{proc.tail()}"
            )
        time.sleep(0.1)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and its descendants still alive (Linux /proc; None elsewhere)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo, seen = 0.0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None
    return total


def free_tcp_udp_port() -> int:
    """A port number free on 127.0.0.1 for both TCP and UDP (HTTPS and HTTP/3 share it)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise StartupError("no port free for both TCP and UDP on 127.0.0.1")
