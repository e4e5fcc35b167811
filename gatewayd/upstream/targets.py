"""The targets of one upstream as the request path sees them: which one gets a request, and what
became of it.

The decisions are the tables of breaker.py (passive: request outcomes) and health.py (active
checks and slow start); this file keeps their state per target, feeds them events with the time,
derives the target's state, logs and counts its changes, and keeps the request path cheap: while
every target is in rotation at full weight, `pick` costs the balancer's pick and one attribute
read per target, and a success costs two more.

A target's state, shown by /health and the metrics, is one of

    healthy     in rotation;
    slow_start  back in rotation with a share of requests that grows (health.py);
    probing     out of rotation, but its breaker lets one trial request through, or the active
                checks pass but not yet `healthy_threshold` times in a row;
    ejected     out of rotation: its breaker is open or the active checks failed.

A `Target` is kept across reloads by its upstream's name and URL (see pool.UpstreamRegistry), so
an ejected target stays ejected when the config changes around it. A `Rotation` is one config
generation's view: its targets in order, its balancer and its settings.
"""

from __future__ import annotations

import logging
from time import monotonic

from ..observe.metrics import HEALTH_CHECKS, TARGET_STATE, TARGET_TRANSITIONS
from . import breaker, health
from .breaker import ADMIT, CLOSED, CLOSED_BREAKER, HALF_OPEN, OPEN, SUCCESS
from .health import EJECTED, HEALTHY, HEALTHY_STATE, PROBING, SLOW_START, Settings

log = logging.getLogger("gatewayd.upstream")

STATES = (HEALTHY, SLOW_START, PROBING, EJECTED)


def state_of(h: health.Health, b: breaker.Breaker) -> str:
    """A target's state from its two machines: out of rotation by either is out."""
    if h.kind in (EJECTED, PROBING):
        return h.kind
    if b.phase == OPEN:
        return EJECTED
    if b.phase == HALF_OPEN:
        return PROBING
    return h.kind


class Target:
    """One target's breaker and health, and whether it is in rotation at full weight (`full`: the
    request path's check)."""

    __slots__ = ("upstream", "url", "breaker", "health", "full", "state", "since", "published")

    def __init__(self, upstream: str, url: str):
        self.upstream = upstream
        self.url = url
        self.breaker = CLOSED_BREAKER
        self.health = HEALTHY_STATE
        self.full = True
        self.state = HEALTHY
        self.since = monotonic()  # when its state last changed
        self.published = False  # its state is in the metrics (while a config in service has it)

    def on(self, event: str, now: float, rotation: Rotation) -> None:
        """Feed a request's outcome (or ADMIT, TICK) to the breaker; a breaker closing again is
        RECOVERED for the health machine."""
        old = self.breaker
        new = breaker.step(old, event, now, rotation.outlier)
        if new is old:
            return
        h = self.health
        if new.phase == CLOSED and old.phase != CLOSED:
            h = health.step(h, health.RECOVERED, now, rotation.settings)
        elif new.phase == OPEN and old.phase != OPEN:
            why = "its trial request failed" if old.phase == HALF_OPEN else f"{rotation.outlier.consecutive_failures} failures in a row"
            log.warning("upstream %s: target %s ejected for %gs (%s)", self.upstream, self.url, new.until - now, why)
        self._set(h, new, now)

    def check(self, ok: bool, now: float, rotation: Rotation) -> None:
        """An active health check's result; one that passes also lets an open breaker try at once."""
        HEALTH_CHECKS.inc((self.upstream, self.url, "pass" if ok else "fail"))
        h = health.step(self.health, health.CHECK_OK if ok else health.CHECK_FAIL, now, rotation.settings)
        b = breaker.step(self.breaker, breaker.CHECK_OK, now, rotation.outlier) if ok else self.breaker
        if h.kind == EJECTED and self.health.kind != EJECTED:
            log.warning("upstream %s: target %s failed %d health checks in a row", self.upstream, self.url, rotation.settings.unhealthy_threshold)
        self._set(h, b, now)

    def tick(self, now: float, rotation: Rotation) -> None:
        """Let time pass: an ejection ends, a trial is given up on, a slow start completes."""
        if self.breaker.phase != CLOSED:
            self.on(breaker.TICK, now, rotation)
        if self.health.kind == SLOW_START:
            self._set(health.step(self.health, health.TICK, now, rotation.settings), self.breaker, now)

    def weight(self, now: float, rotation: Rotation) -> float:
        """Its share of requests now: 0 out of rotation (a half-open target is in for one trial)."""
        self.tick(now, rotation)
        if self.breaker.phase != CLOSED and not breaker.admits(self.breaker):
            return 0.0
        return health.weight(self.health, now, rotation.settings)

    def _set(self, h: health.Health, b: breaker.Breaker, now: float) -> None:
        self.health, self.breaker = h, b
        self.full = h.kind == HEALTHY and b.phase == CLOSED
        state = state_of(h, b)
        if state == self.state:
            return
        self.state, self.since = state, now
        if self.published:
            self.publish()
            TARGET_TRANSITIONS.inc((self.upstream, self.url, state))
        if state in (HEALTHY, SLOW_START):
            log.warning("upstream %s: target %s back in rotation (%s)", self.upstream, self.url, state.replace("_", " "))

    def publish(self) -> None:
        """Its state in the metrics: 1 for the current one, 0 for the others (from now on, at every change)."""
        self.published = True
        for state in STATES:
            TARGET_STATE.set((self.upstream, self.url, state), 1 if state == self.state else 0)

    def forget(self) -> None:
        """No config in service has this target any more: drop its state series."""
        self.published = False
        for state in STATES:
            TARGET_STATE.remove((self.upstream, self.url, state))


