"""A retry budget: retries may be at most a fraction of recent calls, so an outage never multiplies the load.

Per-call retry limits (``max_attempts=3``) still let every call of an outage try three times: three times the
load on a struggling upstream. A budget caps retries across all calls instead (Finagle's ``RetryBudget``, gRPC's
retry throttling): within the last ``window_s`` seconds, retries may number ``ratio`` times the calls plus
``min_retries_per_s * window_s``, the floor that lets a quiet client still retry now and then.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import msgspec

from ..metrics import BudgetMetrics, Metrics

__all__ = ["RetryBudget", "RetryBudgetStatistics"]

DEFAULT_RETRY_BUDGET_RATIO = 0.2
DEFAULT_RETRY_BUDGET_WINDOW_S = 10.0
DEFAULT_RETRY_BUDGET_MIN_PER_S = 1.0
#: The window is kept in this many buckets: calls leave it a tenth of ``window_s`` at a time.
_BUCKETS = 10


class RetryBudgetStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot: calls and retries in the window, retries still allowed now, counts since creation."""

    name: str
    window_calls: int
    window_retries: int
    available: int
    retries: int
    exhausted: int


class RetryBudget:
    """Allow a retry only while retries stay within ``ratio`` of recent calls (plus a small floor)::

        budget = RetryBudget(ratio=0.2, window_s=10.0)
        budget.record_call()                 # once per first attempt
        ...
        if failed and budget.try_spend():    # once per retry; False: give up now
            retry()

    Call :meth:`record_call` for each first attempt only: retries are what the budget limits, not what earns it.
    """

    def __init__(
        self,
        *,
        ratio: float = DEFAULT_RETRY_BUDGET_RATIO,
        window_s: float = DEFAULT_RETRY_BUDGET_WINDOW_S,
        min_retries_per_s: float = DEFAULT_RETRY_BUDGET_MIN_PER_S,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        if ratio < 0:
            raise ValueError(f"ratio must be 0 or more, not {ratio!r}.")
        if window_s <= 0:
            raise ValueError(f"window_s must be greater than 0, not {window_s!r}.")
        if min_retries_per_s < 0:
            raise ValueError(f"min_retries_per_s must be 0 or more, not {min_retries_per_s!r}.")
        self.name = name
        self.ratio = ratio
        self.window_s = window_s
        self.min_retries_per_s = min_retries_per_s
        self._clock = clock
        self._width = window_s / _BUCKETS
        self._floor = min_retries_per_s * window_s
        self._m: BudgetMetrics = metrics.retry_budget(name) if metrics is not None else BudgetMetrics(name)
        self._buckets: deque[list[int]] = deque()  # [bucket number, calls, retries]
        self._calls = 0
        self._retries = 0

    def _bucket(self) -> list[int]:
        n = int(self._clock() // self._width)
        b = self._buckets
        while b and b[0][0] <= n - _BUCKETS:
            _, calls, retries = b.popleft()
            self._calls -= calls
            self._retries -= retries
        if not b or b[-1][0] != n:
            b.append([n, 0, 0])
        return b[-1]

    def record_call(self) -> None:
        """Count one call (a first attempt); each earns ``ratio`` of a retry for ``window_s``."""
        b = self._buckets
        if b and b[-1][0] == int(self._clock() // self._width):  # the current bucket: nothing expires
            b[-1][1] += 1
        else:
            self._bucket()[1] += 1
        self._calls += 1

    def _available(self) -> float:
        return self.ratio * self._calls + self._floor - self._retries

    def try_spend(self) -> bool:
        """True: this retry is allowed, and counted. False: the budget is used up; fail without retrying."""
        bucket = self._bucket()
        if self._available() >= 1.0:
            bucket[2] += 1
            self._retries += 1
            self._m.retries += 1
            return True
        self._m.exhausted += 1
        return False

    def statistics(self) -> RetryBudgetStatistics:
        self._bucket()
        return RetryBudgetStatistics(
            name=self.name,
            window_calls=self._calls,
            window_retries=self._retries,
            available=max(0, int(self._available())),
            retries=self._m.retries,
            exhausted=self._m.exhausted,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<RetryBudget {s.name!r} ratio={self.ratio:g} window_s={self.window_s:g} calls={s.window_calls} "
            f"retries={s.window_retries} available={s.available} exhausted={s.exhausted}>"
        )
