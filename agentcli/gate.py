"""The regression gate of ``agentcli loadtest compare`` and ``agentcli benchmark compare``: a change counts as a
regression only when it is statistically significant **and** larger than a tolerance, relative and absolute.

Two runs of the same load on a shared machine differ: a p50 of 0.095 ms becomes 0.126 ms (+33%), and with the
hundreds of thousands of latencies in a run any test on the raw samples calls that significant. Those latencies
are not independent samples of the run-to-run noise; the run's slices are. So the samples a figure is tested on
are the report's replicates — the loadtest's windows (one p50, p99 and throughput per window) and the
benchmark's rounds (one per ``--repeat`` round) — and a figure regresses only when all three hold:

* **significant**: a one-sided Mann-Whitney U test says the candidate's samples are worse than the baseline's,
  p < ``alpha`` (default 0.01). It assumes no distribution (latencies are skewed) and is exact for small
  samples without ties (a normal approximation with a tie correction otherwise);
* **relatively large**: worse by more than ``tolerance`` (default 10%) of the baseline;
* **absolutely large** (latency): worse by more than ``min_delta`` (default 1 ms) — a +30% on a 0.1 ms p50 is
  scheduling noise on a busy 2-core machine, not a regression anyone should be paged for.

With fewer than :data:`MIN_SAMPLES` replicates on a side, no test can reach ``alpha`` (5 against 5 with no
overlap gives p = 0.004): the figure is reported "inconclusive" and does not fail the gate; the note says how to
get enough (a longer run or a shorter ``--window``; ``--repeat 5``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

__all__ = [
    "MIN_SAMPLES",
    "AlphaOption",
    "BaselineArg",
    "CandidateArg",
    "MinDeltaOption",
    "ToleranceOption",
    "run_gate",
    "Comparison",
    "Figure",
    "Gate",
    "gate_options",
    "mann_whitney_p",
    "parse_tolerance",
    "proportion_p",
    "render",
]

#: Fewest replicates per side for a significance test (5 v 5 can reach p = 0.004).
MIN_SAMPLES = 5
#: Above this many pairs the exact distribution of U gives way to the normal approximation.
_EXACT_MAX_PAIRS = 400

Verdict = Literal["ok", "REGRESSED", "improved", "inconclusive"]


def parse_tolerance(text: str) -> float:
    """``10%`` or ``0.1`` → 0.1; a ValueError with a sentence otherwise."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ValueError(f"{text!r} is not a tolerance; write a percentage like 10% (or a fraction, 0.1).") from None
    if not (math.isfinite(value) and 0 <= value < 10):
        raise ValueError(f"{text!r} is not a sensible tolerance; use something like 10%.")
    return value


def gate_options(tolerance: str, min_delta: str, alpha: float) -> Gate:
    """The gate of ``compare``'s options; a bad one is a usage error (exit 2) of its flag."""
    import typer

    from .parse import option, parse_duration

    try:
        tol = parse_tolerance(tolerance)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--tolerance'") from None
    delta = option(lambda t: parse_duration(t, allow_zero=True), min_delta, "--min-delta")
    if not 0 < alpha < 1:
        raise typer.BadParameter(f"{alpha} is not a significance level; use 0.01.", param_hint="'--alpha'")
    return Gate(tolerance=tol, min_delta_s=delta, alpha=alpha)


def _exact_upper_tail(n: int, m: int, u: int) -> float:
    """P(U >= u) for the Mann-Whitney U of samples of sizes n and m without ties (counts of arrangements)."""
    # ways[j][v]: arrangements of i x's and j y's whose U (pairs with y above x) is v; built row by row over i.
    ways = [[1] + [0] * (n * m) for _ in range(m + 1)]
    for i in range(1, n + 1):
        new = [[0] * (n * m + 1) for _ in range(m + 1)]
        new[0][0] = 1
        for j in range(1, m + 1):
            prev_row, left = ways[j], new[j - 1]
            row = new[j]
            for v in range(n * m + 1):
                # the largest element is an x (adds nothing) or a y (above all i x's: adds i)
                row[v] = prev_row[v] + (left[v - i] if v >= i else 0)
        ways = new
    total = sum(ways[m])
    return sum(ways[m][u:]) / total


