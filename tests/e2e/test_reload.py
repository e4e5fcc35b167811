"""Hot reload of a running gatewayd: file changes under load with no failed request, rejected
changes that keep the old config serving, SIGHUP, and a broken file at start-up."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import HOST, ROOT, free_port, with_engine, write_atomically

WAIT_S = 5.0
CHANGES = 20
MAX_REQUESTS = 3000
LOAD_PACE_S = 0.001  # between requests of the background client: spreads them over the reloads

VALUE_CONFIG = """
version: 1
routes:
  - name: value
    match: {{path: /value, methods: [GET]}}
    respond: {{json: {{value: {value}}}}}
  - name: other
    match: {{path: /other, methods: [GET]}}
    respond: {{body: other}}
"""

# same routes, with a schema error on the `methods` line (a lower-case method)
SCHEMA_ERROR_CONFIG = """
version: 1
routes:
  - name: value
    match: {path: /value, methods: [get]}
    respond: {json: {value: 99}}
"""

YAML_ERROR_CONFIG = """
version: 1
routes:
  - name: value
    match: {path: /value, methods: [GET]
    respond: {json: {value: 98}}
"""


def value_config(value: int) -> str:
    return VALUE_CONFIG.format(value=value)


def wait_for(predicate, what: str, gw, timeout: float = WAIT_S):
    """Poll `predicate()` until it returns something truthy; fail with the gateway's log after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except httpx.TransportError as exc:
            last = exc
        if gw.proc.poll() is not None:
            pytest.fail(f"gatewayd exited with {gw.proc.returncode} while waiting for {what}; stderr:\n{gw.log()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r}); stderr:\n{gw.log()}")
        time.sleep(0.02)


def served_value(gw) -> int:
    r = httpx.get(f"{gw.url}/value", timeout=2.0)
    assert r.status_code == 200, r.text
    return r.json()["value"]


class LoadClient(threading.Thread):
    """Sequential GETs on one keep-alive connection until stopped, MAX_REQUESTS or max_seconds."""

    def __init__(self, url: str, max_seconds: float):
        super().__init__(daemon=True)
        self.url = url
        self.max_seconds = max_seconds
        self.stop = threading.Event()
        self.values: list[int] = []
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                if len(self.values) + len(self.failures) >= MAX_REQUESTS:
                    return
                try:
                    r = client.get(self.url)
                    if r.status_code != 200:
                        self.failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        self.values.append(r.json()["value"])
                except Exception as exc:  # any failure counts
                    self.failures.append(repr(exc))
                time.sleep(LOAD_PACE_S)


def test_twenty_changes_under_load(gatewayd):
    gw = gatewayd(value_config(0))
    assert gw.health()["generation"] == 1
    load = LoadClient(f"{gw.url}/value", max_seconds=CHANGES * WAIT_S)
    load.start()
    try:
        for i in range(1, CHANGES + 1):
            gw.write_config(value_config(i))
            wait_for(lambda: gw.health()["generation"] == 1 + i, f"generation {1 + i}", gw)
            assert served_value(gw) == i
    finally:
        load.stop.set()
        load.join(timeout=10)
    assert not load.is_alive()

    health = gw.health()
    assert health["generation"] == CHANGES + 1
    assert health["last_reload_error"] is None
    assert not load.failures, f"{len(load.failures)} failed requests, first: {load.failures[:5]}"
    assert len(load.values) > 50, "the background client barely ran"
    assert set(load.values) <= set(range(CHANGES + 1))
    # one client, one request at a time: a config once seen is never replaced by an older one
    assert load.values == sorted(load.values), "a request was served by an older config than its predecessor"


def test_health_reports_the_config_hash(gatewayd):
    gw = gatewayd(value_config(0))
    health = gw.health()
    assert health["config_sha256"] == hashlib.sha256(gw.config_path.read_bytes()).hexdigest()
    assert health["pid"] == gw.proc.pid
    assert health["status"] == "ok"
    assert health["last_reload_error"] is None
    assert health["uptime_s"] >= 0
    assert isinstance(health["last_reload_at"], (int, float))

    text = gw.write_config(value_config(1))
    wait_for(lambda: gw.health()["generation"] == 2, "generation 2", gw)
    health2 = gw.health()
    assert health2["config_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert health2["last_reload_at"] >= health["last_reload_at"]


def test_invalid_change_keeps_serving_then_fix_is_picked_up(gatewayd):
    gw = gatewayd(value_config(1))
    assert served_value(gw) == 1
    before = gw.health()

    text = gw.write_config(SCHEMA_ERROR_CONFIG)
    error = wait_for(lambda: gw.health()["last_reload_error"], "last_reload_error", gw)
    lines = text.splitlines()
    line_no = next(i for i, line in enumerate(lines, 1) if "methods: [get]" in line)
    col = lines[line_no - 1].index("get") + 1
    assert error.startswith(f"{gw.config_path}:{line_no}:{col}: error: "), error
    assert re.match(r"^.+:\d+:\d+: error: ", error)
    health = gw.health()
    assert health["generation"] == before["generation"]
    assert health["config_sha256"] == before["config_sha256"]
    assert served_value(gw) == 1  # still the old config
    assert error.splitlines()[0] in gw.log()

    # a YAML syntax error is rejected the same way
    gw.write_config(YAML_ERROR_CONFIG)
    error2 = wait_for(
        lambda: (e := gw.health()["last_reload_error"]) and e != error and e, "the YAML error to be reported", gw
    )
    assert re.match(rf"^{re.escape(str(gw.config_path))}:\d+:\d+: error: ", error2), error2
    assert gw.health()["generation"] == before["generation"]
    assert served_value(gw) == 1

    # fixing the file is picked up, and clears the error
    gw.write_config(value_config(2))
    wait_for(lambda: gw.health()["generation"] == before["generation"] + 1, "the fixed config", gw)
    assert gw.health()["last_reload_error"] is None
    assert served_value(gw) == 2


def test_undoing_a_rejected_change_clears_the_error(gatewayd):
    gw = gatewayd(value_config(1))
    good = gw.config_path.read_text()
    gw.write_config(SCHEMA_ERROR_CONFIG)
    wait_for(lambda: gw.health()["last_reload_error"], "last_reload_error", gw)
    write_atomically(gw.config_path, good)
    wait_for(lambda: gw.health()["last_reload_error"] is None, "the error to clear", gw)
    assert gw.health()["generation"] == 1


def test_a_rejected_file_is_tried_again_only_when_it_changes_or_on_sighup(gatewayd):
    """Other files changing in the watched folder do not make a rejected config be re-checked."""
    gw = gatewayd(value_config(1))
    gw.write_config(SCHEMA_ERROR_CONFIG)
    wait_for(lambda: gw.health()["last_reload_error"], "last_reload_error", gw)
    for i in range(5):
        (gw.config_path.parent / f"unrelated-{i}.txt").write_text("x")
        time.sleep(0.2)
    assert gw.log().count("rejected, still serving") == 1, gw.log()
    gw.proc.send_signal(signal.SIGHUP)  # a file the config refers to may have been fixed: try again
    wait_for(lambda: gw.log().count("rejected, still serving") == 2, "the SIGHUP retry", gw)
    assert served_value(gw) == 1


def test_sighup(gatewayd, engine, tmp_path):
    # The config path is a symlink into another folder, and changes swap the symlink: the file
    # watcher (on the real file's folder) does not see them, so only SIGHUP can reload.
    data, conf = tmp_path / "data", tmp_path / "conf"
    data.mkdir()
    conf.mkdir()
    first = with_engine(value_config(1), engine)
    (data / "v1.yaml").write_text(first)
    link = conf / "gateway.yaml"
    link.symlink_to(data / "v1.yaml")
    gw = gatewayd(config_path=link)
    assert served_value(gw) == 1
    generation = gw.health()["generation"]

    # the same bytes again, then SIGHUP: the hash is unchanged, so no new generation
    write_atomically(data / "v1.yaml", first)
    gw.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    health = gw.health()
    assert health["generation"] == generation
    assert health["last_reload_error"] is None
    assert gw.proc.poll() is None

    # new content behind the symlink, then SIGHUP: a new generation
    (data / "v2.yaml").write_text(with_engine(value_config(2), engine))
    tmp_link = conf / ".gateway.yaml.new"
    tmp_link.symlink_to(data / "v2.yaml")
    os.replace(tmp_link, link)
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: gw.health()["generation"] == generation + 1, "the SIGHUP reload", gw)
    assert served_value(gw) == 2
    assert "reload (SIGHUP)" in gw.log()

    # and SIGHUP again without a change does nothing
    gw.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert gw.health()["generation"] == generation + 1
    assert gw.proc.poll() is None


def test_watcher_follows_configmap_style_symlink_swaps(gatewayd, engine, tmp_path):
    """Kubernetes mounts a ConfigMap as `gateway.yaml -> ..data/gateway.yaml` with `..data` a
    symlink to a timestamped folder; an update makes a new folder, swaps `..data` and deletes
    the old folder. Every update must be picked up, not only the first."""

    def publish(version: int) -> None:
        folder = tmp_path / f"..v{version}"
        folder.mkdir()
        (folder / "gateway.yaml").write_text(with_engine(value_config(version), engine))
        tmp = tmp_path / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.replace(tmp, tmp_path / "..data")
        old = tmp_path / f"..v{version - 1}"
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    publish(1)
    link = tmp_path / "gateway.yaml"
    link.symlink_to(Path("..data") / "gateway.yaml")
    gw = gatewayd(config_path=link)
    assert served_value(gw) == 1
    for version in (2, 3):
        publish(version)
        deadline = time.monotonic() + 2.0
        while served_value(gw) != version and time.monotonic() < deadline:
            time.sleep(0.05)
        if served_value(gw) != version:
            pytest.fail(f"update {version} was not picked up; stderr:\n{gw.log()}")
    assert gw.health()["generation"] == 3


def test_broken_file_at_startup_exits_1(engine, tmp_path):
    config = tmp_path / "broken.yaml"
    text = with_engine(SCHEMA_ERROR_CONFIG, engine)
    config.write_text(text)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--config", str(config), "--listen", f"{HOST}:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert elapsed < 10, f"took {elapsed:.1f}s to give up"
    line_no = next(i for i, line in enumerate(text.splitlines(), 1) if "methods: [get]" in line)
    assert re.search(rf"^{re.escape(str(config))}:{line_no}:\d+: error: ", proc.stderr, re.M), proc.stderr


def test_missing_file_at_startup_exits_1(tmp_path):
    missing = tmp_path / "missing.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "gatewayd", "--config", str(missing), "--listen", f"{HOST}:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=15,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert f"{missing}:1:1: error: " in proc.stderr
