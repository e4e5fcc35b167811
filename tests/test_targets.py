"""Picking targets (gatewayd/upstream/targets.py and balance.py) on a fake clock: ejected targets
are skipped, a half-open one gets one trial, every target out means trying them all, and weights
share requests in proportion."""

from __future__ import annotations

from collections import Counter

import pytest

from gatewayd.config.model import OutlierConfig
from gatewayd.observe.metrics import TARGET_STATE, TARGET_TRANSITIONS
from gatewayd.upstream import targets as targets_module
from gatewayd.upstream.balance import BALANCERS, LeastRequests, RoundRobin
from gatewayd.upstream.breaker import CANCEL, FAILURE, SUCCESS
from gatewayd.upstream.health import Settings
from gatewayd.upstream.targets import Rotation, Target

OUTLIER = OutlierConfig(consecutive_failures=3, ejection_time=10.0)
CHECKS = Settings(healthy_threshold=2, unhealthy_threshold=2, slow_start=10.0)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(targets_module, "monotonic", c)
    return c


def rotation(n: int = 2, balance: str = "round_robin", settings: Settings = Settings()) -> Rotation:
    return Rotation(tuple(Target("up", f"http://t{i}") for i in range(n)), BALANCERS[balance](n), OUTLIER, settings)


def send(r: Rotation, outcome: str = SUCCESS, tried: int = 0) -> int:
    i = r.pick(tried)
    r.report(i, outcome)
    r.done(i)
    return i


def eject(r: Rotation, i: int) -> None:
    for _ in range(OUTLIER.consecutive_failures):
        r.report(i, FAILURE)
    assert r.members[i].state == "ejected"


