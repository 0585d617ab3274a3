"""k6-style stages (``"30s:100,1m:500,30s:0"``) and the piecewise-linear load profile they describe.

A :class:`Profile` maps time since the start of the run to a target (virtual users, or arrivals per second)
that moves linearly from the previous stage's target to this stage's target over the stage's duration; the
run starts at 0 like k6's ramping executors. For the open model it also answers "when is arrival ``n`` due?"
exactly, by inverting the integral of the rate, so arrivals sit on an absolute timeline and never drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..parse import ParseError, parse_duration

__all__ = ["MAX_STAGES", "Profile", "Stage", "StageSyntaxError", "parse_stages"]

#: A run is at most this many stages; each holds a few histograms.
MAX_STAGES = 100


class StageSyntaxError(ParseError):
    """A stage list that cannot be parsed; the message says what a good one looks like."""


@dataclass(frozen=True, slots=True)
class Stage:
    """Ramp linearly from the previous target to ``target`` over ``duration_s``."""

    duration_s: float
    target: float

    def describe(self) -> str:
        return f"{self.duration_s:g}s:{self.target:g}"


def parse_stages(text: str) -> list[Stage]:
    """``"30s:100,1m:500,30s:0"`` → stages; the targets are VUs or (with a rate) arrivals per second."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(parts):
        raise StageSyntaxError(
            f"{text!r} is not a stage list; write duration:target pairs separated by commas, like 30s:100,1m:500."
        )
    if len(parts) > MAX_STAGES:
        raise StageSyntaxError(f"{len(parts)} stages is too many; a run takes at most {MAX_STAGES}.")
    stages = []
    for part in parts:
        duration, sep, target = part.partition(":")
        if not sep:
            raise StageSyntaxError(f"stage {part!r} has no target; write duration:target, like 30s:100.")
        try:
            value = float(target.split("/")[0]) if target.strip() else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= 0):
            raise StageSyntaxError(f"stage {part!r} has target {target!r}; give a number of 0 or more, like 30s:100.")
        stages.append(Stage(parse_duration(duration), value))
    return stages


class Profile:
    """The target over time: stages ramp linearly from ``start`` (0 by default, as in k6).

    ::

        p = Profile(parse_stages("10s:100,10s:100"))
        p.target_at(5.0)        # 50.0
        p.arrival_time(499)     # 9.99...: when the 500th arrival of a 'rate' profile is due
    """

    def __init__(self, stages: list[Stage], start: float = 0.0) -> None:
        if not stages:
            raise StageSyntaxError("a run needs at least one stage, or a --duration.")
        self.stages = list(stages)
        self.start = start
        self.bounds: list[tuple[float, float, float, float, float]] = []  # (t0, t1, v0, v1, arrivals before t0)
        t, v, area = 0.0, start, 0.0
        for s in stages:
            self.bounds.append((t, t + s.duration_s, v, s.target, area))
            area += (v + s.target) / 2.0 * s.duration_s
            t, v = t + s.duration_s, s.target
        self.duration_s = t
        self.total = area
        self._cursor = 0

    @classmethod
    def constant(cls, target: float, duration_s: float) -> Profile:
        return cls([Stage(duration_s, target)], start=target)

    def stage_index(self, t: float) -> int:
        for i, (_t0, t1, *_rest) in enumerate(self.bounds):
            if t < t1:
                return i
        return len(self.bounds) - 1

    def target_at(self, t: float) -> float:
        if t >= self.duration_s:
            return self.bounds[-1][3]
        t0, t1, v0, v1, _ = self.bounds[self.stage_index(max(t, 0.0))]
        return v0 + (v1 - v0) * (max(t, 0.0) - t0) / (t1 - t0)

    def integral(self, t: float) -> float:
        """Arrivals due in ``[0, t)`` for a rate profile."""
        t = min(max(t, 0.0), self.duration_s)
        t0, _t1, v0, _v1, area = self.bounds[self.stage_index(t)]
        dt = t - t0
        return area + v0 * dt + (self.target_at(t) - v0) * dt / 2.0

    def arrival_time(self, n: int) -> float | None:
        """When arrival ``n`` (0-based) is due: the ``t`` where the integral reaches ``n``; None past the end.

        Successive calls with growing ``n`` (the scheduler's pattern) walk the stages once, so each call is O(1).
        """
        x = float(n)
        if x >= self.total - 1e-9:
            return None
        bounds = self.bounds
        i = self._cursor if bounds[self._cursor][4] <= x else 0
        while i + 1 < len(bounds) and bounds[i + 1][4] <= x:
            i += 1
        self._cursor = i
        t0, t1, v0, v1, area = bounds[i]
        need = x - area
        slope = (v1 - v0) / (t1 - t0)
        # v0*dt + slope*dt²/2 = need, in the form that stays exact for a flat (or nearly flat) stage
        root = math.sqrt(max(v0 * v0 + 2.0 * slope * need, 0.0)) + v0
        dt = 2.0 * need / root if root > 0 else 0.0
        return min(t0 + dt, t1)
