"""The benchmark report: msgspec Structs written as JSON with ``--json``, and the rich summary table.

The top-level figures are those of the best agentflow run (see :func:`agentcli.benchmark.best`); ``runs``
lists every run so a best-of-N can be checked against its spread. The schema is documented in
docs/benchmarking.md.
"""

from __future__ import annotations

import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import uvloop
from rich.console import Console
from rich.table import Table

from agentflow import Config, __version__

from .benchmark import BenchSpec, Mode, Outcome, Target, best
from .measure import LatencyHistogram, RunResult, rss_peak_mb

__all__ = ["Report", "Versions", "build_report", "render", "versions", "write_json"]

#: The goals docs/benchmarking.md states; checked where a run matches their conditions.
LATENCY_GOAL_P99_MS = 1.0
BATCH_GOAL_RATIO = 2.0
#: A latency run that takes this much longer than planned (plus the slack, for drain's polling) was overloaded.
OVERLOAD = 1.1
OVERLOAD_SLACK_S = 0.05


class LatencyMs(msgspec.Struct, frozen=True):
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float
    count: int


class RawFigures(msgspec.Struct, frozen=True):
    throughput_per_s: float
    latency_ms: LatencyMs | None
    completed: int
    duration_s: float
    cpu_s: float
    saturation_per_s: float | None = None
    rate_per_s: float | None = None


class RunSummary(msgspec.Struct, frozen=True):
    side: str
    completed: int
    errors: int
    duration_s: float
    throughput_per_s: float
    p99_ms: float | None
    cpu_s: float


class Goal(msgspec.Struct, frozen=True):
    name: str
    value: float
    target: float
    met: bool


class Versions(msgspec.Struct, frozen=True):
    python: str
    agentflow: str
    uvloop: str
    msgspec: str
    platform: str


class Report(msgspec.Struct, frozen=True, kw_only=True):
    scenario: str
    mode: str
    agent: str
    app: str | None
    requested: int
    completed: int
    errors: int
    duration_s: float
    throughput_per_s: float
    latency_ms: LatencyMs | None
    latency_measures: str
    rss_peak_mb: float
    cpu_s: float
    concurrent_users: int | None
    batch_size: int
    load_fraction: float | None
    saturation_per_s: float | None
    rate_per_s: float | None
    shutdown_s: float | None
    raw_ratio: float | None
    raw: RawFigures | None
    order: str
    repeat: int
    runs: list[RunSummary]
    goals: list[Goal]
    warnings: list[str]
    profile: str | None
    config: dict[str, Any]
    versions: Versions
    command: list[str]
    started_at: str


def versions() -> Versions:
    return Versions(
        python=platform.python_version(),
        agentflow=__version__,
        uvloop=getattr(uvloop, "__version__", "unknown"),
        msgspec=msgspec.__version__,
        platform=f"{platform.system()} {platform.machine()}",
    )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _latency(hist: LatencyHistogram | None) -> LatencyMs | None:
    if hist is None or not hist.count:
        return None
    s = {key: round(value, 6) for key, value in hist.summary_ms().items()}  # 1 ns: drops float noise
    return LatencyMs(
        p50=s["p50"],
        p90=s["p90"],
        p95=s["p95"],
        p99=s["p99"],
        p999=s["p999"],
        max=s["max"],
        mean=s["mean"],
        count=hist.count,
    )


def latency_measures(target: Target, mode: Mode) -> str:
    if mode is Mode.closed:
        return "request round trip: runner.request() called -> result returned"
    if target.recorder is None:
        if mode is Mode.throughput:
            return "not measured: agentcli cannot instrument an app's handler in throughput mode"
        return "intended emit time -> runner.request() result (open loop, no coordinated omission)"
    if mode is Mode.throughput:
        return "event.created_at (emit) -> handler start"
    return "intended emit time -> handler start (open loop, no coordinated omission)"


