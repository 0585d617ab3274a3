"""``agentcli run MODULE:RUNNER --dry-run --estimate-cost --events sample.jsonl``: run an app's agents on a sample
of events against the mock LLM in this process, and estimate what they would cost.

The app's agents run on a copy of its runner (:meth:`agentflow.Runner.with_config`) whose config sends every
``[llm.NAME]`` provider to an in-process mock server, with the provider's own price table; the bus and the state
backend are the memory ones and the HTTP server stays off, so nothing reaches a real provider, broker, state store
or network address. Prompt tokens are what the mock counts (about four characters a token), completion tokens at
most ``--completion-tokens`` per call, fewer when a call asks for ``max_tokens``. Each sample event starts its own
workflow (its correlation id), so its cost includes every follow-up it caused.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

import msgspec
import typer
from rich.console import Console

from agentflow import AlertsConfig, Config, LLMLimitsConfig, Runner, Usage
from agentflow.llm.mock import MockLLMServer

from ..runtime import Interrupted, run_async

__all__ = [
    "MAX_EVENTS",
    "DryRunReport",
    "SampleEvent",
    "dry_config",
    "estimate",
    "read_events",
    "render_text",
    "run_dry",
]

MAX_EVENTS: Final = 10_000
DEFAULT_COMPLETION_TOKENS: Final = 256


class SampleEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One line of ``--events``: shaped like an HTTP ingest event."""

    topic: str
    payload: Any = None
    key: str | None = None
    headers: dict[str, str] | None = None


class EventCost(msgspec.Struct, kw_only=True):
    """What one sample event's workflow (it and its follow-ups) cost."""

    line: int
    id: str
    topic: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    agents: dict[str, float] = msgspec.field(default_factory=dict)
    dead_lettered: int = 0


class WorkflowEstimate(msgspec.Struct, kw_only=True):
    """The events of one workflow (the topic they start on): cost per event, its range, tokens, agents."""

    workflow: str
    events: int
    total_usd: float
    avg_usd: float
    min_usd: float
    max_usd: float
    avg_prompt_tokens: float
    avg_completion_tokens: float
    by_agent: dict[str, float]


class DryRunReport(msgspec.Struct, kw_only=True):
    """``--dry-run --estimate-cost --json``: per event, per workflow and per agent, with the assumptions."""

    format: str = "agentcli.estimate/1"
    app: str
    events: int
    completion_tokens: int
    total_usd: float
    avg_usd: float
    prompt_tokens: int
    completion_tokens_total: int
    per_event: list[EventCost]
    workflows: list[WorkflowEstimate]
    by_agent: dict[str, float]
    dead_lettered: int
    unpriced: list[str]
    mock_requests: int
    notes: list[str]


def read_events(path: Path) -> list[SampleEvent]:
    """The sample, one JSON event per line (blank lines skipped); ValueError with the line number otherwise."""
    dec = msgspec.json.Decoder(SampleEvent)
    out: list[SampleEvent] = []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(dec.decode(line))
        except msgspec.DecodeError as exc:
            raise ValueError(
                f"{path} line {n} is not an event ({exc}); each line is one JSON object "
                '{"topic": ..., "payload": ..., "key": ..., "headers": {...}}.'
            ) from None
        if len(out) > MAX_EVENTS:
            raise ValueError(f"{path} holds more than {MAX_EVENTS:,} events; a sample of a few hundred is enough.")
    if not out:
        raise ValueError(f"{path} holds no events.")
    return out


def dry_config(config: Config, mock_url: str) -> Config:
    """``config`` with every LLM provider sent to the mock (prices kept, limits and keys dropped), the memory bus
    and state backend, and no HTTP server, alerts or tracing."""
    replace = msgspec.structs.replace
    llm = {
        name: replace(
            p, base_url=mock_url, api_key_env=None, api_style="openai", api_version=None, min_connections=0,
            limits=LLMLimitsConfig(max_queue=p.limits.max_queue),
        )
        for name, p in config.llm.items()
    }  # fmt: skip
    return replace(
        config,
        bus=replace(config.bus, backend="memory"),
        memory=replace(config.memory, backend="memory"),  # neither state nor estimated cost reaches the real store
        monitoring=replace(
            config.monitoring, metrics_enabled=False, ingest_enabled=False, profiling=False, alerts=AlertsConfig()
        ),
        tracing=replace(config.tracing, enabled=False),
        llm=llm,
    )


