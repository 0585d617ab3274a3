"""The report of ``agentcli benchmark --scenario overload``: msgspec Structs written as JSON with ``--json``, the
goals it checks, and the rich tables; the runs are in :mod:`agentcli.overloadbench`. docs/benchmarking.md
describes every figure."""

from __future__ import annotations

from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from .report import Goal, Versions

__all__ = [
    "BlockedFigures",
    "BlockedRun",
    "IngestFigures",
    "OverloadReport",
    "RequestFigures",
    "overload_goals",
    "render_overload",
]

#: Goals (docs/benchmarking.md): blocked emitters cost at most this many times the bare queue's blocked putters;
#: under overload the agent keeps this share of its capacity and the RSS grows at most this much.
BLOCKED_GOAL_RATIO = 2.0
SHARE_GOAL = 0.9
RSS_GOAL_MB = 100.0


class BlockedRun(msgspec.Struct, kw_only=True):
    side: str
    round: int
    emitters: int
    block_s: float
    release_s: float
    total_s: float


class BlockedFigures(msgspec.Struct, kw_only=True):
    emitters: int
    buffer: int
    consumers: int
    runs: list[BlockedRun]
    raw_best_s: float
    agentflow_best_s: float
    ratio: float


class RequestFigures(msgspec.Struct, kw_only=True):
    bus: str
    concurrency: int
    service_ms: float
    nominal_capacity_per_s: float
    capacity_per_s: float
    offered_per_s: float
    duration_s: float
    offered: int
    completed: int
    refused: int
    refused_by: dict[str, int]
    timed_out: int
    failed: int
    handled_per_s: float
    share_of_capacity: float
    refusal_p99_ms: float | None
    completed_p50_ms: float | None
    completed_p99_ms: float | None
    rss_idle_mb: float
    rss_peak_mb: float
    rss_growth_mb: float
    max_pending_requests: int
    max_waiting_emits: int
    accepted: int
    handled_after_drain: int
    lost: int


class IngestFigures(msgspec.Struct, kw_only=True):
    bus: str
    events_per_post: int
    offered_posts: int
    offered_events_per_s: float
    duration_s: float
    accepted_posts: int
    refused_by_status: dict[int, int]
    client_errors: dict[str, int]
    dropped_by_generator: int
    post_p99_ms: float | None
    handled_per_s: float
    share_of_capacity: float
    rss_idle_mb: float
    rss_peak_mb: float
    rss_growth_mb: float
    accepted: int
    handled_after_drain: int
    lost: int


class OverloadReport(msgspec.Struct, kw_only=True):
    scenario: str
    blocked: BlockedFigures
    requests: RequestFigures
    ingest: IngestFigures
    goals: list[Goal]
    warnings: list[str]
    config: dict[str, Any]
    versions: Versions
    command: list[str]
    started_at: str


def overload_goals(
    factor: float, blocked: BlockedFigures, requests: RequestFigures, ingest: IngestFigures
) -> list[Goal]:
    goals = [
        Goal(
            name=f"{blocked.emitters:,} blocked emitters <= {BLOCKED_GOAL_RATIO:g}x a bare asyncio.Queue",
            value=blocked.ratio,
            target=BLOCKED_GOAL_RATIO,
            met=blocked.ratio <= BLOCKED_GOAL_RATIO,
        ),
    ]
    for via, share, growth, lost in (
        ("runner.request", requests.share_of_capacity, requests.rss_growth_mb, requests.lost),
        ("HTTP ingest", ingest.share_of_capacity, ingest.rss_growth_mb, ingest.lost),
    ):
        goals += [
            Goal(
                name=f"{via}: handled under {factor:g}x load >= {SHARE_GOAL:.0%} of capacity",
                value=share,
                target=SHARE_GOAL,
                met=share >= SHARE_GOAL,
            ),
            Goal(
                name=f"{via}: RSS growth <= {RSS_GOAL_MB:g} MB",
                value=growth,
                target=RSS_GOAL_MB,
                met=growth <= RSS_GOAL_MB,
            ),
            Goal(name=f"{via}: accepted events lost", value=lost, target=0, met=lost == 0),
        ]
    return goals


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _ms(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f} ms"


def render_overload(console: Console, report: OverloadReport) -> None:
    r = report.requests
    console.print(
        _table(
            f"{report.requests.bus} bus: runner.request at 10x capacity",
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
    i = report.ingest
    console.print(
        _table(
            f"{i.bus} bus: HTTP ingest at 10x capacity ({i.events_per_post} events per POST)",
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
    b = report.blocked
    table = Table(title=f"{b.emitters:,} blocked emitters (buffer {b.buffer:,}, {b.consumers} consumers)")
    for col in ("run", "block s", "release s", "total s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run in b.runs:
        table.add_row(f"{run.side} {run.round}", f"{run.block_s:.3f}", f"{run.release_s:.3f}", f"{run.total_s:.3f}")
    console.print(table)
    console.print(
        f"best: agentflow {b.agentflow_best_s:.3f} s, raw asyncio.Queue {b.raw_best_s:.3f} s, "
        f"agentflow/raw {b.ratio:.2f}x",
        highlight=False,
    )
    for g in report.goals:
        console.print(f"goal: {g.name}: {g.value:.3g} ({'met' if g.met else 'not met'})", highlight=False)
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