def mann_whitney_p(baseline: Sequence[float], candidate: Sequence[float]) -> float:
    """One-sided p-value that ``candidate`` tends to be larger than ``baseline`` (Mann-Whitney U)."""
    n, m = len(baseline), len(candidate)
    if not n or not m:
        return 1.0
    u = 0.0
    for y in candidate:
        for x in baseline:
            u += 1.0 if y > x else 0.5 if y == x else 0.0
    pooled = sorted([*baseline, *candidate])
    ties = len(pooled) != len(set(pooled))
    if not ties and n * m <= _EXACT_MAX_PAIRS:
        return _exact_upper_tail(n, m, math.ceil(u))
    counts: dict[float, int] = {}
    for v in pooled:
        counts[v] = counts.get(v, 0) + 1
    big = n + m
    tie_term = sum(t**3 - t for t in counts.values()) / (big * (big - 1))
    sigma = math.sqrt(n * m / 12.0 * ((big + 1) - tie_term))
    if sigma == 0:
        return 1.0
    z = (u - n * m / 2.0 - 0.5) / sigma  # continuity correction
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def proportion_p(errors_a: int, total_a: int, errors_b: int, total_b: int) -> float:
    """One-sided p-value that B's error proportion is larger than A's (two-proportion z-test, pooled)."""
    if not total_a or not total_b:
        return 1.0
    pa, pb = errors_a / total_a, errors_b / total_b
    pooled = (errors_a + errors_b) / (total_a + total_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / total_a + 1 / total_b))
    if se == 0:
        return 1.0 if pb <= pa else 0.0
    return 0.5 * math.erfc((pb - pa) / se / math.sqrt(2.0))


@dataclass(frozen=True, slots=True)
class Gate:
    """The rule's settings: ``tolerance`` relative, ``min_delta_s`` absolute (latency), ``alpha`` significance."""

    tolerance: float = 0.10
    min_delta_s: float = 0.001
    alpha: float = 0.01
    #: how much the error rate may rise (absolute, 0..1) before it can count
    min_error_rate_delta: float = 0.001


@dataclass(frozen=True, slots=True)
class Figure:
    """One compared figure: its values, change, p-value and verdict."""

    name: str
    unit: str
    baseline: float | None
    candidate: float | None
    change: float | None
    p_value: float | None
    verdict: Verdict
    samples: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class Comparison:
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        return any(f.verdict == "REGRESSED" for f in self.figures)


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def judge(
    name: str,
    unit: str,
    a: Sequence[float],
    b: Sequence[float],
    gate: Gate,
    *,
    higher_is_worse: bool,
    min_delta: float = 0.0,
    a_value: float | None = None,
    b_value: float | None = None,
) -> Figure:
    """Compare one figure's replicates ``a`` (baseline) and ``b`` (candidate); ``a_value``/``b_value`` are the
    values shown (the run's own figure), the medians of the samples when not given."""
    va = a_value if a_value is not None else _median(a)
    vb = b_value if b_value is not None else _median(b)
    change = vb / va - 1.0 if va and vb is not None else None
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return Figure(name, unit, va, vb, change, None, "inconclusive", (len(a), len(b)))
    ma, mb = statistics.median(a), statistics.median(b)
    worse = [-x for x in a], [-x for x in b]
    p_worse = mann_whitney_p(a, b) if higher_is_worse else mann_whitney_p(*worse)
    p_better = mann_whitney_p(*worse) if higher_is_worse else mann_whitney_p(a, b)
    delta = (mb - ma) if higher_is_worse else (ma - mb)  # > 0: worse
    rel = delta / abs(ma) if ma else math.inf if delta > 0 else 0.0
    if p_worse < gate.alpha and rel > gate.tolerance and delta > min_delta:
        verdict: Verdict = "REGRESSED"
    elif p_better < gate.alpha and -rel > gate.tolerance and -delta > min_delta:
        verdict = "improved"
    else:
        verdict = "ok"
    p = p_worse if delta >= 0 else p_better
    return Figure(name, unit, va, vb, change, p, verdict, (len(a), len(b)))


