"""Collects closed windows into stages and the run, checks thresholds, decides on an early abort, samples RSS.

Abort rule (``abort_on_fail``): after each window, every threshold is checked against that window's figures
(counts such as ``errors`` or ``dropped`` against the run so far); when some threshold has failed in every
window for ``abort_grace_s``, the run stops. Verdicts that decide the exit code are per stage and for the whole
run, computed at the end from exact histogram merges.
"""

from __future__ import annotations

import os
from typing import Any

from agentflow import LatencyHistogram

from .figures import Accumulator, WindowList, WindowRecord, figures_of
from .plan import Plan

__all__ = ["Collector", "rss_mb"]

_COUNT_METRICS = {"errors", "dropped", "vus"}
MAX_RSS_SAMPLES = 240


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; 0.0 where unavailable)."""
    try:
        with open(f"/proc/{os.getpid()}/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Collector:
    def __init__(self, plan: Plan, *, max_windows: int | None = None) -> None:
        self.plan = plan
        self.windows = WindowList(max_windows) if max_windows is not None else WindowList()
        self.stages = [Accumulator(i) for i in range(len(plan.stages))]
        self.so_far = Accumulator()  # counters only (no histograms): the run-so-far for count thresholds
        self.last: dict[str, float | None] = {}
        self.failing_since: float | None = None
        self.abort_reason: str | None = None
        self.rss_samples: list[tuple[float, float]] = []
        self._rss_every = 1

    def __repr__(self) -> str:
        return f"<Collector windows={len(self.windows)} merges={self.windows.merges} stages={len(self.stages)}>"

    def on_window(self, rec: WindowRecord, live: dict[str, Any] | None) -> bool:
        """Take one closed window (``live``: its histograms still in memory); True asks the engine to stop."""
        self.windows.append(rec)
        self.stages[min(rec.stage, len(self.stages) - 1)].add(rec, live)
        for field in ("scheduled", "started", "completed", "errors", "dropped"):
            setattr(self.so_far, field, getattr(self.so_far, field) + getattr(rec, field))
        hists = live if live is not None else {k: LatencyHistogram.from_bytes(v) for k, v in rec.hists.items()}
        d = rec.t1_s - rec.t0_s
        self.last = figures_of(
            d, rec.target * d, rec.scheduled, rec.started, rec.completed, rec.errors, rec.dropped, rec.vus_max,
            hists, open_model=self.plan.open_model,
        )  # fmt: skip
        self.last["t1_s"] = rec.t1_s
        self._sample_rss(rec.t1_s)
        return self._abort_check(rec)

    def _sample_rss(self, t: float) -> None:
        # One sample per window, thinned (every other one dropped, stride doubled) when the list is full.
        if len(self.windows) % self._rss_every:
            return
        self.rss_samples.append((round(t, 3), round(rss_mb(), 2)))
        if len(self.rss_samples) > MAX_RSS_SAMPLES:
            self.rss_samples = self.rss_samples[::2]
            self._rss_every *= 2

    def _abort_check(self, rec: WindowRecord) -> bool:
        if not self.plan.spec.abort_on_fail or not self.plan.thresholds:
            return False
        counts = {"errors": float(self.so_far.errors), "dropped": float(self.so_far.dropped)}
        failed = None
        for th in self.plan.thresholds:
            figures = counts if th.metric in _COUNT_METRICS and th.metric != "vus" else self.last
            ok, observed = th.evaluate({**self.last, **figures})
            if ok is False:
                failed = f"{th.text} (observed {th.describe_value(observed)} in the window ending at {rec.t1_s:.1f}s)"
                break
        if failed is None:
            self.failing_since = None
            return False
        if self.failing_since is None:
            self.failing_since = rec.t0_s
        if rec.t1_s - self.failing_since >= self.plan.abort_grace_s:
            self.abort_reason = failed
            return True
        return False

    def total(self) -> Accumulator:
        acc = Accumulator()
        for s in self.stages:
            acc.merge(s)
        return acc
