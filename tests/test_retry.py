"""Retry decisions (gatewayd/upstream/retry.py) with the time passed in: the budget's windows,
and what stops a retry."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.config.model import RetryConfig
from gatewayd.upstream.retry import MIN_RETRIES, RETRIES, WINDOW_S, Retries, RetryBudget


def test_an_idle_upstream_may_retry_a_few_times():
    budget = RetryBudget(0.2)
    assert sum(budget.spend(1.0) for _ in range(50)) == MIN_RETRIES


def test_retries_are_a_fraction_of_requests():
    budget = RetryBudget(0.2)
    for _ in range(1000):
        budget.request(1.0)
    assert sum(budget.spend(2.0) for _ in range(1000)) == 200 + MIN_RETRIES


def test_the_budget_remembers_one_window_back():
    budget = RetryBudget(0.5)
    for _ in range(100):
        budget.request(0.0)
    assert sum(budget.spend(0.0) for _ in range(40)) == 40
    # next window: the earlier requests and retries still count
    assert sum(budget.spend(WINDOW_S + 1) for _ in range(100)) == 50 + MIN_RETRIES - 40
    # two windows on, they are forgotten
    assert sum(budget.spend(3 * WINDOW_S + 2) for _ in range(100)) == MIN_RETRIES


@settings(max_examples=500, deadline=None)
@given(st.floats(0.0, 1.0), st.lists(st.tuples(st.booleans(), st.floats(0.0, 3.0)), max_size=300))
def test_a_granted_retry_fits_the_two_windows(ratio, events):
    budget, now = RetryBudget(ratio), 0.0
    for is_retry, dt in events:
        now += dt
        if not is_retry:
            budget.request(now)
        elif budget.spend(now):
            retries = budget.retries + budget.earlier_retries
            assert retries <= ratio * (budget.requests + budget.earlier_requests) + MIN_RETRIES


def test_a_failing_upstream_gets_a_fraction_of_its_requests_as_retries():
    """100 requests a second for a minute, every one failing and asking for a retry."""
    budget, retries = RetryBudget(0.2), 0
    for k in range(6000):
        now = k / 100
        budget.request(now)
        retries += budget.spend(now)
    assert retries / 6000 <= 0.2 + 2 * MIN_RETRIES / 2000


def test_what_stops_a_retry():
    r = Retries("up", RetryConfig(attempts=3, budget=1.0), targets=4)
    assert r.again(0b0001, now=1.0, deadline=5.0)
    assert r.again(0b0011, now=1.0, deadline=5.0)
    assert not r.again(0b0111, now=1.0, deadline=5.0), "three attempts made"
    assert not r.again(0b0001, now=5.0, deadline=5.0), "no time left"
    two = Retries("up", RetryConfig(attempts=5), targets=2)
    assert not two.again(0b11, now=1.0, deadline=5.0), "every target tried"


def test_refusals_are_counted():
    r = Retries("counted", RetryConfig(attempts=2, budget=0.0), targets=2)
    results = [r.again(0b01, now=1.0, deadline=5.0) for _ in range(MIN_RETRIES + 3)]
    assert results.count(True) == MIN_RETRIES
    assert RETRIES.values[("counted", "sent")] == MIN_RETRIES
    assert RETRIES.values[("counted", "over_budget")] == 3
