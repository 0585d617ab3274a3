"""Event-loop lag, measured always: a periodic timer that records how late it runs.

Every ``interval_s`` the loop is asked to call back; the time between when the callback was due and when it ran
is what every other callback waited as well — a handler doing CPU work or blocking I/O without ``await`` shows up
here first. One timer handle per runner (no task), one histogram observation per tick: at the default 50 ms,
20 callbacks a second. uvloop's timers have millisecond resolution, so lags under about 1 ms read as noise::

    lag = LoopLag(metrics.loop_lag, interval_s=0.05)
    lag.start(asyncio.get_running_loop())
    ...
    lag.stop()
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from ..components import HistSample
from ..metrics import Pow2Histogram

__all__ = ["LoopLag", "LoopLagStatistics"]


class LoopLagStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """The lag histogram's figures since the runner started, and the latest and worst single lags, in ms."""

    interval_ms: float
    ticks: int
    last_ms: float
    max_ms: float
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None


class LoopLag:
    """The timer that measures event-loop lag into ``hist``; see the module docstring."""

    def __init__(self, hist: Pow2Histogram, *, interval_s: float) -> None:
        self.hist = hist
        self.interval_s = interval_s
        self.last_s = 0.0
        self.max_s = 0.0
        self._due = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return f"<LoopLag interval_s={self.interval_s} ticks={self.hist.count} last_ms={self.last_s * 1e3:.2f}>"

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._arm()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None

    def _arm(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._due = time.perf_counter() + self.interval_s
        self._handle = loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        lag = max(0.0, time.perf_counter() - self._due)
        self.hist.observe(lag)
        self.last_s = lag
        if lag > self.max_s:
            self.max_s = lag
        self._arm()

    def statistics(self) -> LoopLagStatistics:
        h = HistSample.of(self.hist)
        p50, p99, mean = h.quantile(0.5), h.quantile(0.99), h.mean()
        return LoopLagStatistics(
            interval_ms=self.interval_s * 1e3,
            ticks=h.count,
            last_ms=round(self.last_s * 1e3, 3),
            max_ms=round(self.max_s * 1e3, 3),
            p50_ms=None if p50 is None else round(p50 * 1e3, 3),
            p99_ms=None if p99 is None else round(p99 * 1e3, 3),
            mean_ms=None if mean is None else round(mean * 1e3, 3),
        )
