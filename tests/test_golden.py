"""Golden tests for `gatewayd check`: each tests/golden/*.yaml ends with the exact problems it must produce.

A case lists its expected problems as trailing `# expect: LINE:COL: error: MESSAGE` comments; a case
with none must load cleanly. Run with GOLDEN_UPDATE=1 to rewrite the expectations after a deliberate
change of wording, then review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gatewayd.config.errors import ConfigError
from gatewayd.config.load import load_bytes

ROOT = Path(__file__).resolve().parents[1]
# the golden cases, and the shipped configs: those must load, and examples/rejected.yaml fails as it says
CASES = sorted((ROOT / "tests" / "golden").glob("*.yaml")) + sorted((ROOT / "examples").glob("**/*.yaml")) + [
    ROOT / "configs" / "gateway.yaml"
]
ENVIRON = {"GOLDEN_SET_URL": "http://127.0.0.1:9009"}
MARK = "# expect: "


def _actual(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        load_bytes(raw, str(path), environ=ENVIRON)
    except ConfigError as exc:
        return [f"{p.location.line}:{p.location.column}: {p.severity}: {p.message}" for p in exc.problems]
    return []


@pytest.mark.parametrize("path", CASES, ids=[f"{c.parent.name}/{c.stem}" for c in CASES])
def test_golden(path: Path) -> None:
    text = path.read_text()
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith(MARK))
    expected = [line[len(MARK) :] for line in text.splitlines() if line.startswith(MARK)]
    actual = _actual(path)
    if os.environ.get("GOLDEN_UPDATE"):
        path.write_text(body + "".join(f"{MARK}{line}\n" for line in actual))
        return
    assert actual == expected


def test_secret_values_never_shown() -> None:
    actual = "\n".join(_actual(Path(__file__).parent / "golden" / "env.yaml"))
    assert "not a url" not in actual
    assert "127.0.0.1:9009" not in actual
