"""Building the one benchmark report from every scenario's runs, its thresholds, and what every scenario prints.

A scenario hands over a :class:`Measurement`: every run of every side with its round, the named ratios of each
round, and what only it measures (``details``). :func:`build_report` picks the agentflow side's median round
for the top-level figures, takes the median of each ratio, and evaluates the thresholds in every round and for
the median. The Structs are in :mod:`agentcli.bench.schema`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from agentflow import Config, LatencyHistogram, ProfileSnapshot

from ..runtime import Interruption, machine, versions
from ..thresholds import LATENCY, NUMBER, Figures, Threshold, Verdict, verdict, verdict_table
from .measure import rss_peak_mb
from .schema import FORMAT, Details, LatencyMs, Report, RoundRatios, Run

__all__ = [
    "THRESHOLD_FIGURES",
    "Measurement",
    "build_report",
    "effective_config",
    "hdr_bytes",
    "latency_ms",
    "median_run",
    "order_of",
    "render_footer",
    "round_sides",
    "write_json",
]

_LATENCY_STATS = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
_NUMBERS = {
    "throughput": "requests or events finished per second",
    "errors": "failed requests or events",
    "error_rate": "errors / (completed + errors) (0..1; 1% also works)",
    "completed": "requests or events completed",
    "cpu_s": "CPU seconds of the measured phase",
    "rss_peak_mb": "peak resident memory, MB (median scope only)",
}
#: What `agentcli benchmark --threshold` may name; NAME_ratio is the ratio NAME (raw_ratio, sdk_ratio, ...).
THRESHOLD_FIGURES = Figures(
    kinds={**dict.fromkeys(_LATENCY_STATS, LATENCY), **dict.fromkeys(_NUMBERS, NUMBER)},
    known=", ".join(["p50..p999/max/mean", *_NUMBERS, "NAME_ratio for each ratio the run reports (raw_ratio, ...)"]),
    suffixes={"_ratio": NUMBER},
)


@dataclass(slots=True)
class Measurement:
    """What a scenario measured, before it becomes a :class:`~agentcli.bench.schema.Report`."""

    scenario: str
    mode: str | None
    bus: str
    runs: list[Run]
    #: the named ratios of round r at index r - 1
    round_ratios: list[dict[str, float]]
    details: Details
    latency_measures: str
    config: dict[str, Any]
    options: dict[str, Any]
    repeat: int
    order: str
    #: ranks the agentflow runs for the median: larger is better
    rank: Callable[[Run], float]
    #: ratios measured once, not per round (overload's capacity shares)
    fixed_ratios: dict[str, float] = field(default_factory=dict)
    #: the reported figures when they are not one of ``runs`` (overload's part 1)
    headline: Run | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: something the figures do not show went wrong (overload: accepted events lost)
    failed: bool = False
    #: the reported agentflow run's profile snapshot (noop and --app)
    profile: ProfileSnapshot | None = None


def by_throughput(run: Run) -> float:
    return run.throughput_per_s


def by_p99(run: Run) -> float:
    return -run.latency_ms.p99 if run.latency_ms is not None else float("-inf")


def by_duration(run: Run) -> float:
    return -run.duration_s


def round_sides(sides: Sequence[str], round_: int) -> list[str]:
    """The order the sides run in round ``round_``: as given in odd rounds, reversed in even ones, so each side
    goes first as often as the other and a drifting machine hits both alike."""
    return list(sides) if round_ % 2 else list(reversed(sides))


def order_of(sides: Sequence[str], repeat: int) -> str:
    """How the sides ran, for people: ``raw, agentflow; 3 rounds, alternating which goes first; median``."""
    if len(sides) == 1:
        return f"{sides[0]} only, " + ("1 run" if repeat == 1 else f"{repeat} runs, median reported")
    names = ", ".join(sides)
    if repeat == 1:
        return f"{names} in this process, one after the other (1 round)"
    return f"{names} in this process; {repeat} rounds, alternating which side goes first; median reported"


def median_run(runs: Sequence[Run], side: str, rank: Callable[[Run], float]) -> Run | None:
    """The median run of ``side`` by ``rank`` (with an even count, the worse of the two middle runs)."""
    ranked = sorted((r for r in runs if r.side == side), key=rank)
    return ranked[(len(ranked) - 1) // 2] if ranked else None


def median_runs_table(report: Report, title: str, unit: str) -> Table:
    """One row per side: its median run by throughput, with ``unit`` counted (``calls``, ``runs``) and per second."""
    table = Table(title=title)
    for col in ("run", unit, "errors", f"{unit}/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for side in dict.fromkeys(r.side for r in report.runs):
        r = median_run(report.runs, side, by_throughput)
        assert r is not None
        lat = r.latency_ms
        table.add_row(
            r.label, f"{r.completed:,}", f"{r.errors:,}", f"{r.throughput_per_s:,.0f}",
            "n/a" if lat is None else f"{lat.p50:.3f}", "n/a" if lat is None else f"{lat.p99:.3f}",
        )  # fmt: skip
    return table


def latency_ms(hist: LatencyHistogram | None) -> LatencyMs | None:
    if hist is None or not hist.count:
        return None
    s = {key: round(value, 6) for key, value in hist.summary_ms().items()}  # 1 ns: drops float noise
    return LatencyMs(
        p50=s["p50"], p90=s["p90"], p95=s["p95"], p99=s["p99"], p999=s["p999"], max=s["max"], mean=s["mean"],
        count=hist.count,
    )  # fmt: skip


def hdr_bytes(hist: LatencyHistogram | None) -> bytes | None:
    return hist.to_bytes() if hist is not None and hist.count else None


def effective_config(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(config)
    return result


def _figures(run: Run | None, ratios: Mapping[str, float], rss: float | None) -> dict[str, float | None]:
    """What thresholds see in one scope; latencies in seconds, as thresholds hold their bounds."""
    out: dict[str, float | None] = {f"{name}_ratio": value for name, value in ratios.items()}
    out["rss_peak_mb"] = rss
    if run is None:
        return out
    finished = run.completed + run.errors
    out.update(
        throughput=run.throughput_per_s,
        errors=float(run.errors),
        completed=float(run.completed),
        error_rate=run.errors / finished if finished else None,
        cpu_s=run.cpu_s,
    )
    if run.latency_ms is not None:
        out.update({stat: getattr(run.latency_ms, stat) / 1e3 for stat in _LATENCY_STATS})
    return out


def _verdicts(
    m: Measurement, thresholds: Sequence[Threshold], top: Run | None, ratios: dict[str, float]
) -> list[Verdict]:
    out: list[Verdict] = []
    for th in thresholds:
        for n in range(1, m.repeat + 1):
            ours = next((r for r in m.runs if r.side == "agentflow" and r.round == n), None)
            rr = m.round_ratios[n - 1] if n <= len(m.round_ratios) else {}
            out.append(verdict(th, f"round {n}", _figures(ours if m.headline is None else None, rr, None)))
        out.append(verdict(th, "median", _figures(top, ratios, rss_peak_mb())))
    return out


def build_report(
    m: Measurement,
    *,
    thresholds: Sequence[Threshold],
    command: list[str],
    started_at: str,
    interrupted: Interruption | None = None,
) -> Report:
    top = m.headline or median_run(m.runs, "agentflow", m.rank)
    assert top is not None, "a scenario reports at least one agentflow run"
    names = sorted({name for rr in m.round_ratios for name in rr})
    ratios = {n: statistics.median(rr[n] for rr in m.round_ratios if n in rr) for n in names}
    ratios.update(m.fixed_ratios)
    verdicts = _verdicts(m, thresholds, top, ratios)
    failed = m.failed or any(r.errors for r in m.runs) or top.errors > 0 or any(v.passed is False for v in verdicts)
    return Report(
        format=FORMAT,
        scenario=m.scenario, mode=m.mode, bus=m.bus, completed=top.completed, errors=top.errors,
        duration_s=top.duration_s, throughput_per_s=top.throughput_per_s, latency_ms=top.latency_ms,
        latency_measures=m.latency_measures, rss_peak_mb=rss_peak_mb(), cpu_s=top.cpu_s, repeat=m.repeat,
        order=m.order, runs=m.runs, ratios=ratios,
        round_ratios=[RoundRatios(round=n, ratios=rr) for n, rr in enumerate(m.round_ratios, 1)],
        thresholds=verdicts, passed=not failed, interrupted=interrupted, warnings=m.warnings, notes=m.notes,
        details=m.details, options=m.options, config=m.config, versions=versions(), machine=machine(), command=command,
        started_at=started_at, profile_snapshot=m.profile,
    )  # fmt: skip


def write_json(path: Path, report: Report) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


# ---- what every scenario prints after its own table -------------------------------------------------------------


def num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}" if v >= 1 else f"{v:.3f}"


def render_footer(console: Console, report: Report, *, rounds: bool = True) -> None:
    """Every round (with --repeat), the ratios, the thresholds' verdicts and the warnings."""
    if rounds and report.repeat > 1:
        table = Table(title="every round", title_justify="left")
        for col in ("round", "side", "throughput/s", "p99 ms", "ratios"):
            table.add_column(col, justify="left" if col in ("side", "ratios") else "right")
        for r in report.runs:
            ratios = report.round_ratios[r.round - 1].ratios if r.side == "agentflow" else {}
            table.add_row(
                str(r.round), r.label, num(r.throughput_per_s),
                f"{r.latency_ms.p99:.3f}" if r.latency_ms is not None else "n/a",
                ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()),
            )  # fmt: skip
        console.print(table)
    what = "median of rounds" if report.repeat > 1 else "same run"
    for name, value in report.ratios.items():
        console.print(f"ratio {name}: {value:.2f}x ({what})", highlight=False)
    console.print(f"runs: {report.order}", highlight=False)
    if report.thresholds:
        console.print(verdict_table(report.thresholds))
        console.print("[green]all thresholds passed[/]" if report.passed else "[red]a threshold failed[/]")
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
