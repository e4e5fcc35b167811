"""Write a gatewayd config for a scenario and run ``gatewayd`` on it."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import textwrap
import time
from pathlib import Path

from procs import Proc, StartupError, wait_http_ok

REPO = Path(__file__).resolve().parent.parent
READY_PATH = "/health"


def find_command(explicit: str | None) -> str:
    """The gatewayd executable: --gatewayd, else next to this Python, on PATH, or in the repo's venv."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise SystemExit(f"--gatewayd {explicit!r}: not an executable")
        return found
    candidates = [Path(sys.executable).parent / "gatewayd", shutil.which("gatewayd"), REPO / ".venv" / "bin" / "gatewayd"]
    for c in candidates:
        if c and Path(c).is_file():
            return str(c)
    raise SystemExit("gatewayd not found: activate the project's virtualenv or pass --gatewayd PATH")


def interpreter(command: str) -> str:
    """The Python running gatewayd (from the script's #! line), for version reporting."""
    try:
        with open(command, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError:
        return sys.executable
    if first.startswith("#!"):
        parts = first[2:].split()
        if parts and Path(parts[0]).name.startswith("python") and Path(parts[0]).exists():
            return parts[0]
    return sys.executable


def render(scenario_yaml: str, port: int, workers: int, tls_port: int | None = None,
           cert: Path | None = None, key: Path | None = None, quic: bool = False, record: bool = True,
           engine: str | None = None) -> str:
    """The config: ``server`` (always with an explicit ``workers``, since its default, ``auto``,
    is one per core), then the scenario's YAML. ``tls_port`` adds an HTTPS listener (HTTP/2 or
    HTTP/1.1 by ALPN) and ``quic`` HTTP/3 on the same port number over UDP; ``record=False`` turns
    the gateway's recording of requests off (``observability.record: false``), to see what it costs;
    ``engine`` sets ``server.engine`` (else the gateway's default)."""
    head = ["version: 1", "server:", f'  listen: ["127.0.0.1:{port}"]', f"  workers: {workers}"]
    if engine is not None:
        head.append(f"  engine: {engine}")
    if tls_port is not None:
        head.append(f'  tls: {{listen: ["127.0.0.1:{tls_port}"], cert: "{cert}", key: "{key}"}}')
    if quic:
        if tls_port is None:
            raise ValueError("HTTP/3 needs the TLS listener's certificate")
        head.append("  quic: {}")
    if not record:
        head.append("observability: {record: false}")
    return "\n".join(head) + "\n" + textwrap.dedent(scenario_yaml).strip("\n") + "\n"


def start(command: str, config_text: str, port: int, workers: int, directory: Path) -> Proc:
    """Write the config, start gatewayd in the foreground, return once /health answers 200."""
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "gatewayd.yaml"
    conf.write_text(config_text)
    proc = Proc("gatewayd", [command, "--config", str(conf), "--listen", f"127.0.0.1:{port}"],
                directory / "gatewayd.log")
    try:
        wait_http_ok(proc, port, READY_PATH)
        if workers > 1:
            wait_all_workers(proc, port, workers)
    except StartupError as exc:
        proc.stop()
        hint = ""
        if workers != 1:
            hint = (f"\n(--workers {workers} writes `server: {{workers: {workers}}}` into the config; "
                    "this gatewayd may not support more than one worker — try --workers 1)")
        raise StartupError(f"{exc}{hint}\n--- config ---\n{config_text}") from None
    except BaseException:
        proc.stop()
        raise
    return proc


def wait_all_workers(proc: Proc, port: int, workers: int, timeout: float = 30.0) -> None:
    """Wait until every worker has answered ``/health`` (its ``worker`` field), each time on a new
    connection, which the kernel hands to one of the workers' listening sockets. One worker answering
    is not enough: a connection that lands on a worker still starting waits in its socket's backlog,
    which skews the first measurements (and can leave a load generator's clients connecting after its
    run has ended)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if not proc.alive():
            raise StartupError(f"{proc.name} {proc.exit_description()} during startup:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise StartupError(f"only workers {sorted(seen)} of {workers} answered {READY_PATH} within "
                               f"{timeout:.0f} s:\n{proc.tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", READY_PATH)
            resp = conn.getresponse()
            doc = json.loads(resp.read()) if resp.status == 200 else None
        except (OSError, http.client.HTTPException, ValueError):
            doc = None
        finally:
            conn.close()
        if isinstance(doc, dict) and "worker" not in doc:
            return  # this gatewayd's /health does not say which worker answered: nothing to wait for
        if isinstance(doc, dict) and isinstance(doc["worker"], int):
            seen.add(doc["worker"])
        else:
            time.sleep(0.05)
