"""The access log: one JSON line per request, formatted and written off the request path.

Whether a request gets a line (`sample`) is decided when it is recorded, and only a sampled request
keeps the fields of its line (`recorder.py`); lines are made by the observer's fold, off the request
path, and written in one `write` per fold, so lines from several workers appending to one file never
interleave. A file is reopened when it was moved
or deleted (log rotation needs no signal). What a line never holds: header values (no
Authorization, Cookie or API keys) and query values; the query's keys are logged, without values.

Fields: `time` (arrival, UTC, ISO 8601 with ms), `request_id`, `trace_id`, `route` (null when no
route matched), `consumer` (the id an auth policy admitted, else null), `method`, `path` (no query), `query_keys`,
`protocol`, `status` (499 when the client left before the response started), `bytes_sent` (body
bytes), `server_ms`, `total_ms`, `upstream`, `upstream_ms` (to the upstream's response headers;
null when not proxied), `cache` (null until a cache exists), `worker`.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from urllib.parse import unquote

log = logging.getLogger("gatewayd.access_log")

OFF = "off"
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), check_circular=False).encode


def query_keys(qs: bytes) -> list[str]:
    """The keys of a query string, in order, without their values."""
    if not qs:
        return []
    keys = []
    for part in qs.split(b"&"):
        if part:
            key = part.split(b"=", 1)[0]
            keys.append(unquote(key.decode("latin-1").replace("+", " ")))
    return keys


def iso_time(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def line(fields: dict) -> bytes:
    return _encode(fields).encode() + b"\n"


class AccessLog:
    """Where lines go: `stdout`, `stderr`, `off` or a file path (appended to, created if missing)."""

    def __init__(self, to: str = OFF, sample: float = 1.0):
        self.to = to
        self.sample = sample
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._warned_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.to != OFF and self.sample > 0

    def _target(self) -> int | None:
        if self.to == "stdout":
            return sys.stdout.fileno()
        if self.to == "stderr":
            return sys.stderr.fileno()
        try:
            st = os.stat(self.to)
            inode = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            inode = None
        if self._fd is None or inode != self._inode:
            self._close_file()
            self._fd = os.open(self.to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            st = os.fstat(self._fd)
            self._inode = (st.st_dev, st.st_ino)
        return self._fd

    def write(self, lines: list[bytes]) -> None:
        """Write `lines` in one go; on failure they are dropped, with a warning at most once a minute."""
        if not lines or not self.enabled:
            return
        data = b"".join(lines)
        try:
            fd = self._target()
            view = memoryview(data)
            for _ in range(1000):  # a pipe may take part of it per call
                written = os.write(fd, view)
                view = view[written:]
                if not view:
                    break
        except OSError as exc:
            now = time.monotonic()
            if now - self._warned_at > 60:
                self._warned_at = now
                log.warning("access log %s: %s; lines are being dropped", self.to, exc)

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = self._inode = None

    def close(self) -> None:
        self._close_file()
