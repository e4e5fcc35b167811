"""The target health table (gatewayd/upstream/health.py): every (kind, event) pair, the expected
transitions as data, slow start's weights, and random histories against a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.upstream.health import (
    CHECK_FAIL, CHECK_OK, EJECTED, EVENTS, HEALTHY, HEALTHY_STATE, KINDS, MIN_WEIGHT, PROBING, RECOVERED, SLOW_START,
    TABLE, TICK, Health, Settings, step, weight,
)  # fmt: skip

S = Settings(healthy_threshold=2, unhealthy_threshold=3, slow_start=10.0)


def test_the_table_has_every_pair():
    assert set(TABLE) == {(k, e) for k in KINDS for e in EVENTS}


CASES = {
    "a passed check clears the failures": (Health(HEALTHY, 2), CHECK_OK, 5.0, HEALTHY_STATE),
    "failed checks count up": (Health(HEALTHY, 1), CHECK_FAIL, 5.0, Health(HEALTHY, 2)),
    "the last failed check ejects": (Health(HEALTHY, 2), CHECK_FAIL, 5.0, Health(EJECTED, 0, 5.0)),
    "back from a passive ejection: slow start": (HEALTHY_STATE, RECOVERED, 5.0, Health(SLOW_START, 0, 5.0)),
    "healthy ignores time": (HEALTHY_STATE, TICK, 1e9, HEALTHY_STATE),
    "the first pass starts probing": (Health(EJECTED, 0, 1.0), CHECK_OK, 5.0, Health(PROBING, 1, 5.0)),
    "ejected stays ejected on failures": (Health(EJECTED, 0, 1.0), CHECK_FAIL, 5.0, Health(EJECTED, 0, 1.0)),
    "the checks decide while they fail": (Health(EJECTED, 0, 1.0), RECOVERED, 5.0, Health(EJECTED, 0, 1.0)),
    "ejected ignores time": (Health(EJECTED, 0, 1.0), TICK, 1e9, Health(EJECTED, 0, 1.0)),
    "enough passes: slow start": (Health(PROBING, 1, 5.0), CHECK_OK, 6.0, Health(SLOW_START, 0, 6.0)),
    "a failure while probing ejects": (Health(PROBING, 1, 5.0), CHECK_FAIL, 6.0, Health(EJECTED, 0, 6.0)),
    "probing ignores a recovered breaker": (Health(PROBING, 1, 5.0), RECOVERED, 6.0, Health(PROBING, 1, 5.0)),
    "probing ignores time": (Health(PROBING, 1, 5.0), TICK, 1e9, Health(PROBING, 1, 5.0)),
    "slow start ramps until its end": (Health(SLOW_START, 0, 6.0), TICK, 15.9, Health(SLOW_START, 0, 6.0)),
    "slow start ends healthy": (Health(SLOW_START, 0, 6.0), TICK, 16.0, HEALTHY_STATE),
    "slow start counts failed checks": (Health(SLOW_START, 0, 6.0), CHECK_FAIL, 7.0, Health(SLOW_START, 1, 6.0)),
    "slow start ejects as healthy does": (Health(SLOW_START, 2, 6.0), CHECK_FAIL, 7.0, Health(EJECTED, 0, 7.0)),
    "slow start clears failures on a pass": (Health(SLOW_START, 2, 6.0), CHECK_OK, 7.0, Health(SLOW_START, 0, 6.0)),
    "ejected and back again: the ramp restarts": (Health(SLOW_START, 0, 6.0), RECOVERED, 9.0, Health(SLOW_START, 0, 9.0)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_transitions(case):
    start, event, now, expected = case
    assert step(start, event, now, S) == expected


def test_no_slow_start_means_healthy_at_once():
    quick = Settings(healthy_threshold=1, unhealthy_threshold=1, slow_start=0.0)
    assert step(Health(EJECTED, 0, 1.0), CHECK_OK, 5.0, quick) == HEALTHY_STATE
    assert step(HEALTHY_STATE, RECOVERED, 5.0, quick) == HEALTHY_STATE
    assert step(HEALTHY_STATE, CHECK_FAIL, 5.0, quick).kind == EJECTED


def test_weights():
    assert weight(HEALTHY_STATE, 0.0, S) == 1.0
    assert weight(Health(EJECTED), 0.0, S) == weight(Health(PROBING, 1), 0.0, S) == 0.0
    ramp = [weight(Health(SLOW_START, 0, 100.0), 100.0 + t, S) for t in (0, 0.5, 1, 5, 9.9, 10, 20)]
    assert ramp == [MIN_WEIGHT, MIN_WEIGHT, 0.1, 0.5, pytest.approx(0.99), 1.0, 1.0]


class Reference:
    """The same machine as a plain object with if-statements."""

    def __init__(self, s):
        self.s = s
        self.kind, self.count, self.since = HEALTHY, 0, 0.0

    def back(self, now):
        self.kind, self.count, self.since = (SLOW_START, 0, now) if self.s.slow_start > 0 else (HEALTHY, 0, 0.0)

    def event(self, event, now):
        if self.kind in (HEALTHY, SLOW_START):
            if event == CHECK_OK:
                self.count = 0
            elif event == CHECK_FAIL:
                self.count += 1
                if self.count >= self.s.unhealthy_threshold:
                    self.kind, self.count, self.since = EJECTED, 0, now
            elif event == RECOVERED:
                self.back(now)
            elif event == TICK and self.kind == SLOW_START and now >= self.since + self.s.slow_start:
                self.kind, self.count, self.since = HEALTHY, 0, 0.0
        elif event == CHECK_OK:
            passes = self.count + 1 if self.kind == PROBING else 1
            if passes >= self.s.healthy_threshold:
                self.back(now)
            elif self.kind == PROBING:
                self.count = passes
            else:
                self.kind, self.count, self.since = PROBING, 1, now
        elif event == CHECK_FAIL and self.kind == PROBING:
            self.kind, self.count, self.since = EJECTED, 0, now

    def state(self):
        return Health(self.kind, self.count, self.since)


settings_strategy = st.builds(Settings, st.integers(1, 4), st.integers(1, 4), st.sampled_from([0.0, 1.0, 10.0]))
histories = st.lists(st.tuples(st.sampled_from(EVENTS), st.floats(0.0, 5.0)), max_size=60)


@settings(max_examples=400, deadline=None)
@given(settings_strategy, histories)
def test_matches_the_reference_model(s, history):
    ref, h, now = Reference(s), HEALTHY_STATE, 0.0
    for event, dt in history:
        now += dt
        before = h
        h = step(h, event, now, s)
        ref.event(event, now)
        assert h == ref.state(), (before, event, now)
        w = weight(h, now, s)
        assert (w > 0) == (h.kind in (HEALTHY, SLOW_START)) and 0 <= w <= 1
        if before.kind in (EJECTED, PROBING) and h.kind in (HEALTHY, SLOW_START):
            assert event == CHECK_OK, "only passing checks bring an actively ejected target back"
