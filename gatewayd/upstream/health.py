"""The health of one upstream target as active checks and slow start see it, as a table.

Like breaker.py, everything that moves this machine lives here, with no clock and no I/O:
`step(health, event, now, settings)` is the whole of it. Its events are the results of active
checks (probe.py sends them), RECOVERED (the target's breaker closed again: it is back from a
passive ejection) and TICK (time passed):

    healthy     -- unhealthy_threshold CHECK_FAILs in a row -->  ejected
    ejected     -- CHECK_OK --------------------------------->  probing (or slow_start, with a threshold of 1)
    probing     -- healthy_threshold CHECK_OKs in a row ----->  slow_start
    probing     -- CHECK_FAIL ------------------------------->  ejected
    slow_start  -- TICK at since + slow_start -------------->  healthy
    slow_start  -- unhealthy_threshold CHECK_FAILs in a row -->  ejected
    healthy     -- RECOVERED -------------------------------->  slow_start

A target in slow start gets a share of requests that grows with the time since it came back
(`weight`); with `slow_start` 0 it skips the state and is healthy at once. Ejected and probing
targets get no requests.
"""

from __future__ import annotations

from typing import NamedTuple

HEALTHY, EJECTED, PROBING, SLOW_START = "healthy", "ejected", "probing", "slow_start"
KINDS = (HEALTHY, EJECTED, PROBING, SLOW_START)

CHECK_OK = "check_ok"
CHECK_FAIL = "check_fail"
RECOVERED = "recovered"
TICK = "tick"
EVENTS = (CHECK_OK, CHECK_FAIL, RECOVERED, TICK)

MIN_WEIGHT = 0.1  # a target's share of requests as its slow start begins


class Settings(NamedTuple):
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2
    slow_start: float = 0.0  # seconds


class Health(NamedTuple):
    kind: str = HEALTHY
    count: int = 0  # healthy, slow_start: failed checks in a row; probing: passed checks in a row
    since: float = 0.0  # slow_start: when it began


HEALTHY_STATE = Health()


def _back(now: float, s: Settings) -> Health:
    return Health(SLOW_START, 0, now) if s.slow_start > 0 else HEALTHY_STATE


def _same(h, now, s):
    return h


def _passed(h, now, s):
    return h._replace(count=0) if h.count else h


def _failed(h, now, s):
    count = h.count + 1
    return Health(EJECTED, 0, now) if count >= s.unhealthy_threshold else h._replace(count=count)


def _recovered(h, now, s):
    return _back(now, s)


def _first_pass(h, now, s):
    return _back(now, s) if s.healthy_threshold <= 1 else Health(PROBING, 1, now)


def _probe_passed(h, now, s):
    count = h.count + 1
    return _back(now, s) if count >= s.healthy_threshold else h._replace(count=count)


def _probe_failed(h, now, s):
    return Health(EJECTED, 0, now)


def _ramp_tick(h, now, s):
    return HEALTHY_STATE if now >= h.since + s.slow_start else h


# (kind, event) -> transition; every pair is here
TABLE = {
    (HEALTHY, CHECK_OK): _passed,
    (HEALTHY, CHECK_FAIL): _failed,
    (HEALTHY, RECOVERED): _recovered,
    (HEALTHY, TICK): _same,
    (EJECTED, CHECK_OK): _first_pass,
    (EJECTED, CHECK_FAIL): _same,
    (EJECTED, RECOVERED): _same,  # the checks decide while they fail
    (EJECTED, TICK): _same,
    (PROBING, CHECK_OK): _probe_passed,
    (PROBING, CHECK_FAIL): _probe_failed,
    (PROBING, RECOVERED): _same,
    (PROBING, TICK): _same,
    (SLOW_START, CHECK_OK): _passed,
    (SLOW_START, CHECK_FAIL): _failed,
    (SLOW_START, RECOVERED): _recovered,  # ejected and back again: the ramp starts over
    (SLOW_START, TICK): _ramp_tick,
}


def step(h: Health, event: str, now: float, settings: Settings) -> Health:
    """The health after `event` at `now`."""
    return TABLE[h.kind, event](h, now, settings)


def weight(h: Health, now: float, settings: Settings) -> float:
    """The target's share of requests at `now` (after a TICK): 1 healthy, 0 ejected or probing,
    and in slow start from MIN_WEIGHT growing linearly to 1."""
    if h.kind == HEALTHY:
        return 1.0
    if h.kind == SLOW_START:
        return min(1.0, max(MIN_WEIGHT, (now - h.since) / settings.slow_start))
    return 0.0
