"""Retry budget on a fake clock: the ratio holds under a burst of failures, the floor lets a quiet client retry,
and the budget refills as old calls leave the window."""

from __future__ import annotations

import pytest

from agentflow import Metrics, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_ratio_holds_under_a_burst_of_failures() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=1.0, clock=clock)
    allowed = 0
    for i in range(1000):  # an outage: 1000 calls in 5 s, every one failing and asking to retry three times
        clock.now = i * 0.005
        budget.record_call()
        for _ in range(3):
            allowed += budget.try_spend()
    # 20 % of the calls plus the floor of 1/s over the 10 s window: an outage adds at most ~21 % load, not 300 %.
    assert allowed == 200 + 10
    s = budget.statistics()
    assert (s.window_calls, s.window_retries, s.available, s.retries, s.exhausted) == (1000, 210, 0, 210, 2790)


def test_the_floor_lets_a_quiet_client_retry() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, window_s=10.0, min_retries_per_s=0.5, clock=clock)
    budget.record_call()
    assert [budget.try_spend() for _ in range(6)] == [True] * 5 + [False]


def test_the_budget_refills_as_calls_and_retries_leave_the_window() -> None:
    clock = Clock()
    metrics = Metrics()
    budget = RetryBudget(ratio=0.5, window_s=10.0, min_retries_per_s=0.0, clock=clock, name="llm", metrics=metrics)
    for _ in range(10):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(10)) == 5
    clock.now = 10.0  # a full window later everything has left
    assert not budget.try_spend()
    budget.record_call()
    budget.record_call()
    assert budget.try_spend() and not budget.try_spend()
    text = metrics.render().decode()
    assert 'agentflow_retry_budget_retries_total{budget="llm"} 6.0' in text
    assert 'agentflow_retry_budget_exhausted_total{budget="llm"} 7.0' in text
    assert repr(budget).startswith("<RetryBudget 'llm' ratio=0.5")


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s must be greater than 0"):
        RetryBudget(window_s=0)
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-1)
