"""What this process knows about its own config: generation, hash, last reload and its error, and
whether its host is ready (every worker serves its config: see server/supervisor.py)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field


@dataclass
class RuntimeStatus:
    generation: int = 0
    config_sha256: str | None = None
    last_reload_at: float | None = None  # unix time of the last successful load
    last_reload_error: str | None = None  # the located message of the last failed reload, or None
    started_monotonic: float = field(default_factory=time.monotonic)
    worker: int = 0  # this process's index among the host's worker processes (0 when it serves alone)
    ready: bool = True  # False in a worker until every worker of its host serves its first config
    cluster: object = None  # the process's `gatewayd.cluster.Cluster`, whose Redis /health shows

    def loaded(self, sha256: str) -> None:
        self.generation += 1
        self.config_sha256 = sha256
        self.last_reload_at = time.time()
        self.last_reload_error = None

    def failed(self, message: str) -> None:
        self.last_reload_error = message

    def health(self) -> dict:
        return {
            "status": "ok" if self.ready else "starting",
            "generation": self.generation,
            "config_sha256": self.config_sha256,
            "last_reload_at": self.last_reload_at,
            "last_reload_error": self.last_reload_error,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
            "pid": os.getpid(),
            "worker": self.worker,
        } | ({} if self.cluster is None else {"cluster": self.cluster.health()})
