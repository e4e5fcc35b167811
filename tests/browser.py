"""Headless Chromium for tests that need a real browser: load a page, let its scripts run, and read
back the DOM they left (and optionally a screenshot)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

TIMEOUT_S = 90


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)


def dump_dom(
    url: str, workdir: Path, *, screenshot: Path | None = None, budget_ms: int = 5000, window: str = "1200,800"
) -> tuple[str, str]:
    """Load `url` in a fresh profile under `workdir`, give its scripts `budget_ms` of virtual time,
    and return (the DOM they left, Chromium's stderr); `screenshot` also saves a PNG there."""
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--dump-dom", f"--window-size={window}",
        f"--virtual-time-budget={budget_ms}", *([f"--screenshot={screenshot}"] if screenshot else []), url,
    ]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, timeout=TIMEOUT_S, cwd=workdir)
    return done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
