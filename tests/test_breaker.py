"""The circuit breaker table (gatewayd/upstream/breaker.py): every (phase, event) pair, the
expected transitions as data, and random event sequences against an imperative reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config.model import OutlierConfig
from gatewayd.upstream.breaker import (
    ADMIT, CANCEL, CHECK_OK, CLOSED, CLOSED_BREAKER, EVENTS, FAILURE, HALF_OPEN, MAX_BACKOFF, OPEN, PHASES, SUCCESS,
    TABLE, TICK, Breaker, admits, step,
)  # fmt: skip

O = OutlierConfig(consecutive_failures=3, ejection_time=10.0)


def test_the_table_has_every_pair():
    assert set(TABLE) == {(p, e) for p in PHASES for e in EVENTS}


def run(events, outlier=O, start=CLOSED_BREAKER):
    b = start
    for event, now in events:
        b = step(b, event, now, outlier)
    return b


OPEN_AT_100 = Breaker(OPEN, 0, 110.0, False, 1)
HALF = Breaker(HALF_OPEN, 0, 110.0, False, 1)
TRIAL = Breaker(HALF_OPEN, 0, 125.0, True, 1)

# (start, event, now, expected)
CASES = {
    "a success clears the streak": (Breaker(CLOSED, 2), SUCCESS, 1.0, CLOSED_BREAKER),
    "failures count up": (Breaker(CLOSED, 1), FAILURE, 1.0, Breaker(CLOSED, 2)),
    "the last failure opens": (Breaker(CLOSED, 2), FAILURE, 100.0, OPEN_AT_100),
    "closed ignores cancel": (Breaker(CLOSED, 2), CANCEL, 1.0, Breaker(CLOSED, 2)),
    "closed ignores admit": (Breaker(CLOSED, 2), ADMIT, 1.0, Breaker(CLOSED, 2)),
    "closed ignores checks": (Breaker(CLOSED, 2), CHECK_OK, 1.0, Breaker(CLOSED, 2)),
    "closed ignores time": (Breaker(CLOSED, 2), TICK, 1e9, Breaker(CLOSED, 2)),
    "open ignores late successes": (OPEN_AT_100, SUCCESS, 101.0, OPEN_AT_100),
    "open ignores late failures": (OPEN_AT_100, FAILURE, 101.0, OPEN_AT_100),
    "open ignores cancel": (OPEN_AT_100, CANCEL, 101.0, OPEN_AT_100),
    "open ignores admit": (OPEN_AT_100, ADMIT, 101.0, OPEN_AT_100),
    "open before its time": (OPEN_AT_100, TICK, 109.999, OPEN_AT_100),
    "open at its time": (OPEN_AT_100, TICK, 110.0, HALF),
    "a passed check half-opens at once": (OPEN_AT_100, CHECK_OK, 101.0, Breaker(HALF_OPEN, 0, 101.0, False, 1)),
    "half-open admits a trial": (HALF, ADMIT, 115.0, TRIAL),
    "one trial at a time": (TRIAL, ADMIT, 116.0, TRIAL),
    "the trial's success closes": (TRIAL, SUCCESS, 116.0, CLOSED_BREAKER),
    "the trial's failure reopens for twice as long": (TRIAL, FAILURE, 116.0, Breaker(OPEN, 0, 136.0, False, 2)),
    "a cancelled trial frees the slot": (TRIAL, CANCEL, 116.0, TRIAL._replace(trial=False)),
    "a lost trial is given up on": (TRIAL, TICK, 125.0, TRIAL._replace(trial=False)),
    "a trial is waited for until then": (TRIAL, TICK, 124.0, TRIAL),
    "half-open ignores checks": (TRIAL, CHECK_OK, 116.0, TRIAL),
    "half-open without trial ignores cancel": (HALF, CANCEL, 116.0, HALF),
    "backoff stops at 8x": (Breaker(HALF_OPEN, 0, 0.0, True, 9), FAILURE, 0.0, Breaker(OPEN, 0, 80.0, False, 10)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_transitions(case):
    start, event, now, expected = case
    assert step(start, event, now, O) == expected


def test_zero_consecutive_failures_never_opens():
    off = OutlierConfig(consecutive_failures=0, ejection_time=10.0)
    assert run([(FAILURE, float(t)) for t in range(100)], off).phase == CLOSED


def test_admits():
    assert admits(CLOSED_BREAKER) and admits(HALF)
    assert not admits(OPEN_AT_100) and not admits(TRIAL)


def test_a_dead_target_is_tried_less_and_less():
    """Each failed trial doubles the ejection, up to MAX_BACKOFF times ejection_time."""
    b, now, gaps = run([(FAILURE, 0.0)] * 3), 0.0, []
    for _ in range(6):
        gaps.append(b.until - now)
        now = b.until
        b = step(step(step(b, TICK, now, O), ADMIT, now, O), FAILURE, now, O)
    assert gaps == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]
    assert MAX_BACKOFF == 8


class Reference:
    """The same breaker, written as a plain object with if-statements."""

    def __init__(self, outlier):
        self.o = outlier
        self.phase, self.failures, self.until, self.trial, self.ejections = CLOSED, 0, 0.0, False, 0

    def open(self, now):
        self.ejections += 1
        self.phase, self.failures, self.trial = OPEN, 0, False
        self.until = now + self.o.ejection_time * min(2 ** (self.ejections - 1), 8)

    def event(self, event, now):
        if self.phase == CLOSED:
            if event == SUCCESS:
                self.failures, self.ejections, self.until = 0, 0, 0.0
            elif event == FAILURE:
                self.failures += 1
                if self.o.consecutive_failures and self.failures >= self.o.consecutive_failures:
                    self.open(now)
        elif self.phase == OPEN:
            if event == CHECK_OK or (event == TICK and now >= self.until):
                self.phase, self.trial = HALF_OPEN, False
                if event == CHECK_OK:
                    self.until = now
        else:
            if event == SUCCESS:
                self.phase, self.failures, self.until, self.trial, self.ejections = CLOSED, 0, 0.0, False, 0
            elif event == FAILURE:
                self.open(now)
            elif event == ADMIT and not self.trial:
                self.trial, self.until = True, now + self.o.ejection_time
            elif event == CANCEL or (event == TICK and self.trial and now >= self.until):
                self.trial = False

    def state(self):
        return Breaker(self.phase, self.failures, self.until, self.trial, self.ejections)


outliers = st.builds(OutlierConfig, st.integers(0, 6), st.sampled_from([0.5, 1.0, 10.0]))
histories = st.lists(st.tuples(st.sampled_from(EVENTS), st.floats(0.0, 30.0)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(outliers, histories)
def test_matches_the_reference_model(outlier, history):
    ref, b, now = Reference(outlier), CLOSED_BREAKER, 0.0
    for event, dt in history:
        now += dt
        before = b
        b = step(b, event, now, outlier)
        ref.event(event, now)
        assert b == ref.state(), (before, event, now)
        assert b.phase in PHASES
        if b.phase == CLOSED:
            assert b.failures < max(outlier.consecutive_failures, 1) or not outlier.consecutive_failures
        if b.phase == OPEN:
            assert not admits(b)
            if before.phase != OPEN:
                assert now < b.until <= now + MAX_BACKOFF * outlier.ejection_time
        if before.phase == OPEN and b.phase != OPEN:
            assert event == CHECK_OK or (event == TICK and now >= before.until)
