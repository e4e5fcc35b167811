"""Shared fixtures: demo upstreams and gatewayd processes, started on free loopback ports.

Every test that talks to a gateway runs once per serving engine: the `engine` fixture is
parametrized (module-scoped, so each module starts its gateways once per engine), and both
gateway factories build on it.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import redisproc

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_SCRIPT = ROOT / "examples" / "upstream.py"
ENGINES = ("granian", "hypercorn")
HOST = "127.0.0.1"

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the process is still there after STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)


def with_engine(text: str, engine: str) -> str:
    """The config text with `engine: <engine>` set under the top-level `server:` mapping (and
    `workers: 1`, see `with_workers`)."""
    text = textwrap.dedent(text).lstrip("\n")
    lines = text.splitlines()
    out: list[str] = []
    injected = False
    for line in lines:
        if not injected and re.match(r"^server:\s*(#.*)?$", line):
            out.append(line)
            out.append(f"  engine: {engine}")
            injected = True
            continue
        if not injected and re.match(r"^server:\s*\{\s*\}\s*$", line):
            out.append("server:")
            out.append(f"  engine: {engine}")
            injected = True
            continue
        out.append(line)
    if not injected:
        out.append("server:")
        out.append(f"  engine: {engine}")
    return with_workers("\n".join(out) + "\n")


def with_workers(text: str, workers: int = 1) -> str:
    """The config text with `workers: <workers>` under `server:` unless it sets `workers` itself:
    test gateways serve in one process (so `/health`'s pid is the started process's) unless the
    test asks for more."""
    text = textwrap.dedent(text).lstrip("\n")
    if re.search(r"^\s+workers\s*:", text, re.M):
        return text if text.endswith("\n") else text + "\n"
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^server:\s*(#.*)?$", line):
            lines.insert(i + 1, f"  workers: {workers}")
            return "\n".join(lines) + "\n"
    return "\n".join([*lines, "server:", f"  workers: {workers}"]) + "\n"


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write a sibling temp file, then rename it over `path`, as editors and config managers do."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".yaml")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- upstreams --------------------------------------------------------------------------------


class Upstream:
    def __init__(self, name: str, port: int, proc: subprocess.Popen, log_path: Path):
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        _stop(self.proc)


def _start_upstream(name: str, workdir: Path) -> Upstream:
    port = free_port()
    log_path = workdir / f"upstream-{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            # -S: without site-packages, as in a terminal where no virtual environment is active
            [sys.executable, "-S", str(UPSTREAM_SCRIPT), "--host", HOST, "--port", str(port), "--name", name],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=_env(),
        )
    up = Upstream(name, port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=1.0) as client:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"upstream {name!r} exited with {proc.returncode} before answering:\n{up.log()}")
            try:
                client.get(f"{up.url}/ready")
                return up
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                up.stop()
                pytest.fail(f"upstream {name!r} did not answer within {START_TIMEOUT_S:.0f}s:\n{up.log()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Factory: `upstream(name)` starts examples/upstream.py on a free port; all are killed at teardown."""
    workdir = tmp_path_factory.mktemp("upstreams")
    started: list[Upstream] = []

    def start(name: str = "upstream") -> Upstream:
        up = _start_upstream(name, workdir)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


# --- gateways ---------------------------------------------------------------------------------


class Gateway:
    def __init__(self, engine: str, config_path: Path, port: int, proc: subprocess.Popen, log_path: Path):
        self.engine = engine
        self.config_path = config_path
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.proc = proc
        self.log_path = log_path

    def log(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def render(self, config_text: str) -> str:
        """A config text as this gateway would be started with it (engine injected)."""
        return with_engine(config_text, self.engine)

    def write_config(self, config_text: str) -> str:
        """Replace the config file atomically with `config_text` (engine injected); returns the text written."""
        text = self.render(config_text)
        write_atomically(self.config_path, text)
        return text

    def health(self, timeout: float = 2.0) -> dict:
        r = httpx.get(f"{self.url}/health", timeout=timeout)
        assert r.status_code == 200, r.text
        return r.json()

    def stop(self) -> None:
        _stop(self.proc)


def _start_gateway(engine: str, config_text: str | None, workdir: Path, name: str, config_path: Path | None = None) -> Gateway:
    port = free_port()
    if config_path is None:
        config_path = workdir / f"{name}.yaml"
        config_path.write_text(with_engine(config_text, engine))
    # logs go to a subfolder: the gateway watches its config's folder (not recursively)
    log_path = workdir / "logs" / f"{name}.stderr.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gatewayd", "--config", str(config_path), "--listen", f"{HOST}:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=_env(),
        )
    gw = Gateway(engine, config_path, port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = "no attempt"
    with httpx.Client(timeout=1.0) as client:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"gatewayd ({engine}) exited with {proc.returncode} before serving /health; stderr:\n{gw.log()}")
            try:
                r = client.get(f"{gw.url}/health")
                if r.status_code == 200:
                    return gw
                last_error = f"/health answered {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as exc:
                last_error = repr(exc)
            if time.monotonic() > deadline:
                gw.stop()
                pytest.fail(
                    f"gatewayd ({engine}) did not serve /health within {START_TIMEOUT_S:.0f}s "
                    f"(last: {last_error}); stderr:\n{gw.log()}"
                )
            time.sleep(0.05)


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> str:
    """The serving engine under test; every gateway test runs once per engine."""
    return request.param


class _GatewayFactory:
    def __init__(self, engine: str, workdir_factory):
        self.engine = engine
        self._workdir_factory = workdir_factory
        self._started: list[Gateway] = []

    def __call__(self, config_text: str | None = None, *, config_path: Path | None = None) -> Gateway:
        """Start a gateway on `config_text` (written to a new file, engine injected), or on an
        existing `config_path` the caller prepared (already rendered with `with_engine`)."""
        if (config_text is None) == (config_path is None):
            raise TypeError("give exactly one of config_text and config_path")
        workdir = self._workdir_factory()
        gw = _start_gateway(self.engine, config_text, workdir, f"gateway-{len(self._started)}", config_path)
        self._started.append(gw)
        return gw

    def close(self) -> None:
        for gw in self._started:
            gw.stop()


@pytest.fixture
def gatewayd(engine, tmp_path):
    """Factory: `gatewayd(yaml_text)` starts a gateway for this test on a free port, stopped at teardown.

    The returned object has `.url`, `.config_path`, `.proc`, `.log()` (its stderr so far),
    `.engine`, `.write_config(text)` and `.health()`.
    """
    counter = iter(range(1_000))
    factory = _GatewayFactory(engine, lambda: _subdir(tmp_path, f"gw{next(counter)}"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def gatewayd_module(engine, tmp_path_factory):
    """Like `gatewayd`, but the gateways live for the whole module (per engine)."""
    factory = _GatewayFactory(engine, lambda: tmp_path_factory.mktemp(f"gw-{engine}"))
    yield factory
    factory.close()


def _subdir(base: Path, name: str) -> Path:
    d = base / name
    d.mkdir()
    return d


# --- redis ------------------------------------------------------------------------------------


MODES = ("single", "sentinel", "cluster")  # cluster.redis.mode


@pytest.fixture
def redis_server(tmp_path):
    """Factory: `redis_server(mode="single")` starts real redis-server processes on free ports
    (tests/redisproc.py): one server, a master with its replica and a sentinel (`sentinel`), or a
    Redis Cluster of three masters (`cluster`); stopped at teardown."""
    started: list = []

    def start(mode: str = "single"):
        made = redisproc.start(mode, tmp_path / f"redis{len(started)}")
        started.append(made)
        return made

    yield start
    for made in started:
        made.stop()
