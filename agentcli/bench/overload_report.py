"""The tables of ``agentcli benchmark --scenario overload``; the runs are in :mod:`.overload`, the report's
Structs in :mod:`.schema`. docs/benchmarking.md describes every figure."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .schema import OverloadDetails, Report

__all__ = ["render_overload"]


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _ms(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f} ms"


def render_overload(console: Console, report: Report) -> None:
    d = report.details
    assert isinstance(d, OverloadDetails)
    r = d.requests
    console.print(
        _table(
            f"{r.bus} bus: runner.request at {d.factor:g}x capacity",
            [
                (
                    "agent",
                    f"{r.concurrency} handlers × {r.service_ms:g} ms sleep, nominal {r.nominal_capacity_per_s:,.0f}/s",
                ),
                ("capacity (measured)", f"{r.capacity_per_s:,.0f} events/s"),
                ("offered", f"{r.offered:,} requests in {r.duration_s:.1f} s ({r.offered_per_s:,.0f}/s)"),
                ("handled in the window", f"{r.handled_per_s:,.0f} events/s = {r.share_of_capacity:.1%} of capacity"),
                ("completed", f"{r.completed:,} (p50 {_ms(r.completed_p50_ms, 0)}, p99 {_ms(r.completed_p99_ms, 0)})"),
                ("refused (BackpressureError)", f"{r.refused:,} (p99 {_ms(r.refusal_p99_ms)} to the error)"),
                ("refused by", ", ".join(f"{k} {v:,}" for k, v in r.refused_by.items())),
                ("timed out / dead-lettered", f"{r.timed_out:,} / {r.failed:,}"),
                ("RSS idle → peak", f"{r.rss_idle_mb:.0f} → {r.rss_peak_mb:.0f} MB (+{r.rss_growth_mb:.0f} MB)"),
                ("most pending requests / waiting emits", f"{r.max_pending_requests:,} / {r.max_waiting_emits:,}"),
                ("accepted / handled / lost", f"{r.accepted:,} / {r.handled_after_drain:,} / {r.lost:,}"),
            ],
        )
    )
    i = d.ingest
    console.print(
        _table(
            f"{i.bus} bus: HTTP ingest at {d.factor:g}x capacity ({i.events_per_post} events per POST)",
            [
                (
                    "offered",
                    f"{i.offered_posts:,} POSTs in {i.duration_s:g} s ({i.offered_events_per_s:,.0f} events/s)",
                ),
                ("handled in the window", f"{i.handled_per_s:,.0f} events/s = {i.share_of_capacity:.1%} of capacity"),
                ("accepted (202)", f"{i.accepted_posts:,} POSTs, {i.accepted:,} events"),
                ("refused", ", ".join(f"{status}: {n:,}" for status, n in i.refused_by_status.items()) or "none"),
                ("generator errors", ", ".join(f"{k}: {n:,}" for k, n in i.client_errors.items()) or "none"),
                ("POST p99", _ms(i.post_p99_ms)),
                ("RSS idle → peak", f"{i.rss_idle_mb:.0f} → {i.rss_peak_mb:.0f} MB (+{i.rss_growth_mb:.0f} MB)"),
                ("accepted / handled / lost", f"{i.accepted:,} / {i.handled_after_drain:,} / {i.lost:,}"),
            ],
        )
    )
    b = d.blocked
    table = Table(title=f"{b.emitters:,} blocked emitters (buffer {b.buffer:,}, {b.consumers} consumers)")
    for col in ("run", "block s", "release s", "total s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    agentflow_rounds = [run for run in report.runs if run.side == "agentflow"]
    for run in report.runs:
        if run.side == "agentflow":
            k = agentflow_rounds.index(run)
            table.add_row(run.label, f"{b.block_s[k]:.3f}", f"{b.release_s[k]:.3f}", f"{run.duration_s:.3f}")
        else:
            table.add_row(run.label, "", "", f"{run.duration_s:.3f}")
    console.print(table)
    console.print(
        f"median: agentflow {b.agentflow_median_s:.3f} s, raw asyncio.Queue {b.raw_median_s:.3f} s",
        highlight=False,
    )