def judge_errors(errors_a: int, total_a: int, errors_b: int, total_b: int, gate: Gate) -> Figure:
    ra = errors_a / total_a if total_a else 0.0
    rb = errors_b / total_b if total_b else 0.0
    p = proportion_p(errors_a, total_a, errors_b, total_b)
    rises = rb - ra > max(gate.tolerance * ra, gate.min_error_rate_delta)
    verdict: Verdict = "REGRESSED" if p < gate.alpha and rises else "ok"
    return Figure("error rate", "", ra, rb, rb - ra, p, verdict, (total_a, total_b))


def _num(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v * 1e3:,.3f}"
    if unit == "x":
        return f"{v:.3f}"
    return f"{v:,.4f}" if unit == "" else f"{v:,.1f}"


def render(console: Console, c: Comparison, gate: Gate, replicates: str) -> None:
    t = Table(title="baseline → candidate", title_justify="left")
    for col in ("figure", "baseline", "candidate", "change", "p-value", replicates, "verdict"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for f in c.figures:
        if f.change is None:
            change = "-"
        elif f.unit == "":
            change = f"{f.change:+.4f}"
        else:
            change = f"{f.change:+.1%}"
        style = {"REGRESSED": "[red]REGRESSED[/]", "improved": "[green]improved[/]"}.get(f.verdict, f.verdict)
        label = f"{f.name} ({f.unit})" if f.unit else f.name
        t.add_row(
            label, _num(f.baseline, f.unit), _num(f.candidate, f.unit), change,
            "-" if f.p_value is None else f"{f.p_value:.3g}", f"{f.samples[0]} / {f.samples[1]}", style,
        )  # fmt: skip
    console.print(t)
    console.print(
        f"A figure regresses when a one-sided Mann-Whitney U test on the {replicates} says so (p < {gate.alpha:g}) "
        f"and it is worse by more than {gate.tolerance:.0%} and, for latency, by more than "
        f"{gate.min_delta_s * 1e3:g} ms.",
        highlight=False,
    )
    for note in c.notes:
        console.print(f"[yellow]note:[/] {note}")
    if any(f.verdict == "inconclusive" and min(f.samples) < MIN_SAMPLES for f in c.figures):
        console.print(
            f"[yellow]note:[/] an inconclusive figure has fewer than {MIN_SAMPLES} {replicates} on a side, too few "
            "for the test; it does not fail the gate."
        )
    console.print("[red]regression beyond tolerance[/]" if c.regressed else "[green]no regression beyond tolerance[/]")


# ---- the command line: `agentcli benchmark compare` and `agentcli loadtest compare` share these -------------------

BaselineArg = Annotated[Path, typer.Argument(help="The earlier run's --json report.")]
CandidateArg = Annotated[Path, typer.Argument(help="The new run's --json report.")]
ToleranceOption = Annotated[
    str, typer.Option(metavar="PERCENT", help="How much worse a figure may get before it can count: 10% or 0.1.")
]
MinDeltaOption = Annotated[
    str, typer.Option(metavar="DURATION", help="How much slower a latency may get before it can count.")
]
AlphaOption = Annotated[float, typer.Option(help="Significance level of the one-sided tests.")]

_R = TypeVar("_R")


def run_gate(
    baseline: Path,
    candidate: Path,
    options: tuple[str, str, float],
    read: Callable[[Path], _R],
    compare: Callable[[_R, _R, Gate], Comparison],
    replicates: str,
) -> None:
    """The body of both compare commands: read the two reports (a bad one is a usage error), compare them with the
    gate of ``options`` (tolerance, min delta, alpha), print the table and exit 1 when a figure regressed."""
    from .output import console as make_console

    gate = gate_options(*options)
    try:
        a, b = read(baseline), read(candidate)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = compare(a, b, gate)
    render(make_console(), result, gate, replicates)
    raise typer.Exit(code=1 if result.regressed else 0)
