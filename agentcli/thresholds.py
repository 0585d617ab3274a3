"""Thresholds: ``p99<250ms``, ``error_rate<0.01``, ``raw_ratio>=0.5``, parsed once and evaluated per scope.

A threshold names a figure, a comparison (``<``, ``<=``, ``>``, ``>=``) and a bound. Latency figures take a
duration (:func:`agentcli.parse.parse_duration`); a plain number means milliseconds, as in k6. Other figures
take a number, or a percentage (``1%`` is 0.01). ``agentcli loadtest`` may compare ``rate`` and ``throughput``
with a multiple of ``target``, the mean target rate of the same stretch of the run.

Each command says which figures its thresholds may name (a :class:`Figures`), evaluates every threshold in
every scope it reports (each stage and the whole run of a load test; each round and the median of a benchmark),
and exits 1 when any verdict failed, 2 when a threshold cannot be parsed. A verdict with no data (the scope has
no samples of that figure) neither passes nor fails.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from .parse import ParseError, parse_duration

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "LATENCY",
    "NUMBER",
    "Figures",
    "Threshold",
    "ThresholdSyntaxError",
    "Verdict",
    "parse_threshold",
    "verdict",
    "verdict_table",
]

LATENCY = "latency"
NUMBER = "number"
_EXPR = re.compile(r"\s*([a-z][a-z0-9_]*)\s*(<=|>=|<|>)\s*(\S.*?)\s*")
_TARGET = re.compile(r"(?:(\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?target")
_PLAIN = re.compile(r"\d+(\.\d*)?|\.\d+")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class ThresholdSyntaxError(ParseError):
    """A threshold that cannot be parsed; the message shows a valid one."""


@dataclass(frozen=True, slots=True)
class Figures:
    """The figures a command's thresholds may name: each name's kind (:data:`LATENCY` or :data:`NUMBER`).

    ``suffixes`` admits a family of names by their ending (``_ratio``: every named ratio of a benchmark);
    ``of_target`` lists the figures that may be compared with ``N*target``; ``known`` is the list an unknown
    name's error shows.
    """

    kinds: Mapping[str, str]
    known: str
    suffixes: Mapping[str, str] = field(default_factory=dict)
    of_target: frozenset[str] = frozenset()

    def kind(self, name: str) -> str | None:
        if name in self.kinds:
            return self.kinds[name]
        for suffix, kind in self.suffixes.items():
            if name.endswith(suffix) and len(name) > len(suffix):
                return kind
        return None


@dataclass(frozen=True, slots=True)
class Threshold:
    """One parsed threshold; ``bound`` is seconds for latency figures, else a plain number."""

    text: str
    metric: str
    op: str
    bound: float
    kind: str = NUMBER
    #: the bound is ``bound * target`` (the stretch's mean target rate)
    of_target: bool = False

    def limit(self, figures: Mapping[str, float | None]) -> float | None:
        if not self.of_target:
            return self.bound
        target = figures.get("target")
        return None if target is None else self.bound * target

    def evaluate(self, figures: Mapping[str, float | None]) -> tuple[bool | None, float | None]:
        """(passed, observed); passed is None when the scope has no data for the figure (no samples)."""
        observed = figures.get(self.metric)
        limit = self.limit(figures)
        if observed is None or limit is None:
            return None, observed
        return _OPS[self.op](observed, limit), observed

    def describe_value(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.kind == LATENCY:
            return f"{value * 1e3:.3f} ms"
        return f"{value:.4g}"


class Verdict(msgspec.Struct, frozen=True):
    """One threshold in one scope, as the machine reports carry it (latency values in seconds)."""

    threshold: str
    scope: str
    passed: bool | None
    observed: float | None
    limit: float | None
    observed_text: str
    limit_text: str


def verdict(th: Threshold, scope: str, figures: Mapping[str, float | None]) -> Verdict:
    """Evaluate ``th`` on the figures of one scope."""
    passed, observed = th.evaluate(figures)
    limit = th.limit(figures)
    limit_text = th.describe_value(limit) + (f" ({th.bound:g}×target)" if th.of_target else "")
    return Verdict(th.text, scope, passed, observed, limit, th.describe_value(observed), limit_text)


def parse_threshold(text: str, figures: Figures, *, open_model: bool = True) -> Threshold:
    """Parse one threshold expression; :class:`ThresholdSyntaxError` with a sentence otherwise."""
    m = _EXPR.fullmatch(text)
    if m is None:
        raise ThresholdSyntaxError(
            f"{text!r} is not a threshold; write FIGURE OP VALUE, like 'p99<250ms', 'error_rate<0.01' or "
            "'throughput>=1000'."
        )
    metric, op, rhs = m.groups()
    kind = figures.kind(metric)
    if kind is None:
        raise ThresholdSyntaxError(f"{text!r} uses unknown figure {metric!r}; known figures: {figures.known}.")
    rhs = rhs.strip().lower()
    t = _TARGET.fullmatch(rhs)
    if t is not None:
        if not figures.of_target:
            raise ThresholdSyntaxError(f"{text!r}: no figure here has a target to compare with; give a number.")
        if metric not in figures.of_target:
            names = " and ".join(sorted(figures.of_target))
            raise ThresholdSyntaxError(f"{text!r}: only {names} can be compared with target.")
        if not open_model:
            raise ThresholdSyntaxError(
                f"{text!r}: 'target' is an arrival rate, which only the open model (--rate) has; compare "
                "throughput with a number instead."
            )
        return Threshold(text, metric, op, float(t.group(1) or 1.0), kind, of_target=True)
    if kind == LATENCY:
        try:
            bound = float(rhs) / 1e3 if _PLAIN.fullmatch(rhs) else parse_duration(rhs)
        except ParseError:
            raise ThresholdSyntaxError(
                f"{text!r}: {rhs!r} is not a duration; write it like 250ms, 1.5s or 800us."
            ) from None
        return Threshold(text, metric, op, bound, kind)
    try:
        bound = float(rhs[:-1]) / 100.0 if rhs.endswith("%") else float(rhs)
    except ValueError:
        raise ThresholdSyntaxError(f"{text!r}: {rhs!r} is not a number, like 0.01 or 1%.") from None
    return Threshold(text, metric, op, bound, kind)


def verdict_table(verdicts: Sequence[Verdict]) -> Table:
    """The verdicts as the commands print them: threshold, scope, observed, limit, pass / FAIL / no data."""
    from rich.table import Table  # here: the load tester's worker processes print nothing

    table = Table(title="thresholds", title_justify="left")
    for col in ("threshold", "scope", "observed", "limit", "verdict"):
        table.add_column(col)
    for v in verdicts:
        mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]" if v.passed is False else "no data"
        table.add_row(v.threshold, v.scope, v.observed_text, v.limit_text, mark)
    return table
