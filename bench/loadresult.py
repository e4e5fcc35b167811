"""What one load-generator run measured, whichever client ran it (wrk, h2load, h3load)."""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int  # responses received (any status)
    duration_s: float
    status_errors: int  # responses with status >= 400
    socket_errors: int  # connect, read, write, stream and timeout errors: no response
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    client_cpu_s: float | None = None  # CPU time (user + system) the load generator used
    p999_ms: float | None = None  # p99.9, where the client gives it (wrk, h2load)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def attempts(self) -> int:
        """Requests answered plus those that failed without an answer."""
        return self.requests + self.socket_errors

    @property
    def client_cores(self) -> float | None:
        """The load generator's CPU use in cores (1.0 is one core busy all the time)."""
        if self.client_cpu_s is None or self.duration_s <= 0:
            return None
        return self.client_cpu_s / self.duration_s


def children_cpu_s() -> float:
    """User + system CPU seconds of the waited-for children so far (take a difference around a run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]
