"""Cost reports — by provider, model, agent and workflow over a time window — and cost history kept in a state
backend, so it survives restarts.

:func:`build_cost_report` turns a ledger's minutes and runs (:mod:`agentflow.llm.ledger`) into a
:class:`CostReport`: totals, per-run average, min and max, share by agent, the most expensive agent, runs that
called tools apart. The same function serves ``GET /v1/costs`` of a running worker and ``agentcli cost-report``
reading a state backend, so their figures agree.

:class:`CostHistory` writes a ledger's changes to a :class:`~agentflow.state.StateBackend` — one record per
minute, ``__agentflow__/costs/<minute>``, merged with a version check so several workers can share the backend —
and reads them back. A write that fails is kept and tried again with the next::

    history = CostHistory(SQLiteBackend("state.db"))
    await history.flush(runner.llm.costs.ledger)
    minutes, runs = await history.read(since=time.time() - 3600, until=time.time())
    print(build_cost_report(minutes, runs, since=..., until=..., source="sqlite").total.cost_usd)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, Literal, get_args

import msgspec

from ..errors import StateError
from ..llm.ledger import CostLedger, CostLine, CostMinute, RunCost
from ..state.base import CONFLICT, Write

if TYPE_CHECKING:
    from ..state.base import StateBackend

__all__ = [
    "COSTS_FORMAT",
    "KEY_PREFIX",
    "CostGroup",
    "CostHistory",
    "CostReport",
    "RunFigures",
    "WorkflowCost",
    "build_cost_report",
]

logger = logging.getLogger(__name__)

CostsFormat = Literal["agentflow.costs/1"]
COSTS_FORMAT: Final[CostsFormat] = get_args(CostsFormat)[0]
#: Keys of the cost history in a state backend: one record per minute.
KEY_PREFIX: Final = "__agentflow__/costs/"
#: Cost history older than this expires from the backend.
DEFAULT_RETENTION_S: Final = 30 * 86400.0
#: How often a running runner writes its cost changes.
DEFAULT_FLUSH_INTERVAL_S: Final = 10.0
#: Conditional writes of one minute tried before the changes wait for the next flush.
_MAX_TRIES: Final = 5
#: The longest window read from a backend (one get per minute).
MAX_READ_MINUTES: Final = 31 * 1440


class CostGroup(msgspec.Struct, kw_only=True):
    """Calls, tokens and cost of one provider, model, agent or workflow; ``share`` of the report's total cost."""

    name: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    share: float | None = None


class RunFigures(msgspec.Struct, frozen=True, kw_only=True):
    """Runs (workflows by correlation id) that spent: their number and their cost per run."""

    runs: int
    total_usd: float
    avg_usd: float
    min_usd: float
    max_usd: float
    avg_tokens: float


