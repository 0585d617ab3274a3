"""The live view (rich): stage, target vs achieved rate, VUs, last window's p50/p95/p99, errors, dropped.

It redraws once a second from its own task, reading counters the generator bumps anyway; one rich refresh holds
the loop for about a millisecond, which at 1 Hz stays below the p99 of the start lag it would otherwise disturb.
When stdout is not a terminal (piped, CI) it draws nothing and prints one line every ``--progress-every``
seconds instead, the way k6 does: elapsed, the last window's rate, what is done, errors, dropped and p99.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..output import OPTIONS, ProgressLines, clock
from .collector import Collector
from .plan import Plan
from .session import LiveStatus

__all__ = ["LiveView"]

REFRESH_S = 1.0


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.2f}"


class LiveView:
    """``async with LiveView(...)``: draws while the block runs; does nothing unless stdout is a terminal."""

    def __init__(self, console: Console, plan: Plan, status: LiveStatus, collector: Collector | None) -> None:
        self.console = console
        self.plan = plan
        self.status = status
        self.collector = collector
        self.enabled = console.is_terminal and not OPTIONS.quiet
        self._lines = ProgressLines(console) if not console.is_terminal else None
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console,
        )  # fmt: skip
        self._task_id = self._progress.add_task("run", total=plan.duration_s)
        self._live: Live | None = None
        self._ticker: asyncio.Task[None] | None = None

    def table(self) -> Table:
        s, plan = self.status, self.plan
        profile = plan.profile()
        stage = profile.stage_index(s.elapsed_s) + 1
        last = self.collector.last if self.collector is not None else {}
        unit = "/s" if plan.open_model else " VUs"
        t = Table(show_header=True, header_style="bold", box=None)
        for col in ("stage", "target", "achieved/s", "VUs busy/alive", "p50 ms", "p95 ms", "p99 ms", "errors",
                    "dropped"):  # fmt: skip
            t.add_column(col, justify="right")
        rate = last.get("rate")
        t.add_row(
            f"{stage}/{len(plan.stages)}", f"{s.target:,.1f}{unit}", "-" if rate is None else f"{rate:,.1f}",
            f"{s.vus_busy}/{s.vus}", _ms(last.get("p50")), _ms(last.get("p95")), _ms(last.get("p99")),
            f"{s.errors:,}", f"{s.dropped:,}",
        )  # fmt: skip
        return t

    def _render(self) -> Group:
        self._progress.update(self._task_id, completed=min(self.status.elapsed_s, self.plan.duration_s))
        return Group(self.table(), self._progress)

    def line(self) -> str:
        """The progress line: ``0:00:05/0:00:20 stage 1/2, 99.8/s (target 100/s), 500 done, 0 errors, ...``."""
        s, plan = self.status, self.plan
        last = self.collector.last if self.collector is not None else {}
        rate, p99 = last.get("rate"), last.get("p99")
        unit = "/s" if plan.open_model else " VUs"
        stage = plan.profile().stage_index(s.elapsed_s) + 1
        return (
            f"agentcli loadtest: {clock(s.elapsed_s)}/{clock(plan.duration_s)} stage {stage}/{len(plan.stages)}, "
            + ("-" if rate is None else f"{rate:,.1f}/s")
            + f" (target {s.target:,.1f}{unit}), {s.finished:,} done, {s.errors:,} errors, {s.dropped:,} dropped, "
            + f"VUs {s.vus_busy}/{s.vus}, p99 {_ms(p99)} ms"
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S if self._live is not None else 0.25)
            if self._live is not None:
                self._live.update(self._render(), refresh=True)
            elif self._lines is not None and self._lines.due():
                self._lines.line(self.line())

    async def __aenter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._render(), console=self.console, auto_refresh=False, transient=True)
            self._live.start()
        if self.enabled or (self._lines is not None and self._lines.enabled):
            self._ticker = asyncio.create_task(self._tick(), name="agentcli-loadtest-live")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        live, self._live = self._live, None
        if live is not None:
            live.stop()