async def estimate(
    runner: Runner, events: list[SampleEvent], *, app: str, completion_tokens: int, timeout_s: float = 600.0
) -> DryRunReport:
    """Run ``events`` through a copy of ``runner`` against an in-process mock LLM; what they would cost."""
    async with MockLLMServer(reply_tokens=completion_tokens) as mock:
        dry = runner.with_config(dry_config(runner.config, mock.url))
        async with dry:
            ids = [await dry.emit(e.topic, e.payload, key=e.key, headers=e.headers) for e in events]
            await dry.drain(timeout_s=timeout_s)
            dead = await _dead_by_run(dry)
            assert dry.llm is not None or not runner.config.llm
            runs = {} if dry.llm is None else {r.run: r for r in dry.llm.costs.ledger.runs(0.0, time.time() + 60)}
            unpriced = _unpriced(dry)
        requests = mock.stats().requests
    per_event = []
    for n, (e, eid) in enumerate(zip(events, ids, strict=True), 1):
        r = runs.get(eid)
        cost = EventCost(line=n, id=eid, topic=e.topic, dead_lettered=dead.get(eid, 0))
        if r is not None:
            cost.calls, cost.cost_usd, cost.agents = r.calls, r.cost_usd, dict(r.agents)
            cost.prompt_tokens, cost.completion_tokens = r.prompt_tokens, r.completion_tokens
        per_event.append(cost)
    return _report(app, per_event, completion_tokens, unpriced, requests)


async def _dead_by_run(runner: Runner) -> dict[str, int]:
    out: dict[str, int] = {}
    cursor = None
    while True:
        page = await runner.dlq.page(limit=1000, cursor=cursor)
        for letter in page.dead_letters:
            run = letter.event.correlation_id if letter.event is not None else None
            if run is not None:
                out[run] = out.get(run, 0) + 1
        cursor = page.next_cursor
        if cursor is None:
            return out


def _unpriced(runner: Runner) -> list[str]:
    if runner.llm is None:
        return []
    costs = runner.llm.costs
    return sorted(
        {
            f"{r.provider}/{r.model}"
            for r in costs.rows()
            if r.prompt_tokens + r.completion_tokens
            and costs.cost_usd(r.provider, r.model, Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)) == 0
        }
    )