class WorkflowCost(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow: its runs, the cost per run, and its agents by cost."""

    workflow: str
    runs: RunFigures
    by_agent: list[CostGroup]
    most_expensive_agent: str | None


class CostReport(msgspec.Struct, kw_only=True):
    """Cost over ``[since, until]`` (Unix times) from ``source`` (a worker's URL, a state backend)."""

    format: CostsFormat = COSTS_FORMAT
    source: str
    since: float
    until: float
    total: CostGroup
    by_provider: list[CostGroup]
    by_model: list[CostGroup]
    by_agent: list[CostGroup]
    by_workflow: list[WorkflowCost]
    runs: RunFigures | None
    tool_runs: RunFigures | None
    most_expensive_agent: str | None
    timeline: list[tuple[float, float]] = msgspec.field(default_factory=list)


def _group(groups: dict[str, CostGroup], name: str, line: CostLine) -> None:
    g = groups.get(name)
    if g is None:
        g = groups[name] = CostGroup(name=name)
    g.calls += line.calls
    g.prompt_tokens += line.prompt_tokens
    g.completion_tokens += line.completion_tokens
    g.cost_usd += line.cost_usd


def _ranked(groups: dict[str, CostGroup], total: float) -> list[CostGroup]:
    for g in groups.values():
        g.share = g.cost_usd / total if total else None
    return sorted(groups.values(), key=lambda g: (-g.cost_usd, g.name))


def run_figures(runs: list[RunCost]) -> RunFigures | None:
    """Cost per run over ``runs``; None when there are none."""
    if not runs:
        return None
    costs = [r.cost_usd for r in runs]
    return RunFigures(
        runs=len(runs),
        total_usd=sum(costs),
        avg_usd=sum(costs) / len(runs),
        min_usd=min(costs),
        max_usd=max(costs),
        avg_tokens=sum(r.prompt_tokens + r.completion_tokens for r in runs) / len(runs),
    )


def merge_runs(runs: Iterable[RunCost]) -> list[RunCost]:
    """Parts of the same run (from several minutes or processes) merged into one each."""
    merged: dict[str, RunCost] = {}
    for r in runs:
        have = merged.get(r.run)
        if have is None:
            merged[r.run] = msgspec.structs.replace(r, agents=dict(r.agents))
        else:
            have.merge(r)
    return list(merged.values())


def _workflow_costs(runs: list[RunCost]) -> list[WorkflowCost]:
    by_name: dict[str, list[RunCost]] = {}
    for r in runs:
        by_name.setdefault(r.workflow or "_unnamed", []).append(r)
    out = []
    for name, group in sorted(by_name.items()):
        agents: dict[str, CostGroup] = {}
        for r in group:
            for agent, cost in r.agents.items():
                g = agents.setdefault(agent, CostGroup(name=agent))
                g.cost_usd += cost
        figures = run_figures(group)
        assert figures is not None
        ranked = _ranked(agents, figures.total_usd)
        top = ranked[0].name if ranked and ranked[0].cost_usd > 0 else None
        out.append(WorkflowCost(workflow=name, runs=figures, by_agent=ranked, most_expensive_agent=top))
    return out


def build_cost_report(
    minutes: list[CostMinute], runs: list[RunCost], *, since: float, until: float, source: str
) -> CostReport:
    """The cost report of the minutes and runs given (already limited to the window)."""
    total = CostGroup(name="total")
    providers: dict[str, CostGroup] = {}
    models: dict[str, CostGroup] = {}
    agents: dict[str, CostGroup] = {}
    timeline = []
    for m in sorted(minutes, key=lambda m: m.minute):
        spent = 0.0
        for line in m.rows:
            _group(providers, line.provider, line)
            _group(models, f"{line.provider}/{line.model}", line)
            _group(agents, line.agent, line)
            total.calls += line.calls
            total.prompt_tokens += line.prompt_tokens
            total.completion_tokens += line.completion_tokens
            total.cost_usd += line.cost_usd
            spent += line.cost_usd
        timeline.append((m.minute * 60.0, spent))
    total.share = 1.0 if total.cost_usd else None
    by_agent = _ranked(agents, total.cost_usd)
    runs = [r for r in merge_runs(runs) if r.calls]
    return CostReport(
        source=source,
        since=since,
        until=until,
        total=total,
        by_provider=_ranked(providers, total.cost_usd),
        by_model=_ranked(models, total.cost_usd),
        by_agent=by_agent,
        by_workflow=_workflow_costs(runs),
        runs=run_figures(runs),
        tool_runs=run_figures([r for r in runs if r.tool_calls]),
        most_expensive_agent=by_agent[0].name if by_agent and by_agent[0].cost_usd > 0 else None,
        timeline=timeline,
    )


def ledger_report(ledger: CostLedger, *, since: float, until: float, source: str) -> CostReport:
    """The report of this process's ledger (the last day at most)."""
    return build_cost_report(
        ledger.minutes(since, until), ledger.runs(since, until), since=since, until=until, source=source
    )


# ---- history in a state backend ------------------------------------------------------------------------------


class _Stored(msgspec.Struct, kw_only=True):
    """What one minute's record holds."""

    minute: int
    rows: list[CostLine] = msgspec.field(default_factory=list)
    runs: list[RunCost] = msgspec.field(default_factory=list)


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(_Stored)


def _merge_rows(into: list[CostLine], lines: list[CostLine]) -> list[CostLine]:
    rows = {(r.provider, r.model, r.agent): r for r in into}
    for line in lines:
        key = (line.provider, line.model, line.agent)
        if key in rows:
            rows[key].add(line)
        else:
            rows[key] = msgspec.structs.replace(line)
    return list(rows.values())


class CostHistory:
    """Cost history in a state backend (started by the caller and left open); see the module docstring."""

    def __init__(self, backend: StateBackend, *, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.backend = backend
        self.retention_s = retention_s
        self.flushes = 0
        self.failures = 0
        self._stop = asyncio.Event()

    def __repr__(self) -> str:
        return f"<CostHistory backend={self.backend.name} flushes={self.flushes} failures={self.failures}>"

    async def flush(self, ledger: CostLedger) -> int:
        """Write what ``ledger`` added since the last flush; return the minutes written. Changes that could not
        be written go back to the ledger for the next flush (logged, never raised)."""
        ledger.track_changes()
        minutes, runs = ledger.take_changes()
        written = 0
        for minute in sorted(set(minutes) | set(runs)):
            lines, parts = minutes.get(minute, []), runs.get(minute, [])
            try:
                await self._merge(minute, lines, parts)
            except Exception as exc:  # noqa: BLE001 - a StateError, or a record it cannot read: never ends the task
                self.failures += 1
                logger.warning("Could not write cost history for minute %d: %s; it is tried again later.", minute, exc)
                ledger.give_back({minute: lines} if lines else {}, {minute: parts} if parts else {})
                continue
            written += 1
        self.flushes += 1
        return written

    async def _merge(self, minute: int, lines: list[CostLine], parts: list[RunCost]) -> None:
        key = f"{KEY_PREFIX}{minute}"
        for _ in range(_MAX_TRIES):
            record = await self.backend.get(key)
            stored = _DEC.decode(record.value) if record is not None else _Stored(minute=minute)
            stored.rows = _merge_rows(stored.rows, lines)
            stored.runs = merge_runs([*stored.runs, *parts])
            write = Write(
                key=key,
                value=_ENC.encode(stored),
                expires_at=minute * 60.0 + self.retention_s,
                expected_version=0 if record is None else record.version,
            )
            [result] = await self.backend.commit([write])
            if result.status != CONFLICT:
                return
        raise StateError(f"the record {key} kept changing under {_MAX_TRIES} conditional writes")

    async def read(self, since: float, until: float) -> tuple[list[CostMinute], list[RunCost]]:
        """The minutes and runs kept for ``[since, until]`` (at most :data:`MAX_READ_MINUTES` minutes)."""
        lo, hi = int(since // 60), int(until // 60)
        if hi - lo > MAX_READ_MINUTES:
            raise ValueError(f"The window spans {hi - lo} minutes; read at most {MAX_READ_MINUTES} (31 days) at once.")
        minutes: list[CostMinute] = []
        runs: list[RunCost] = []
        for m in range(lo, hi + 1):
            record = await self.backend.get(f"{KEY_PREFIX}{m}")
            if record is None:
                continue
            stored = _DEC.decode(record.value)
            minutes.append(CostMinute(minute=m, rows=stored.rows))
            runs += stored.runs
        return minutes, merge_runs(runs)

    async def run(self, ledger: CostLedger, interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        """Flush every ``interval_s`` until :meth:`stop`, then once more and return. Stopping never cuts a
        flush short: a cancelled write could have reached the backend or not, so its changes could be neither
        given back nor dropped safely."""
        ledger.track_changes()
        stop = self._stop
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await stop.wait()
            last = stop.is_set()  # read before the flush: a stop during it still gets one more
            await self.flush(ledger)
            if last:
                return

    def stop(self) -> None:
        """End :meth:`run` after its last flush."""
        self._stop.set()
