"""The noop and ``--app`` scenarios' report and table: their runs (:mod:`.harness`) become a
:class:`~.report.Measurement`, and the median run of each side is printed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from .harness import SIDES, TAIL_EVENTS, BenchSpec, NoopTarget, Outcome, Target
from .measure import Mode, RunResult
from .report import (
    Measurement,
    by_p99,
    by_throughput,
    effective_config,
    hdr_bytes,
    latency_ms,
    median_run,
    num,
    order_of,
)
from .schema import NoopDetails, Report, Run

__all__ = ["measurement", "render"]

#: A latency run that takes this much longer than planned (plus the slack, for drain's polling) was overloaded.
OVERLOAD = 1.1
OVERLOAD_SLACK_S = 0.05


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


def to_run(result: RunResult, side: str, round_: int) -> Run:
    return Run(
        side=side, label=result.label, round=round_, completed=result.completed, errors=result.errors,
        duration_s=result.duration_s, throughput_per_s=result.throughput_per_s, latency_ms=latency_ms(result.hist),
        cpu_s=result.cpu_s, saturation_per_s=result.saturation_per_s, rate_per_s=result.rate_per_s,
        hdr=hdr_bytes(result.hist), tail_latency_ms=latency_ms(result.tail) if result.tail is not None else None,
    )  # fmt: skip


def _round_ratios(outcome: Outcome, spec: BenchSpec) -> list[dict[str, float]]:
    """raw: agentflow / raw throughput of each round (latency mode: of the saturations each side was paced by);
    bare: agentflow / bare pipeline throughput (throughput mode)."""
    out: list[dict[str, float]] = []
    for n in range(1, spec.repeat + 1):
        sides = {side: r for rn, side, r in outcome.runs if rn == n}
        ours, raw, bare = sides.get("agentflow"), sides.get("raw"), sides.get("bare")
        ratios: dict[str, float] = {}
        if ours is not None and raw is not None:
            a, b = ours.throughput_per_s, raw.throughput_per_s
            if spec.mode is Mode.latency and ours.saturation_per_s and raw.saturation_per_s:
                a, b = ours.saturation_per_s, raw.saturation_per_s
            if b:
                ratios["raw"] = a / b
        if ours is not None and bare is not None and bare.throughput_per_s:
            ratios["bare"] = ours.throughput_per_s / bare.throughput_per_s
        out.append(ratios)
    return out


def _overloaded(r: RunResult) -> str | None:
    if r.rate_per_s and r.planned_s and r.duration_s > r.planned_s * OVERLOAD + OVERLOAD_SLACK_S:
        return (
            f"{r.label} took {r.duration_s:.2f} s for a run planned to take {r.planned_s:.2f} s at "
            f"{r.rate_per_s:,.0f} events/s: the offered rate was more than it sustained, so its latencies are "
            "mostly queueing. Lower --load-fraction."
        )
    return None


def measurement(
    outcome: Outcome, spec: BenchSpec, target: Target, *, profile: str | None, options: dict[str, Any]
) -> Measurement:
    runs = [to_run(r, side, n) for n, side, r in outcome.runs]
    rank = by_p99 if spec.mode is Mode.latency else by_throughput
    top = median_run(runs, "agentflow", rank)
    ours = next(r for (n, side, r), run in zip(outcome.runs, runs, strict=True) if run is top)
    warnings = [w for _, side, r in outcome.runs if side == "agentflow" for w in r.warnings]
    warnings += [w for _, _, r in outcome.runs if (w := _overloaded(r)) is not None]
    sides = [side for side in SIDES if any(s == side for _, s, _ in outcome.runs)]
    details = NoopDetails(
        agent=target.agent, app=target.app, requested=ours.requested,
        concurrent_users=spec.users if spec.mode is Mode.closed else None, batch_size=spec.batch_size,
        agent_batch_size=target.batch_size if isinstance(target, NoopTarget) else None,
        load_fraction=spec.load_fraction if spec.mode is Mode.latency else None, shutdown_s=ours.shutdown_s,
        profile=profile,
    )  # fmt: skip
    notes = []
    if top is not None and top.duration_s < 1.0:
        notes.append(
            f"the measured run lasted {top.duration_s:.2f} s; runs under a second are noisy. For steadier figures "
            "use --duration 10s, more --requests, or --repeat 5."
        )
    if ours.shutdown_s is not None and ours.shutdown_s > 1.0:
        notes.append(f"shutdown took {ours.shutdown_s:.1f} s (not part of the figures)")
    if profile is not None:
        notes.append("profiled runs are slowed down; do not quote their figures.")
    return Measurement(
        scenario=target.scenario, mode=spec.mode.value, bus="memory", runs=runs,
        round_ratios=_round_ratios(outcome, spec), details=details,
        latency_measures=latency_measures(target, spec.mode), config=effective_config(outcome.config),
        options=options, repeat=spec.repeat, order=order_of(sides, spec.repeat), rank=rank, warnings=warnings,
        notes=notes, profile=ours.profile,
    )  # fmt: skip


def _ms(v: float) -> str:
    return f"{v:,.1f}" if v >= 100 else f"{v:.3f}" if v >= 0.01 else f"{v:.4f}"


def render(console: Console, report: Report) -> None:
    """The noop / app table: the median run of each side (the ratios printed below are medians of rounds)."""
    rank = by_p99 if report.mode == Mode.latency.value else by_throughput
    top, raw = median_run(report.runs, "agentflow", rank), median_run(report.runs, "raw", rank)
    bare = median_run(report.runs, "bare", rank)
    assert top is not None
    table = Table()
    table.add_column("")
    table.add_column("agentflow", justify="right")
    if raw is not None:
        table.add_column("raw asyncio.Queue", justify="right")
        table.add_column("agentflow/raw", justify="right")
    if bare is not None:
        table.add_column("bare asyncio.Queue", justify="right")
        table.add_column("agentflow/bare", justify="right")

    def row(name: str, ours: str, theirs: str = "", ratio: str = "", bare_cells: tuple[str, str] = ("", "")) -> None:
        table.add_row(name, ours, *((theirs, ratio) if raw is not None else ()), *(bare_cells if bare else ()))

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a is not None and b else ""

    row("completed", f"{top.completed:,}", f"{raw.completed:,}" if raw else "",
        bare_cells=(f"{bare.completed:,}", "") if bare else ("", ""))  # fmt: skip
    row("errors", f"{top.errors:,}", f"{raw.errors:,}" if raw else "")
    if top.saturation_per_s is not None:
        row("saturation (events/s)", num(top.saturation_per_s), num(raw.saturation_per_s or 0) if raw else "",
            ratio(top.saturation_per_s, raw.saturation_per_s if raw else None))  # fmt: skip
        row("offered rate (events/s)", num(top.rate_per_s or 0), num(raw.rate_per_s or 0) if raw else "")
    row("duration (s)", num(top.duration_s), num(raw.duration_s) if raw else "")
    tput = top.throughput_per_s
    row("throughput (events/s)", num(tput), num(raw.throughput_per_s) if raw else "",
        ratio(tput, raw.throughput_per_s if raw else None),
        (num(bare.throughput_per_s), ratio(tput, bare.throughput_per_s)) if bare else ("", ""))  # fmt: skip
    for key in ("p50", "p95", "p99", "max"):
        a = getattr(top.latency_ms, key) if top.latency_ms else None
        b = getattr(raw.latency_ms, key) if raw and raw.latency_ms else None
        row(f"latency {key} (ms)", _ms(a) if a is not None else "n/a", _ms(b) if b is not None else "", ratio(a, b))
    tail = top.tail_latency_ms
    if tail is not None:
        row(f"end of the flood: p99 (ms), last {TAIL_EVENTS:,}", _ms(tail.p99))
    row("CPU time (s)", num(top.cpu_s or 0), num(raw.cpu_s or 0) if raw else "",
        bare_cells=(num(bare.cpu_s or 0), "") if bare else ("", ""))  # fmt: skip
    row("peak RSS (MB, process)", f"{report.rss_peak_mb:,.1f}")
    console.print(table)
    console.print(f"latency: {report.latency_measures}", highlight=False)
    if raw is not None and report.mode == Mode.latency.value:
        console.print(f"each side was paced at {report.details.load_fraction:g} of its own saturation")  # type: ignore[union-attr]