def _goals(spec: BenchSpec, target: Target, ours: RunResult, ratio: float | None) -> list[Goal]:
    goals: list[Goal] = []
    if spec.mode is Mode.latency and target.recorder is not None and spec.load_fraction == 0.5 and ours.hist:
        p99 = ours.hist.percentile(99) * 1e3
        goals.append(Goal("p99 emit->handler start at half of saturation (ms)", p99, LATENCY_GOAL_P99_MS, p99 <= 1.0))
    if spec.mode is Mode.throughput and spec.batch_size > 1 and ratio is not None:
        goals.append(
            Goal(f"emit_many({spec.batch_size}) throughput / raw item pipeline", ratio, BATCH_GOAL_RATIO, ratio >= 2.0)
        )
    return goals


def build_report(
    outcome: Outcome,
    spec: BenchSpec,
    target: Target,
    *,
    command: list[str],
    started_at: str,
    profile: str | None,
) -> Report:
    ours = best(outcome.agentflow, spec.mode)
    raw = best(outcome.raw, spec.mode) if outcome.raw else None
    ratio = ours.throughput_per_s / raw.throughput_per_s if raw is not None and raw.throughput_per_s else None
    if spec.mode is Mode.latency and raw is not None and ours.saturation_per_s and raw.saturation_per_s:
        ratio = ours.saturation_per_s / raw.saturation_per_s
    warnings = [w for r in outcome.agentflow for w in r.warnings]
    for r in (ours, raw):
        if r is not None and r.rate_per_s and r.planned_s and r.duration_s > r.planned_s * OVERLOAD + OVERLOAD_SLACK_S:
            warnings.append(
                f"{r.label} took {r.duration_s:.2f} s for a run planned to take {r.planned_s:.2f} s at "
                f"{r.rate_per_s:,.0f} events/s: the offered rate was more than it sustained, so its latencies are "
                "mostly queueing. Lower --load-fraction."
            )
    return Report(
        scenario=target.scenario,
        mode=spec.mode.value,
        agent=target.agent,
        app=target.app,
        requested=ours.requested,
        completed=ours.completed,
        errors=ours.errors,
        duration_s=ours.duration_s,
        throughput_per_s=ours.throughput_per_s,
        latency_ms=_latency(ours.hist),
        latency_measures=latency_measures(target, spec.mode),
        rss_peak_mb=rss_peak_mb(),
        cpu_s=ours.cpu_s,
        concurrent_users=spec.users if spec.mode is Mode.closed else None,
        batch_size=spec.batch_size,
        load_fraction=spec.load_fraction if spec.mode is Mode.latency else None,
        saturation_per_s=ours.saturation_per_s,
        rate_per_s=ours.rate_per_s,
        shutdown_s=ours.shutdown_s,
        raw_ratio=ratio,
        raw=None
        if raw is None
        else RawFigures(
            throughput_per_s=raw.throughput_per_s,
            latency_ms=_latency(raw.hist),
            completed=raw.completed,
            duration_s=raw.duration_s,
            cpu_s=raw.cpu_s,
            saturation_per_s=raw.saturation_per_s,
            rate_per_s=raw.rate_per_s,
        ),
        order=outcome.order,
        repeat=spec.repeat,
        runs=[
            RunSummary(
                side=r.label.split()[0],
                completed=r.completed,
                errors=r.errors,
                duration_s=r.duration_s,
                throughput_per_s=r.throughput_per_s,
                p99_ms=round(r.hist.percentile(99) * 1e3, 6) if r.hist is not None and r.hist.count else None,
                cpu_s=r.cpu_s,
            )
            for pair in _interleave(outcome.raw, outcome.agentflow)
            for r in pair
        ],
        goals=_goals(spec, target, ours, ratio),
        warnings=warnings,
        profile=profile,
        config=effective_config(outcome.config),
        versions=versions(),
        command=command,
        started_at=started_at,
    )


def _interleave(raws: list[RunResult], ours: list[RunResult]) -> list[list[RunResult]]:
    return [([raws[i]] if i < len(raws) else []) + [ours[i]] for i in range(len(ours))]