class Rotation:
    """One generation's targets, balancer and settings: `pick` a target, `report` its outcome."""

    __slots__ = ("members", "balancer", "outlier", "settings")

    def __init__(self, members: tuple[Target, ...], balancer, outlier, settings: Settings = Settings()):
        self.members = members
        self.balancer = balancer
        self.outlier = outlier
        self.settings = settings

    def pick(self, tried: int = 0) -> int:
        """A target for a request; `tried` is a bit mask of the targets this request already had (a
        retry goes elsewhere). The caller has checked that some target is left untried."""
        if not tried:
            for target in self.members:
                if not target.full:
                    break
            else:
                return self.balancer.pick()  # every target in rotation at full weight
        return self._pick(tried)

    def _pick(self, tried: int) -> int:
        now = monotonic()
        members = self.members
        weights = [0.0 if tried >> k & 1 else m.weight(now, self) for k, m in enumerate(members)]
        if not any(weights):
            # every target left is out of rotation: try them all in turn rather than refuse (a 502
            # is no worse than a 503, and a target that came back is found at once)
            weights = [0.0 if tried >> k & 1 else 1.0 for k in range(len(members))]
        i = self.balancer.pick_among(weights)
        target = members[i]
        if target.breaker.phase == HALF_OPEN:
            target.on(ADMIT, now, self)  # this request is its trial
        return i

    def report(self, i: int, event: str) -> None:
        """The outcome of a request sent to target i: SUCCESS, FAILURE or CANCEL (breaker.py)."""
        target = self.members[i]
        if event is SUCCESS and target.full and not target.breaker.failures:
            return
        target.on(event, monotonic(), self)

    def done(self, i: int) -> None:
        """A request to target i is over (its body sent, or it failed)."""
        self.balancer.done(i)

    def health(self) -> list[dict]:
        """Each target's state for /health."""
        now = monotonic()
        for target in self.members:
            target.tick(now, self)
        return [{"target": t.url, "state": t.state, "for_s": round(now - t.since, 3)} for t in self.members]