def _report(
    app: str, per_event: list[EventCost], completion_tokens: int, unpriced: list[str], requests: int
) -> DryRunReport:
    groups: dict[str, list[EventCost]] = {}
    by_agent: dict[str, float] = {}
    for e in per_event:
        groups.setdefault(e.topic, []).append(e)
        for agent, cost in e.agents.items():
            by_agent[agent] = by_agent.get(agent, 0.0) + cost
    workflows = []
    for name, group in sorted(groups.items()):
        costs = [e.cost_usd for e in group]
        agents: dict[str, float] = {}
        for e in group:
            for agent, cost in e.agents.items():
                agents[agent] = agents.get(agent, 0.0) + cost
        workflows.append(
            WorkflowEstimate(
                workflow=name, events=len(group), total_usd=sum(costs), avg_usd=sum(costs) / len(group),
                min_usd=min(costs), max_usd=max(costs),
                avg_prompt_tokens=sum(e.prompt_tokens for e in group) / len(group),
                avg_completion_tokens=sum(e.completion_tokens for e in group) / len(group),
                by_agent=dict(sorted(agents.items(), key=lambda kv: -kv[1])),
            )
        )  # fmt: skip
    total = sum(e.cost_usd for e in per_event)
    dead = sum(e.dead_lettered for e in per_event)
    notes = [
        f"Completion tokens: at most {completion_tokens} per call (--completion-tokens), fewer where a call sets "
        "max_tokens; prompt tokens are counted by the mock at about four characters a token.",
        "Nothing was sent to a real provider: every [llm.NAME] provider was pointed at an in-process mock server.",
    ]
    if unpriced:
        notes.append(
            f"No price for {', '.join(unpriced)}: their tokens are counted at $0; add [llm.NAME.prices.MODEL]."
        )
    if dead:
        notes.append(
            f"{dead} event(s) were dead-lettered in the dry run (the mock's answers are not a real model's), so "
            "their workflows' cost may be partial."
        )
    return DryRunReport(
        app=app, events=len(per_event), completion_tokens=completion_tokens, total_usd=total,
        avg_usd=total / len(per_event) if per_event else 0.0, prompt_tokens=sum(e.prompt_tokens for e in per_event),
        completion_tokens_total=sum(e.completion_tokens for e in per_event), per_event=per_event,
        workflows=workflows, by_agent=dict(sorted(by_agent.items(), key=lambda kv: -kv[1])), dead_lettered=dead,
        unpriced=unpriced, mock_requests=requests, notes=notes,
    )  # fmt: skip


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(rep: DryRunReport) -> str:
    out = [
        f"Dry run of {rep.app}: {rep.events:,} events against the mock LLM ({rep.mock_requests:,} LLM requests).",
        "",
    ]
    out.append("Per event")
    out += _grid(
        ["line", "topic", "calls", "tokens in", "tokens out", "cost $", "dead letters"],
        [[str(e.line), e.topic, f"{e.calls:,}", f"{e.prompt_tokens:,}", f"{e.completion_tokens:,}",
          f"{e.cost_usd:.6f}", str(e.dead_lettered) if e.dead_lettered else "-"] for e in rep.per_event],
    )  # fmt: skip
    out += ["", "Per workflow (the topic its events start on): cost per event and its range over the sample"]
    out += _grid(
        ["workflow", "events", "min $", "avg $", "max $", "total $", "avg tokens in", "avg tokens out"],
        [[w.workflow, f"{w.events:,}", f"{w.min_usd:.6f}", f"{w.avg_usd:.6f}", f"{w.max_usd:.6f}",
          f"{w.total_usd:.6f}", f"{w.avg_prompt_tokens:,.1f}", f"{w.avg_completion_tokens:,.1f}"]
         for w in rep.workflows],
    )  # fmt: skip
    if rep.by_agent:
        out += ["", "By agent"]
        out += _grid(
            ["agent", "", "cost $", "share"],
            [[a, "", f"{c:.6f}", f"{100 * c / rep.total_usd:.0f}%" if rep.total_usd else "-"]
             for a, c in rep.by_agent.items()],
        )  # fmt: skip
    out += [
        "",
        f"Estimated total ${rep.total_usd:.6f} for {rep.events:,} events, ${rep.avg_usd:.6f} per event on average; "
        f"{rep.prompt_tokens:,} tokens in, {rep.completion_tokens_total:,} out.",
    ]
    out += [f"Note: {n}" for n in rep.notes]
    return "\n".join(out)


def run_dry(
    runner: Runner, app: str, events_path: Path | None, *, completion_tokens: int, estimate_cost: bool, as_json: bool
) -> int:
    """The ``--dry-run`` of ``agentcli run``: read the sample, run it, print; the exit code."""
    if events_path is None:
        raise typer.BadParameter("--dry-run needs --events PATH: a JSON-lines file of sample events.")
    try:
        events = read_events(events_path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--events'") from None
    try:
        rep = run_async(estimate(runner, events, app=app, completion_tokens=completion_tokens))
    except Interrupted as exc:
        Console(stderr=True).print("Interrupted: the dry run was stopped.", highlight=False)
        return 128 + exc.signum
    except TimeoutError:
        Console(stderr=True).print(
            "[bold red]Error:[/] the sample was not handled within 10 minutes; use a smaller sample.", highlight=False
        )
        return 1
    if as_json:
        typer.echo(msgspec.json.format(msgspec.json.encode(rep), indent=2).decode())
    elif estimate_cost:
        typer.echo(render_text(rep))
    else:
        typer.echo(
            f"Dry run of {app}: {rep.events:,} events handled against the mock LLM, {rep.dead_lettered:,} "
            f"dead-lettered, {rep.mock_requests:,} LLM requests; add --estimate-cost for what they would cost."
        )
    return 0
