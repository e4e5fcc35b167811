"""The circuit breaker of one upstream target: passive outlier ejection, as a table.

Everything that moves a breaker lives in this file, and nothing here reads a clock or does I/O:
`step(breaker, event, now, outlier)` is the whole machine (`outlier` is the upstream's
`OutlierConfig`: `consecutive_failures` in a row eject a target, 0 never, for `ejection_time` s), a pure function of the state, the event
and the time it happened (seconds on any monotonic clock), so every transition is tested as data.

A breaker hears the outcome of every request sent to its target (SUCCESS or FAILURE: no
connection, no response in time, or a 502/503/504 answer) and decides whether the target gets
requests:

    closed     -- consecutive_failures FAILUREs in a row -->  open (the target is ejected)
    open       -- TICK at `until`, or CHECK_OK ---------->  half_open
    half_open  -- ADMIT ------------------------------------>  half_open, its one trial request in flight
    half_open  -- SUCCESS ---------------------------------->  closed
    half_open  -- FAILURE ---------------------------------->  open again, for twice as long (up to 8x)

`until` is when an open breaker turns half-open, and when a half-open breaker's trial is given up
on (its outcome never came: CANCEL, or a request lost without report), so that one lost report
cannot keep a target out for good. Outcomes of requests sent before the breaker opened change
nothing while it is open. CHECK_OK is an active health check that passed (health.py): a target the
checks see back is tried at once instead of at the end of its ejection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from ..config.model import OutlierConfig as Outlier

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
PHASES = (CLOSED, OPEN, HALF_OPEN)

SUCCESS = "success"  # a request got a response that is not a gateway error
FAILURE = "failure"  # no connection, no response in time, or 502/503/504
CANCEL = "cancel"  # a request ended without an outcome (the client left, its body was too large)
ADMIT = "admit"  # a request was sent to a half-open target: its trial
CHECK_OK = "check_ok"  # an active health check of the target passed
TICK = "tick"  # time passed
EVENTS = (SUCCESS, FAILURE, CANCEL, ADMIT, CHECK_OK, TICK)

MAX_BACKOFF = 8  # an ejection lasts at most this many times `ejection_time`


class Breaker(NamedTuple):
    phase: str = CLOSED
    failures: int = 0  # consecutive failures so far (closed)
    until: float = 0.0  # open: when it turns half-open; half_open with a trial: when the trial is given up on
    trial: bool = False  # half_open: a trial request is in flight
    ejections: int = 0  # times it opened since it was last closed (each ejection twice as long, up to 8x)


CLOSED_BREAKER = Breaker()


def _ejection(b: Breaker, now: float, o: Outlier) -> Breaker:
    ejections = b.ejections + 1
    return Breaker(OPEN, 0, now + o.ejection_time * min(2 ** (ejections - 1), MAX_BACKOFF), False, ejections)


def _closed_success(b, now, o):
    return CLOSED_BREAKER if b.failures else b


def _closed_failure(b, now, o):
    failures = b.failures + 1
    if o.consecutive_failures and failures >= o.consecutive_failures:
        return _ejection(b, now, o)
    return b._replace(failures=failures)


def _same(b, now, o):
    return b


def _open_tick(b, now, o):
    return b._replace(phase=HALF_OPEN, trial=False) if now >= b.until else b


def _half_open(b, now, o):
    return b._replace(phase=HALF_OPEN, trial=False, until=now)


def _admit(b, now, o):
    return b if b.trial else b._replace(trial=True, until=now + o.ejection_time)


def _trial_over(b, now, o):
    return b._replace(trial=False) if b.trial else b


def _half_open_tick(b, now, o):
    return b._replace(trial=False) if b.trial and now >= b.until else b


def _recovered(b, now, o):
    return CLOSED_BREAKER


def _failed_again(b, now, o):
    return _ejection(b, now, o)


# (phase, event) -> transition; every pair is here, so `step` never meets an unknown one
TABLE = {
    (CLOSED, SUCCESS): _closed_success,
    (CLOSED, FAILURE): _closed_failure,
    (CLOSED, CANCEL): _same,
    (CLOSED, ADMIT): _same,
    (CLOSED, CHECK_OK): _same,
    (CLOSED, TICK): _same,
    (OPEN, SUCCESS): _same,  # sent before it opened
    (OPEN, FAILURE): _same,
    (OPEN, CANCEL): _same,
    (OPEN, ADMIT): _same,  # every target was out, and this one was tried anyway (see Targets.pick)
    (OPEN, CHECK_OK): _half_open,
    (OPEN, TICK): _open_tick,
    (HALF_OPEN, SUCCESS): _recovered,
    (HALF_OPEN, FAILURE): _failed_again,
    (HALF_OPEN, CANCEL): _trial_over,
    (HALF_OPEN, ADMIT): _admit,
    (HALF_OPEN, CHECK_OK): _same,
    (HALF_OPEN, TICK): _half_open_tick,
}


def step(b: Breaker, event: str, now: float, outlier: Outlier) -> Breaker:
    """The breaker after `event` at `now`."""
    return TABLE[b.phase, event](b, now, outlier)


def admits(b: Breaker) -> bool:
    """Whether a request may be sent now (after a TICK at the current time): closed, or half-open
    with no trial in flight (the request is then its trial: ADMIT it)."""
    return b.phase == CLOSED or (b.phase == HALF_OPEN and not b.trial)
