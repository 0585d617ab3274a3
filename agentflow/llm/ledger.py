"""Cost over time: per-minute rows of (provider, model, agent) and one record per run (workflow), bounded.

The :class:`~agentflow.llm.cost.CostTracker` adds every LLM call here as it counts it. Minutes are Unix time
// 60; the ledger keeps the last ``max_minutes`` of them and the last ``max_runs`` runs, so memory is bounded
however long the process lives. A run is one correlation id (every event of one emitted workflow shares it);
its ``workflow`` is the name of the workflow it belongs to: the topic of its first event by default, or what
the workflow layer names it (:meth:`CostLedger.name_run`).

With persistence on (:meth:`CostLedger.track_changes`), each call is also added to a list of changes that
:mod:`agentflow.insight.costs` writes to a state backend and clears, so cost history survives restarts::

    ledger = CostLedger()
    ledger.add("openai", "gpt-4o-mini", "summarize", "wf-1", 900, 100, 0.000195, now=time.time())
    ledger.minutes(since=0, until=time.time())    # [CostMinute(minute=..., rows=[...])]
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import msgspec

__all__ = ["CostLine", "CostMinute", "CostLedger", "RunCost"]

#: Minutes kept in memory (a day), and runs.
DEFAULT_MAX_MINUTES: Final = 1440
DEFAULT_MAX_RUNS: Final = 10_000
#: Rows per minute; further (provider, model, agent) triples are summed under model "_other".
MAX_ROWS_PER_MINUTE: Final = 1000
#: Agents named per run; further ones are summed under "_other".
MAX_AGENTS_PER_RUN: Final = 64
#: Run parts kept per minute for the state backend; the runs beyond are summed under run "_other".
MAX_RUN_PARTS_PER_MINUTE: Final = 5000

_Key = tuple[str, str, str]


class CostLine(msgspec.Struct, kw_only=True):
    """Usage of one (provider, model, agent) in one minute: calls, tokens and US dollars."""

    provider: str
    model: str
    agent: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: CostLine) -> None:
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd


class CostMinute(msgspec.Struct, kw_only=True):
    """The rows of one minute (``minute`` is Unix time // 60)."""

    minute: int
    rows: list[CostLine] = msgspec.field(default_factory=list)


class RunCost(msgspec.Struct, kw_only=True):
    """One run (a correlation id): when it spent, what, and on which agents; ``tool_calls`` it made."""

    run: str
    workflow: str | None = None
    started_at: float = 0.0
    last_at: float = 0.0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    agents: dict[str, float] = msgspec.field(default_factory=dict)

    def merge(self, other: RunCost) -> None:
        """Add another part of the same run (from another minute or another process)."""
        if other.workflow is not None and self.workflow is None:
            self.workflow = other.workflow
        if other.started_at and (not self.started_at or other.started_at < self.started_at):
            self.started_at = other.started_at
        self.last_at = max(self.last_at, other.last_at)
        self.calls += other.calls
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd
        self.tool_calls += other.tool_calls
        for agent, cost in other.agents.items():
            _add_agent(self.agents, agent, cost)


def _add_agent(agents: dict[str, float], agent: str, cost: float) -> None:
    if agent not in agents and len(agents) >= MAX_AGENTS_PER_RUN:
        agent = "_other"
    agents[agent] = agents.get(agent, 0.0) + cost


class _Run:
    """A run as this process keeps it: :class:`RunCost`'s fields, with each agent's tokens too (a workflow step's
    usage, and the tokens a run has used for its budget, come from here)."""

    __slots__ = (
        "agents",
        "calls",
        "completion_tokens",
        "cost_usd",
        "last_at",
        "prompt_tokens",
        "started_at",
        "tool_calls",
        "workflow",
    )

    def __init__(self, workflow: str | None, now: float) -> None:
        self.workflow = workflow
        self.started_at = now
        self.last_at = now
        self.calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.tool_calls = 0
        # agent -> [prompt tokens, completion tokens, US dollars]; at most MAX_AGENTS_PER_RUN, then "_other"
        self.agents: dict[str, list[float]] = {}

    def count(self, agent: str, p: int, c: int, cost: float, now: float) -> None:
        self.calls += 1
        self.prompt_tokens += p
        self.completion_tokens += c
        self.cost_usd += cost
        self.last_at = now
        step = self.agents.get(agent)
        if step is None:
            if len(self.agents) >= MAX_AGENTS_PER_RUN:
                agent = "_other"
                step = self.agents.get(agent)
            if step is None:
                step = self.agents[agent] = [0, 0, 0.0]
        step[0] += p
        step[1] += c
        step[2] += cost

    def public(self, run: str) -> RunCost:
        return RunCost(
            run=run, workflow=self.workflow, started_at=self.started_at, last_at=self.last_at, calls=self.calls,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, cost_usd=self.cost_usd,
            tool_calls=self.tool_calls, agents={a: step[2] for a, step in self.agents.items()},
        )  # fmt: skip


class _Changes:
    """What happened since the last write to the state backend: minute rows and run parts, by minute."""

    __slots__ = ("minutes", "runs")

    def __init__(self) -> None:
        self.minutes: dict[int, dict[_Key, CostLine]] = {}
        self.runs: dict[int, dict[str, RunCost]] = {}


class CostLedger:
    """Bounded cost history of this process: see the module docstring."""

    def __init__(self, *, max_minutes: int = DEFAULT_MAX_MINUTES, max_runs: int = DEFAULT_MAX_RUNS) -> None:
        self.max_minutes = max_minutes
        self.max_runs = max_runs
        self._minutes: OrderedDict[int, dict[_Key, CostLine]] = OrderedDict()
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._changes: _Changes | None = None

    def __repr__(self) -> str:
        return f"<CostLedger minutes={len(self._minutes)} runs={len(self._runs)}>"

    # ---- recording ---------------------------------------------------------------------------------------

    def add(
        self,
        provider: str,
        model: str,
        agent: str,
        run: str | None,
        prompt: int,
        completion: int,
        cost: float,
        *,
        now: float,
    ) -> _Run | None:
        """Count one call made at ``now`` (Unix time); return the run's record (None without a run)."""
        minute = int(now // 60)
        rows = self._minutes.get(minute)
        if rows is None:
            rows = self._new_minute(minute)
        _add_line(rows, provider, model, agent, prompt, completion, cost)
        changes = self._changes
        if changes is not None:
            crows = changes.minutes.get(minute)
            if crows is None:
                crows = changes.minutes[minute] = {}
            _add_line(crows, provider, model, agent, prompt, completion, cost)
        if run is None:
            return None
        rec = self._runs.get(run)
        if rec is None:
            rec = self._run(run, now)
        elif not rec.started_at:  # named (name_run) before its first call
            rec.started_at = now
        rec.count(agent, prompt, completion, cost, now)
        if changes is not None:
            part = self._part(changes, minute, run, rec.workflow, now)
            _count(part, agent, prompt, completion, cost, now)
        return rec

    def name_run(self, run: str, workflow: str, *, replace: bool = False) -> None:
        """Name the workflow ``run`` belongs to. The first name stays unless ``replace`` (the workflow layer's
        name replaces the topic of the run's first event)."""
        rec = self._run(run, None)
        if rec.workflow is None or replace:
            rec.workflow = workflow

    def tool_called(self, run: str | None, n: int = 1, *, now: float) -> None:
        """Count ``n`` tool calls in ``run`` (the tool layer calls this; runs that use tools are reported apart)."""
        if run is None:
            return
        rec = self._run(run, now)
        rec.tool_calls += n
        if self._changes is not None:
            self._part(self._changes, int(now // 60), run, rec.workflow, now).tool_calls += n

    def _new_minute(self, minute: int) -> dict[_Key, CostLine]:
        rows: dict[_Key, CostLine] = {}
        self._minutes[minute] = rows
        if minute < next(reversed(self._minutes)):  # a clock step back: keep the order by minute
            self._minutes = OrderedDict(sorted(self._minutes.items()))
        while len(self._minutes) > self.max_minutes:
            self._minutes.popitem(last=False)
        return rows

    def _run(self, run: str, now: float | None) -> _Run:
        rec = self._runs.get(run)
        if rec is None:
            rec = self._runs[run] = _Run(None, now or 0.0)
            if len(self._runs) > self.max_runs:
                self._runs.popitem(last=False)
        elif now is not None and not rec.started_at:
            rec.started_at = now
        return rec

    @staticmethod
    def _part(changes: _Changes, minute: int, run: str, workflow: str | None, now: float) -> RunCost:
        parts = changes.runs.get(minute)
        if parts is None:
            parts = changes.runs[minute] = {}
        if run not in parts and len(parts) >= MAX_RUN_PARTS_PER_MINUTE:
            run, workflow = "_other", None
        part = parts.get(run)
        if part is None:
            part = parts[run] = RunCost(run=run, workflow=workflow, started_at=now, last_at=now)
        elif part.workflow is None:
            part.workflow = workflow
        return part

    # ---- reading -----------------------------------------------------------------------------------------

    def minutes(self, since: float, until: float) -> list[CostMinute]:
        """The minutes that overlap ``[since, until]`` (Unix times), oldest first."""
        lo, hi = int(since // 60), int(until // 60)
        return [
            CostMinute(minute=m, rows=[_copy(r) for r in rows.values()])
            for m, rows in self._minutes.items()
            if lo <= m <= hi
        ]

    def runs(self, since: float, until: float) -> list[RunCost]:
        """Runs that spent inside ``[since, until]``."""
        return [
            r.public(run) for run, r in self._runs.items() if r.calls and r.last_at >= since and r.started_at <= until
        ]

    def tokens(self, run: str) -> int:
        """Tokens ``run`` has used in this process (0 when unknown or forgotten)."""
        rec = self._runs.get(run)
        return 0 if rec is None else rec.prompt_tokens + rec.completion_tokens

    def step(self, run: str, agent: str) -> tuple[int, int, float]:
        """Prompt tokens, completion tokens and US dollars ``agent`` used in ``run`` (0 when unknown or forgotten)."""
        rec = self._runs.get(run)
        step = None if rec is None else rec.agents.get(agent)
        return (0, 0, 0.0) if step is None else (int(step[0]), int(step[1]), step[2])

    # ---- persistence -------------------------------------------------------------------------------------

    def track_changes(self) -> None:
        """Start keeping the changes :meth:`take_changes` hands out (persistence is on)."""
        if self._changes is None:
            self._changes = _Changes()

    def take_changes(self) -> tuple[dict[int, list[CostLine]], dict[int, list[RunCost]]]:
        """The rows and run parts added since the last call, by minute; the ledger forgets them."""
        changes = self._changes
        if changes is None:
            return {}, {}
        self._changes = _Changes()
        return (
            {m: list(rows.values()) for m, rows in changes.minutes.items()},
            {m: list(parts.values()) for m, parts in changes.runs.items()},
        )

    def give_back(self, minutes: dict[int, list[CostLine]], runs: dict[int, list[RunCost]]) -> None:
        """Changes that could not be written: keep them for the next write (merged with newer ones)."""
        changes = self._changes
        if changes is None:
            return
        for m, lines in minutes.items():
            crows = changes.minutes.setdefault(m, {})
            for line in lines:
                key = (line.provider, line.model, line.agent)
                if key in crows:
                    crows[key].add(line)
                else:
                    crows[key] = line
        for m, parts in runs.items():
            cparts = changes.runs.setdefault(m, {})
            for part in parts:
                if part.run in cparts:
                    part.merge(cparts[part.run])
                cparts[part.run] = part


def _add_line(rows: dict[_Key, CostLine], provider: str, model: str, agent: str, p: int, c: int, cost: float) -> None:
    key = (provider, model, agent)
    line = rows.get(key)
    if line is None:
        if len(rows) >= MAX_ROWS_PER_MINUTE:
            key = (provider, "_other", agent)
            line = rows.get(key)
        if line is None:
            line = rows[key] = CostLine(provider=provider, model=key[1], agent=agent)
    line.calls += 1
    line.prompt_tokens += p
    line.completion_tokens += c
    line.cost_usd += cost


def _count(rec: RunCost, agent: str, p: int, c: int, cost: float, now: float) -> None:
    rec.calls += 1
    rec.prompt_tokens += p
    rec.completion_tokens += c
    rec.cost_usd += cost
    rec.last_at = now
    _add_agent(rec.agents, agent, cost)


def _copy(line: CostLine) -> CostLine:
    return msgspec.structs.replace(line)
