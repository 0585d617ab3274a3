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
#: Rows per minute, and in the totals; further (provider, model, agent) triples are summed under model "_other".
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


class _Run(msgspec.Struct, gc=False):
    """A run as this process keeps it: :class:`RunCost`'s fields, with each agent's tokens too (a workflow step's
    usage, and the tokens a run has used for its budget, come from here).

    The ledger keeps thousands of these for a long time, so they hold no container the garbage collector would
    have to visit again and again: the struct is untracked, and its first agent's usage is in fields of its own
    (most runs have one agent). Further agents go in ``others``: agent -> [prompt tokens, completion tokens, US
    dollars], at most MAX_AGENTS_PER_RUN agents in all, then "_other"."""

    workflow: str | None
    started_at: float
    last_at: float
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    tool_calls: int = 0
    agent: str | None = None
    agent_prompt: int = 0
    agent_completion: int = 0
    agent_cost: float = 0.0
    others: dict[str, list[float]] | None = None

    def count_other(self, agent: str, prompt: int, completion: int, cost: float) -> None:
        """Count a call of an agent that is not the run's first (or the first call of a run named first)."""
        if self.agent is None:
            self.agent, self.agent_prompt, self.agent_completion, self.agent_cost = agent, prompt, completion, cost
            return
        others = self.others
        if others is None:
            others = self.others = {}
        step = others.get(agent)
        if step is None:
            if len(others) + 1 >= MAX_AGENTS_PER_RUN:
                agent = "_other"
                step = others.get(agent)
            if step is None:
                step = others[agent] = [0, 0, 0.0]
        step[0] += prompt
        step[1] += completion
        step[2] += cost

    def usage_of(self, agent: str) -> tuple[int, int, float]:
        if agent == self.agent:
            return self.agent_prompt, self.agent_completion, self.agent_cost
        step = None if self.others is None else self.others.get(agent)
        return (0, 0, 0.0) if step is None else (int(step[0]), int(step[1]), step[2])

    def public(self, run: str) -> RunCost:
        agents = {} if self.agent is None else {self.agent: self.agent_cost}
        for agent, step in (self.others or {}).items():
            agents[agent] = step[2]
        return RunCost(
            run=run, workflow=self.workflow, started_at=self.started_at, last_at=self.last_at, calls=self.calls,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, cost_usd=self.cost_usd,
            tool_calls=self.tool_calls, agents=agents,
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
        #: Usage since the start by (provider, model, agent), at most MAX_ROWS_PER_MINUTE rows (then "_other"):
        #: the :class:`~agentflow.llm.cost.CostTracker`'s totals. A minute's rows are the difference between the
        #: totals when it ended and when it began, so a call is counted once, here.
        self.totals: dict[_Key, CostLine] = {}
        # The minutes that ended, oldest first; the open minute and the totals when it began.
        self._minutes: OrderedDict[int, dict[_Key, CostLine]] = OrderedDict()
        self._minute = -1
        self._base: dict[_Key, CostLine] = {}
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        # The names of runs named before their first call, until it (at most max_runs, the oldest forgotten).
        self._names: OrderedDict[str, str] = OrderedDict()
        self._changes: _Changes | None = None

    def __repr__(self) -> str:
        return f"<CostLedger minutes={len(self._minutes) + bool(self.totals)} runs={len(self._runs)}>"

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
    ) -> None:
        """Count one call made at ``now`` (Unix time). A clock that steps back counts it in the open minute.

        Every LLM call passes here, so the common cases are inlined: a known row, a run's first call."""
        minute = int(now // 60)
        if minute > self._minute:
            self._roll(minute)
        line = self.totals.get((provider, model, agent))
        if line is None:
            line = _line(self.totals, provider, model, agent)
        line.calls += 1
        line.prompt_tokens += prompt
        line.completion_tokens += completion
        line.cost_usd += cost
        if run is not None:
            runs = self._runs
            rec = runs.get(run)
            if rec is None:
                workflow = self._names.pop(run, None) if self._names else None
                runs[run] = _Run(workflow, now, now, 1, prompt, completion, cost, 0, agent, prompt, completion, cost)
                if len(runs) > self.max_runs:
                    runs.popitem(last=False)
            else:
                rec.calls += 1
                rec.prompt_tokens += prompt
                rec.completion_tokens += completion
                rec.cost_usd += cost
                rec.last_at = now
                if agent == rec.agent:
                    rec.agent_prompt += prompt
                    rec.agent_completion += completion
                    rec.agent_cost += cost
                else:
                    rec.count_other(agent, prompt, completion, cost)
        if self._changes is not None:
            self._change(self._changes, minute, provider, model, agent, run, prompt, completion, cost, now)

    def name_run(self, run: str, workflow: str, *, replace: bool = False) -> None:
        """Name the workflow ``run`` belongs to. The first name stays unless ``replace`` (the workflow layer's
        name replaces the topic of the run's first event)."""
        rec = self._runs.get(run)
        if rec is not None:
            if rec.workflow is None or replace:
                rec.workflow = workflow
            return
        names = self._names  # a run named before its first call: its record takes the name then
        if replace or run not in names:
            names[run] = workflow
            if len(names) > self.max_runs:
                names.popitem(last=False)

    def tool_called(self, run: str | None, n: int = 1, *, now: float) -> None:
        """Count ``n`` tool calls in ``run`` (the tool layer calls this; runs that use tools are reported apart)."""
        if run is None:
            return
        rec = self._runs.get(run)
        if rec is None:
            rec = self._new_run(run, self._names.pop(run, None) if self._names else None, now)
        rec.tool_calls += n
        if self._changes is not None:
            self._part(self._changes, int(now // 60), run, rec.workflow, now).tool_calls += n

    def _change(
        self,
        changes: _Changes,
        minute: int,
        provider: str,
        model: str,
        agent: str,
        run: str | None,
        prompt: int,
        completion: int,
        cost: float,
        now: float,
    ) -> None:
        """Keep a call for the state backend (persistence is on): its minute's row and its run's part."""
        crows = changes.minutes.get(minute)
        if crows is None:
            crows = changes.minutes[minute] = {}
        line = crows.get((provider, model, agent)) or _line(crows, provider, model, agent)
        line.calls += 1
        line.prompt_tokens += prompt
        line.completion_tokens += completion
        line.cost_usd += cost
        if run is not None:
            rec = self._runs.get(run)
            part = self._part(changes, minute, run, None if rec is None else rec.workflow, now)
            _count(part, agent, prompt, completion, cost, now)

    def _roll(self, minute: int) -> None:
        """Close the open minute (its rows: the totals now less the totals when it began) and open ``minute``."""
        if self._minute >= 0:
            rows = _since(self.totals, self._base)
            if rows:
                self._minutes[self._minute] = rows
                while len(self._minutes) >= self.max_minutes:  # the open minute is one of max_minutes
                    self._minutes.popitem(last=False)
        self._minute = minute
        self._base = {k: _copy(line) for k, line in self.totals.items()}

    def _new_run(self, run: str, workflow: str | None, now: float) -> _Run:
        rec = self._runs[run] = _Run(workflow, now, now)
        if len(self._runs) > self.max_runs:
            self._runs.popitem(last=False)
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
        out = [
            CostMinute(minute=m, rows=[_copy(r) for r in rows.values()])
            for m, rows in self._minutes.items()
            if lo <= m <= hi
        ]
        if lo <= self._minute <= hi:
            rows = _since(self.totals, self._base)
            if rows:
                out.append(CostMinute(minute=self._minute, rows=list(rows.values())))
        return out

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
        return (0, 0, 0.0) if rec is None else rec.usage_of(agent)

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


def _line(rows: dict[_Key, CostLine], provider: str, model: str, agent: str) -> CostLine:
    """A new row of ``rows`` for (provider, model, agent); past MAX_ROWS_PER_MINUTE, the "_other" model's."""
    key = (provider, model, agent)
    if len(rows) >= MAX_ROWS_PER_MINUTE:
        key = (provider, "_other", agent)
    line = rows.get(key)
    if line is None:
        line = rows[key] = CostLine(provider=provider, model=key[1], agent=agent)
    return line


def _since(totals: dict[_Key, CostLine], base: dict[_Key, CostLine]) -> dict[_Key, CostLine]:
    """The rows of ``totals`` less ``base`` (the totals earlier), without the rows that did not change."""
    out: dict[_Key, CostLine] = {}
    for key, line in totals.items():
        was = base.get(key)
        if was is None:
            out[key] = _copy(line)
        elif line.calls != was.calls:
            out[key] = CostLine(
                provider=line.provider, model=line.model, agent=line.agent, calls=line.calls - was.calls,
                prompt_tokens=line.prompt_tokens - was.prompt_tokens,
                completion_tokens=line.completion_tokens - was.completion_tokens, cost_usd=line.cost_usd - was.cost_usd,
            )  # fmt: skip
    return out


def _count(rec: RunCost, agent: str, p: int, c: int, cost: float, now: float) -> None:
    rec.calls += 1
    rec.prompt_tokens += p
    rec.completion_tokens += c
    rec.cost_usd += cost
    rec.last_at = now
    _add_agent(rec.agents, agent, cost)


def _copy(line: CostLine) -> CostLine:
    return msgspec.structs.replace(line)
