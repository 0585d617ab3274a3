"""Thresholds: ``p99<250ms``, ``error_rate<0.01``, ``rate>=0.95*target``, parsed once and evaluated per stage.

A threshold names a figure of the run, a comparison and a bound. Latency figures (``p50 p90 p95 p99 p999 max
mean min``, prefixed ``lag_`` for the generator's own start lag, ``service_`` for start-to-finish time,
``ttft_`` / ``itl_`` for streaming time to first token and inter-token latency) take durations; a plain number
means milliseconds, as in k6. ``rate`` (iterations started per second) and ``throughput`` (finished per second)
may be compared with a multiple of ``target``, the mean target rate of the same stretch of the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .stages import StageSyntaxError, parse_duration

__all__ = ["LATENCY_STATS", "METRICS", "Threshold", "ThresholdSyntaxError", "parse_threshold"]

LATENCY_STATS = ("p50", "p90", "p95", "p99", "p999", "max", "mean", "min")
LATENCY_PREFIXES = ("", "lag_", "service_", "ttft_", "itl_")
_COUNTS = {
    "error_rate": "errors / finished iterations (0..1; 1% also works)",
    "errors": "failed iterations",
    "dropped": "iterations not started because --max-vus were busy",
    "dropped_rate": "dropped / scheduled iterations (0..1)",
    "rate": "iterations started per second; may use N*target",
    "throughput": "iterations finished per second; may use N*target",
    "vus": "most virtual users active at once",
}
METRICS: dict[str, str] = {
    **{f"{p}{s}": "latency" for p in LATENCY_PREFIXES for s in LATENCY_STATS},
    **dict.fromkeys(_COUNTS, "number"),
}
_EXPR = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(<=|>=|<|>)\s*(\S.*?)\s*")
_TARGET = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?target")
_OPS = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class ThresholdSyntaxError(ValueError):
    """A threshold that cannot be parsed; the message shows a valid one."""


@dataclass(frozen=True, slots=True)
class Threshold:
    """One parsed threshold; ``bound`` is seconds for latency figures, else a plain number."""

    text: str
    metric: str
    op: str
    bound: float
    #: the bound is ``bound * target`` (the stretch's mean target rate)
    of_target: bool = False

    def limit(self, figures: Mapping[str, float | None]) -> float | None:
        if not self.of_target:
            return self.bound
        target = figures.get("target")
        return None if target is None else self.bound * target

    def evaluate(self, figures: Mapping[str, float | None]) -> tuple[bool | None, float | None]:
        """(passed, observed); passed is None when the stretch has no data for the figure (no samples)."""
        observed = figures.get(self.metric)
        limit = self.limit(figures)
        if observed is None or limit is None:
            return None, observed
        return bool(_OPS[self.op](observed, limit)), observed

    def describe_value(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if METRICS[self.metric] == "latency":
            return f"{value * 1e3:.3f} ms"
        return f"{value:.4g}"


def parse_threshold(text: str, *, open_model: bool = True) -> Threshold:
    """Parse one threshold expression; :class:`ThresholdSyntaxError` with a sentence otherwise."""
    m = _EXPR.fullmatch(text)
    if m is None:
        raise ThresholdSyntaxError(
            f"{text!r} is not a threshold; write FIGURE OP VALUE, like 'p99<250ms', 'error_rate<0.01' or "
            "'rate>=0.95*target'."
        )
    metric, op, rhs = m.groups()
    kind = METRICS.get(metric)
    if kind is None:
        known = ", ".join(["p50..p999/max/mean/min (prefix lag_, service_, ttft_, itl_)", *_COUNTS])
        raise ThresholdSyntaxError(f"{text!r} uses unknown figure {metric!r}; known figures: {known}.")
    rhs = rhs.strip().lower()
    t = _TARGET.fullmatch(rhs)
    if t is not None:
        if metric not in ("rate", "throughput"):
            raise ThresholdSyntaxError(f"{text!r}: only rate and throughput can be compared with target.")
        if not open_model:
            raise ThresholdSyntaxError(
                f"{text!r}: 'target' is an arrival rate, which only the open model (--rate) has; compare "
                "throughput with a number instead."
            )
        return Threshold(text, metric, op, float(t.group(1) or 1.0), of_target=True)
    if kind == "latency":
        try:
            bound = float(rhs) / 1e3 if re.fullmatch(r"\d+(\.\d*)?|\.\d+", rhs) else parse_duration(rhs)
        except StageSyntaxError:
            raise ThresholdSyntaxError(
                f"{text!r}: {rhs!r} is not a duration; write it like 250ms, 1.5s or 800us."
            ) from None
        return Threshold(text, metric, op, bound)
    try:
        bound = float(rhs[:-1]) / 100.0 if rhs.endswith("%") else float(rhs)
    except ValueError:
        raise ThresholdSyntaxError(f"{text!r}: {rhs!r} is not a number, like 0.01 or 1%.") from None
    return Threshold(text, metric, op, bound)
