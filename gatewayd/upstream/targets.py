"""The targets of one upstream as the request path sees them: which one gets a request, and what
became of it.

The decisions are the tables of breaker.py; this file keeps their state per target, feeds them
events with the time, logs the transitions, and keeps the request path cheap: while every target
is in rotation at full weight, `pick` costs the balancer's pick and one attribute read, and a
success costs two more.

A `Target` is kept across reloads by its upstream's name and URL (see pool.UpstreamRegistry), so
an ejected target stays ejected when the config changes around it. A `Rotation` is one config
generation's view: its targets in order, its balancer and its settings.
"""

from __future__ import annotations

import logging
from time import monotonic

from .breaker import ADMIT, CLOSED, CLOSED_BREAKER, HALF_OPEN, OPEN, SUCCESS, TICK, admits
from .breaker import step as breaker_step

log = logging.getLogger("gatewayd.upstream")

# what /health and the metrics call a target's state
HEALTHY, EJECTED, PROBING = "healthy", "ejected", "probing"
_BY_PHASE = {CLOSED: HEALTHY, OPEN: EJECTED, HALF_OPEN: PROBING}


class Target:
    """One target's breaker, and whether it is in rotation at full weight (`full`, the request path's check)."""

    __slots__ = ("upstream", "url", "breaker", "full", "since")

    def __init__(self, upstream: str, url: str):
        self.upstream = upstream
        self.url = url
        self.breaker = CLOSED_BREAKER
        self.full = True
        self.since = monotonic()  # when its state last changed

    @property
    def state(self) -> str:
        return _BY_PHASE[self.breaker.phase]

    def on(self, event: str, now: float, outlier) -> None:
        """Feed `event` to the breaker; log and note a change of state."""
        old = self.breaker
        new = breaker_step(old, event, now, outlier)
        if new is old:
            return
        self.breaker = new
        self.full = new.phase == CLOSED
        if new.phase != old.phase:
            self.since = now
            if new.phase == OPEN:
                why = "its trial request failed" if old.phase == HALF_OPEN else f"{outlier.consecutive_failures} failures in a row"
                log.warning("upstream %s: target %s ejected for %gs (%s)", self.upstream, self.url, new.until - now, why)
            elif new.phase == CLOSED:
                log.warning("upstream %s: target %s back in rotation", self.upstream, self.url)

    def weight(self, now: float, outlier) -> float:
        """Its share of requests now: 1 in rotation, 0 out (a half-open target is in for one trial)."""
        if self.breaker.phase != CLOSED:
            self.on(TICK, now, outlier)
            if not admits(self.breaker):
                return 0.0
        return 1.0


class Rotation:
    """One generation's targets, balancer and outlier settings: `pick` a target, `report` its outcome."""

    __slots__ = ("members", "balancer", "outlier")

    def __init__(self, members: tuple[Target, ...], balancer, outlier):
        self.members = members
        self.balancer = balancer
        self.outlier = outlier

    def pick(self, tried: int = 0) -> int:
        """A target for a request; `tried` is a bit mask of the targets this request already had (a
        retry goes elsewhere). The caller has checked that some target is left untried."""
        i = self.balancer.pick()
        if not tried and self.members[i].full:
            return i
        self.balancer.done(i)
        return self._pick(tried)

    def _pick(self, tried: int) -> int:
        now = monotonic()
        members, outlier = self.members, self.outlier
        weights = [0.0 if tried >> k & 1 else m.weight(now, outlier) for k, m in enumerate(members)]
        if not any(weights):
            # every target left is out of rotation: try them all in turn rather than refuse (a 502
            # is no worse than a 503, and a target that came back is found at once)
            weights = [0.0 if tried >> k & 1 else 1.0 for k in range(len(members))]
        i = self.balancer.pick_among(weights)
        target = members[i]
        if target.breaker.phase == HALF_OPEN:
            target.on(ADMIT, now, outlier)  # this request is its trial
        return i

    def report(self, i: int, event: str) -> None:
        """The outcome of a request sent to target i: SUCCESS, FAILURE or CANCEL (breaker.py)."""
        target = self.members[i]
        if event is SUCCESS and target.full and not target.breaker.failures:
            return
        target.on(event, monotonic(), self.outlier)

    def done(self, i: int) -> None:
        """A request to target i is over (its body sent, or it failed)."""
        self.balancer.done(i)

    def health(self) -> list[dict]:
        """Each target's state for /health."""
        now = monotonic()
        for target in self.members:
            if target.breaker.phase != CLOSED:
                target.on(TICK, now, self.outlier)
        return [{"target": t.url, "state": t.state, "for_s": round(now - t.since, 3)} for t in self.members]