def test_all_in_rotation_alternates(clock):
    r = rotation(3)
    assert [send(r) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_an_ejected_target_is_skipped(clock):
    r = rotation(3)
    eject(r, 1)
    picks = Counter(send(r) for _ in range(60))
    assert picks[1] == 0 and picks[0] == picks[2] == 30


def test_a_half_open_target_gets_one_trial_then_rejoins(clock):
    r = rotation(2)
    eject(r, 1)
    clock.now += OUTLIER.ejection_time
    trial = [r.pick() for _ in range(4)]  # none reported yet: the trial is in flight
    assert trial.count(1) == 1 and r.members[1].state == "probing"
    for i in trial:
        r.report(i, SUCCESS)
        r.done(i)
    assert r.members[1].state == "healthy" and r.members[1].full
    assert Counter(send(r) for _ in range(10)) == {0: 5, 1: 5}


def test_a_failed_trial_ejects_again_for_longer(clock):
    r = rotation(2)
    eject(r, 1)
    clock.now += OUTLIER.ejection_time
    while send(r, FAILURE if r.members[1].state == "probing" else SUCCESS) != 1:
        pass
    assert r.members[1].state == "ejected"
    clock.now += OUTLIER.ejection_time
    assert 1 not in {send(r) for _ in range(10)}, "ejected for twice as long now"
    clock.now += OUTLIER.ejection_time
    assert 1 in {send(r) for _ in range(10)}


def test_a_cancelled_trial_lets_another_request_try(clock):
    r = rotation(2)
    eject(r, 1)
    clock.now += OUTLIER.ejection_time
    while (i := r.pick()) != 1:
        r.report(i, SUCCESS)
    r.report(1, CANCEL)
    r.done(1)
    assert 1 in {send(r) for _ in range(4)}


def test_every_target_out_means_trying_them_all(clock):
    r = rotation(2)
    eject(r, 0)
    eject(r, 1)
    assert Counter(send(r, FAILURE) for _ in range(10)) == {0: 5, 1: 5}


def test_a_retry_goes_to_a_target_not_tried(clock):
    r = rotation(3)
    for first in range(3):
        tried = 1 << first
        assert {r.pick(tried) for _ in range(6)} == set(range(3)) - {first}
    assert r.pick(0b011) == 2
    eject(r, 2)
    assert r.pick(0b011) == 2, "an ejected target is still better than no retry"


def test_state_survives_in_the_target_objects(clock):
    """A new generation built on the same Target objects sees the ejection."""
    r = rotation(2)
    eject(r, 1)
    again = Rotation(r.members, RoundRobin(2), OUTLIER)
    assert {send(again) for _ in range(6)} == {0}


def test_health_lists_every_target(clock):
    r = rotation(2)
    eject(r, 0)
    clock.now += 2.5
    assert r.health() == [
        {"target": "http://t0", "state": "ejected", "for_s": 2.5},
        {"target": "http://t1", "state": "healthy", "for_s": 2.5},
    ]


def test_failed_checks_eject_and_passed_checks_bring_back_in_slow_start(clock):
    r = rotation(2, settings=CHECKS)
    t = r.members[1]
    t.check(False, clock.now, r)
    assert t.state == "healthy"
    t.check(False, clock.now, r)
    assert t.state == "ejected" and 1 not in {send(r) for _ in range(6)}
    t.check(True, clock.now, r)
    assert t.state == "probing" and 1 not in {send(r) for _ in range(6)}
    t.check(True, clock.now, r)
    assert t.state == "slow_start"
    picks = Counter(send(r) for _ in range(100))
    assert 2 <= picks[1] <= 12, f"about a tenth of its share at first: {picks}"
    clock.now += 5.0
    picks = Counter(send(r) for _ in range(100))
    assert 25 <= picks[1] <= 40, f"half its share halfway: {picks}"
    clock.now += 5.0
    assert Counter(send(r) for _ in range(100)) == {0: 50, 1: 50}
    assert t.state == "healthy" and t.full


def test_a_passed_check_tries_a_passively_ejected_target_at_once(clock):
    r = rotation(2, settings=CHECKS)
    eject(r, 1)
    r.members[1].check(True, clock.now + 1.0, r)
    assert r.members[1].state == "probing", "half-open long before the ejection ends"
    picks = [r.pick() for _ in range(4)]
    assert picks.count(1) == 1
    r.report(1, SUCCESS)
    assert r.members[1].state == "slow_start", "back from the breaker: slow start"


def test_a_target_out_by_either_machine_is_out(clock):
    r = rotation(2, settings=CHECKS)
    t = r.members[1]
    t.check(False, clock.now, r)
    t.check(False, clock.now, r)
    eject(r, 1)
    clock.now += OUTLIER.ejection_time
    assert r.health()[1]["state"] == "ejected", "the breaker is half-open, but the checks still fail"
    assert 1 not in {send(r) for _ in range(6)}


def test_state_changes_are_in_the_metrics(clock):
    r = rotation(2)
    labels = ("up", "http://t1")
    r.members[1].publish()  # as the registry does when a config with it goes into service
    assert TARGET_STATE.values[(*labels, "healthy")] == 1 and TARGET_STATE.values[(*labels, "ejected")] == 0
    entered = TARGET_TRANSITIONS.values.get((*labels, "ejected"), 0)
    eject(r, 1)
    assert TARGET_STATE.values[(*labels, "ejected")] == 1 and TARGET_STATE.values[(*labels, "healthy")] == 0
    assert TARGET_TRANSITIONS.values[(*labels, "ejected")] == entered + 1
    r.members[1].forget()
    assert not any(k[:2] == labels for k in TARGET_STATE.values)
    r.report(1, SUCCESS)
    clock.now += OUTLIER.ejection_time
    r.members[1].tick(clock.now, r)
    assert not any(k[:2] == labels for k in TARGET_STATE.values), "a forgotten target stays out of the metrics"


@pytest.mark.parametrize("weights", [[1.0, 0.25], [1.0, 1.0, 0.5], [0.0, 1.0, 0.1]])
def test_round_robin_picks_in_proportion_to_weights(weights):
    rr = RoundRobin(len(weights))
    picks = Counter(rr.pick_among(weights) for _ in range(1000))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(picks[i] - 1000 * w / total) <= 1


def test_least_requests_weighs_requests_in_flight():
    lr = LeastRequests(2)
    lr.in_flight[:] = [3, 1]
    assert lr.pick_among([1.0, 1.0]) == 1
    lr.in_flight[:] = [3, 1]
    assert lr.pick_among([1.0, 0.1]) == 0, "(3+1)/1 < (1+1)/0.1"
    assert lr.pick_among([0.0, 0.1]) == 1
    assert lr.in_flight == [4, 2]
