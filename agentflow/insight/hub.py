"""What a Runner owns for insight: the event-loop lag timer, the alert monitor, cost-history writes, and the
profile and cost reports of its HTTP routes.

The runner builds one :class:`Insight` and starts it with its task group; nothing here touches the hot path.
The lag timer always runs; the alert monitor only when ``[monitoring.alerts]`` sets a threshold; cost history
when the runner has LLM providers and a durable ``[memory]`` backend (SQLite or Redis: the history goes to the
runner's own state backend), or once a backend is given (:meth:`Insight.persist_costs`, for another one)::

    async with runner:                         # [memory] backend = "sqlite": cost history survives restarts
        report = runner.insight.profile()      # the profile report since start
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

from ..metrics import GaugeSample
from .alerts import AlertMonitor, rss_bytes
from .costs import DEFAULT_FLUSH_INTERVAL_S, CostHistory, CostReport, ledger_report
from .looplag import LoopLag
from .profile import ProfileReport, build_profile
from .snapshot import ProfileSnapshot, take_snapshot

if TYPE_CHECKING:
    from ..runner import Runner
    from ..state.base import StateBackend

__all__ = ["Insight"]

logger = logging.getLogger(__name__)

#: ``[memory]`` backends whose data outlives the process: a runner keeps its cost history there.
DURABLE_BACKENDS: Final = ("sqlite", "redis")


class Insight:
    """The runner's insight: see the module docstring."""

    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        mon = runner.config.monitoring
        self.loop_lag = LoopLag(runner.metrics.loop_lag, interval_s=mon.loop_lag_interval_s)
        self.alerts: AlertMonitor | None = AlertMonitor(runner, mon.alerts) if mon.alerts.any() else None
        self.history: CostHistory | None = None
        self._started: float | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._history_task: asyncio.Task[None] | None = None
        runner.metrics.add_gauges(self._gauges)

    def __repr__(self) -> str:
        return f"<Insight uptime_s={self.uptime_s():.1f} alerts={self.alerts!r} history={self.history!r}>"

    def persist_costs(self, backend: StateBackend) -> None:
        """Keep cost history in ``backend`` (started by the caller, and left open): written every 10 s and on
        close, read by ``agentcli cost-report --store``. A runner whose ``[memory]`` is durable does this with its
        own state backend; call it before start for another backend (one the memory backend cannot be)."""
        self.history = CostHistory(backend)
        if self._runner.llm is not None:
            self._runner.llm.costs.ledger.track_changes()

    def uptime_s(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start the timer and the tasks; the runner's state store has started already, and closes after
        :meth:`aclose` wrote the cost history a last time."""
        self._started = time.perf_counter()
        self.loop_lag.start(asyncio.get_running_loop())
        if self.alerts is not None:
            self._tasks.append(tg.create_task(self.alerts.run(), name="agentflow-alerts"))
        llm = self._runner.llm
        if self.history is None and llm is not None and self._runner.config.memory.backend in DURABLE_BACKENDS:
            self.persist_costs(self._runner.state_store.backend)
        if self.history is not None and llm is not None:
            run = self.history.run(llm.costs.ledger, DEFAULT_FLUSH_INTERVAL_S)
            self._history_task = tg.create_task(run, name="agentflow-costs")

    async def aclose(self) -> None:
        """Stop the timer and the tasks; the cost history is written one last time (a flush under way finishes
        first: it is never cancelled)."""
        self.loop_lag.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        task, self._history_task = self._history_task, None
        if task is not None and self.history is not None:
            self.history.stop()
            await asyncio.gather(task, return_exceptions=True)
            llm = self._runner.llm
            if task.cancelled() and llm is not None:  # the task group ended before it: its last flush is this
                await self.history.flush(llm.costs.ledger)

    # ---- reports -----------------------------------------------------------------------------------------

    def snapshot(self) -> ProfileSnapshot:
        return take_snapshot(self._runner, uptime_s=self.uptime_s())

    def profile(self) -> ProfileReport:
        """The profile since the runner started (a window: diff two snapshots, ``ProfileSnapshot.minus``)."""
        return build_profile(self.snapshot(), source="worker since start")

    def costs(self, since: float, until: float) -> CostReport | None:
        llm = self._runner.llm
        if llm is None:
            return None
        return ledger_report(llm.costs.ledger, since=since, until=until, source="worker")

    def _gauges(self) -> list[GaugeSample]:
        out: list[GaugeSample] = [
            (
                "agentflow_process_resident_memory_bytes",
                "Resident memory of this process.",
                (),
                (),
                float(rss_bytes()),
            )
        ]
        if self.alerts is not None:
            out += self.alerts.gauges()
        return out
