"""Write a gatewayd config for a scenario and run ``gatewayd`` on it."""

from __future__ import annotations

import shutil
import sys
import textwrap
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


def render(scenario_yaml: str, port: int, workers: int) -> str:
    head = ["version: 1", "server:", f'  listen: ["127.0.0.1:{port}"]']
    if workers != 1:
        head.append(f"  workers: {workers}")
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
    except StartupError as exc:
        proc.stop()
        hint = ""
        if workers != 1:
            hint = (f"\n(--gatewayd-workers {workers} writes `server: {{workers: {workers}}}` into the config; "
                    "this gatewayd may not support more than one worker yet — try --gatewayd-workers 1)")
        raise StartupError(f"{exc}{hint}\n--- config ---\n{config_text}") from None
    except BaseException:
        proc.stop()
        raise
    return proc