def write_json(path: Path, report: Report) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")


# ---- the table ------------------------------------------------------------------------------------------------


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}" if v >= 1 else f"{v:.3f}"


def _ms(v: float) -> str:
    return f"{v:,.1f}" if v >= 100 else f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def render(console: Console, report: Report) -> None:
    raw = report.raw
    table = Table()
    table.add_column("")
    table.add_column("agentflow", justify="right")
    if raw is not None:
        table.add_column("raw asyncio.Queue", justify="right")
        table.add_column("agentflow/raw", justify="right")

    def row(name: str, ours: str, theirs: str = "", ratio: str = "") -> None:
        table.add_row(name, ours, *((theirs, ratio) if raw is not None else ()))

    row("completed", f"{report.completed:,}", f"{raw.completed:,}" if raw else "")
    row("errors", f"{report.errors:,}", "0" if raw else "")
    if report.saturation_per_s is not None:
        sat_ratio = f"{report.raw_ratio:.2f}x" if report.raw_ratio is not None else ""
        row(
            "saturation (events/s)",
            _num(report.saturation_per_s),
            _num(raw.saturation_per_s or 0) if raw else "",
            sat_ratio,
        )
        row("offered rate (events/s)", _num(report.rate_per_s or 0), _num(raw.rate_per_s or 0) if raw else "")
    row("duration (s)", _num(report.duration_s), _num(raw.duration_s) if raw else "")
    thr_ratio = f"{report.throughput_per_s / raw.throughput_per_s:.2f}x" if raw and raw.throughput_per_s else ""
    row("throughput (events/s)", _num(report.throughput_per_s), _num(raw.throughput_per_s) if raw else "", thr_ratio)
    lat, raw_lat = report.latency_ms, raw.latency_ms if raw else None
    for key in ("p50", "p95", "p99", "max"):
        ours_v = getattr(lat, key) if lat else None
        theirs_v = getattr(raw_lat, key) if raw_lat else None
        ratio = f"{ours_v / theirs_v:.2f}x" if ours_v is not None and theirs_v else ""
        row(
            f"latency {key} (ms)",
            _ms(ours_v) if ours_v is not None else "n/a",
            _ms(theirs_v) if theirs_v is not None else "",
            ratio,
        )
    row("CPU time (s)", _num(report.cpu_s), _num(raw.cpu_s) if raw else "")
    row("peak RSS (MB, process)", f"{report.rss_peak_mb:,.1f}")
    console.print(table)
    console.print(f"latency: {report.latency_measures}")
    console.print(f"runs: {report.order}")
    if len(report.runs) > 2 or (raw is None and len(report.runs) > 1):
        spread = ", ".join(f"{r.side} {_num(r.throughput_per_s)}/s" for r in report.runs)
        console.print(f"every run: {spread}")
    if raw is not None and report.mode == Mode.latency.value:
        console.print(f"each side was paced at {report.load_fraction:g} of its own saturation")
    if report.duration_s < 1.0:
        console.print(
            f"[yellow]note:[/] the measured run lasted {report.duration_s:.2f} s; runs under a second are noisy. "
            "For steadier figures use --duration 10s, more --requests, or --repeat 5."
        )
    if report.shutdown_s is not None and report.shutdown_s > 1.0:
        console.print(f"[yellow]note:[/] shutdown took {report.shutdown_s:.1f} s (not part of the figures)")
    for goal in report.goals:
        verdict = "[green]met[/]" if goal.met else "[red]not met[/]"
        op = "<=" if "ms" in goal.name else ">="
        console.print(f"goal: {goal.name} {op} {goal.target:g}: {_num(goal.value)} -> {verdict}")
    for warning in report.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


def version_lines() -> list[str]:
    v = versions()
    return [
        f"agentflow {v.agentflow}",
        f"python {v.python} ({sys.implementation.name})",
        f"uvloop {v.uvloop}",
        f"msgspec {v.msgspec}",
        f"platform {v.platform}",
    ]


def effective_config(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(config)
    return result
