"""Whether a request that failed before its response may be tried again, on another target.

Retried: requests with an idempotent method (RFC 9110 section 9.2.2) and no body (a body was
streamed to the failed target, and is gone), that got no response (no connection, no answer
within the per-try timeout) or a 502, 503 or 504, while `attempts`, the untried targets, the
response timeout (which bounds all tries together) and the budget allow.

The budget keeps a failing upstream from getting a storm: retries may be at most `budget` of the
upstream's requests over the current and previous WINDOW_S windows, plus MIN_RETRIES in that
time so that an upstream with little traffic can retry at all. It is a pure object: the caller
passes the time. Each worker process keeps its own.
"""

from __future__ import annotations

from ..config.model import RetryConfig
from ..observe.metrics import counter

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
WINDOW_S = 10.0
MIN_RETRIES = 10  # per two windows, whatever the traffic

RETRIES = counter(
    "gatewayd_upstream_retries_total",
    "Retries of failed upstream requests: result is sent, or over_budget when the retry budget refused one.",
    ("upstream", "result"),
)


class RetryBudget:
    __slots__ = ("ratio", "window_end", "requests", "retries", "earlier_requests", "earlier_retries")

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.window_end = float("-inf")
        self.requests = self.retries = 0  # in the current window
        self.earlier_requests = self.earlier_retries = 0  # in the one before

    def _roll(self, now: float) -> None:
        if now >= self.window_end:
            recent = now < self.window_end + WINDOW_S
            self.earlier_requests = self.requests if recent else 0
            self.earlier_retries = self.retries if recent else 0
            self.requests = self.retries = 0
            self.window_end = now + WINDOW_S

    def request(self, now: float) -> None:
        """A request was sent (its first try)."""
        if now >= self.window_end:
            self._roll(now)
        self.requests += 1

    def spend(self, now: float) -> bool:
        """Whether one more retry fits; if so it is counted."""
        self._roll(now)
        allowed = self.ratio * (self.requests + self.earlier_requests) + MIN_RETRIES
        if self.retries + self.earlier_retries + 1 > allowed:
            return False
        self.retries += 1
        return True


class Retries:
    """One upstream generation's retry settings and budget."""

    __slots__ = ("name", "attempts", "per_try_timeout", "all_tried", "budget", "_sent", "_refused")

    def __init__(self, name: str, config: RetryConfig, targets: int):
        self.name = name
        self.attempts = config.attempts
        self.per_try_timeout = config.per_try_timeout
        self.all_tried = (1 << targets) - 1  # the bit mask of `tried` once every target had a try
        self.budget = RetryBudget(config.budget)
        self._sent = RETRIES.labels(name, "sent")
        self._refused = RETRIES.labels(name, "over_budget")

    def again(self, tried: int, now: float, deadline: float) -> bool:
        """After a failed try: whether to try once more. `tried` is the bit mask of the targets
        tried so far (one try each)."""
        if tried == self.all_tried or tried.bit_count() >= self.attempts or now >= deadline:
            return False
        if not self.budget.spend(now):
            self._refused.inc()
            return False
        self._sent.inc()
        return True
