"""``agentcli cost-report``: what LLM calls cost by provider, model, agent and workflow over a time window — from
a running worker (``--url``, its ``GET /v1/costs``: the last day at most) or from the cost history a runner kept
in a state backend (``--store``), which survives restarts.

Totals, the cost per run (one workflow run: a correlation id) with its average, minimum and maximum, the share
of each agent, and the most expensive agent named.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from agentflow import CostHistory, CostReport, StateError, build_cost_report
from agentflow.state import StateConfig, create_backend

from ..parse import option, parse_duration
from .source import SourceError, fetch

__all__ = ["cost_report", "render_text", "store_config"]

#: The longest window a worker keeps (its ledger holds a day).
WORKER_MAX_S = 86_400.0


def store_config(store: str, password_env: str, key_prefix: str) -> StateConfig:
    """``sqlite:PATH`` or ``redis://host:port/db`` as the ``[memory]`` settings of that backend."""
    if store.startswith("sqlite:"):
        path = store.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise typer.BadParameter(
                "sqlite: needs a file: sqlite:/var/lib/agentflow/state.db.", param_hint="'--store'"
            )
        if not Path(path).is_file():
            raise typer.BadParameter(f"{path} is not a file.", param_hint="'--store'")
        return StateConfig(backend="sqlite", path=path)
    if store.startswith(("redis://", "rediss://")):
        return StateConfig(backend="redis", url=store, password_env=password_env, key_prefix=key_prefix)
    raise typer.BadParameter(
        f"{store!r} is neither sqlite:PATH nor redis://HOST:PORT/DB (the [memory] backend that keeps the history).",
        param_hint="'--store'",
    )


async def _from_store(config: StateConfig, since: float, until: float, source: str) -> CostReport:
    backend = create_backend(config)
    async with backend:
        minutes, runs = await CostHistory(backend).read(since, until)
    return build_cost_report(minutes, runs, since=since, until=until, source=source)


def _money(v: float) -> str:
    return f"{v:,.6f}" if v < 1 else f"{v:,.4f}"


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def render_text(rep: CostReport) -> str:
    t = rep.total
    out = [
        f"Cost from {rep.source}, {_when(rep.since)} to {_when(rep.until)}",
        f"Total: ${_money(t.cost_usd)}, {t.calls:,} calls, {t.prompt_tokens:,} tokens in, {t.completion_tokens:,} out",
    ]
    if rep.most_expensive_agent is not None:
        top = rep.by_agent[0]
        out.append(f"Most expensive agent: {top.name} (${_money(top.cost_usd)}, {100 * (top.share or 0):.0f}%)")
    for title, groups in (("provider", rep.by_provider), ("model", rep.by_model), ("agent", rep.by_agent)):
        if groups:
            out += ["", f"By {title}"]
            out += _grid(
                [title, "calls", "tokens in", "tokens out", "cost $", "share"],
                [[g.name, f"{g.calls:,}", f"{g.prompt_tokens:,}", f"{g.completion_tokens:,}", _money(g.cost_usd),
                  f"{100 * g.share:.0f}%" if g.share is not None else "-"] for g in groups],
            )  # fmt: skip
    if rep.by_workflow:
        out += ["", "By workflow (cost per run)"]
        out += _grid(
            ["workflow", "runs", "total $", "avg $", "min $", "max $", "most expensive agent"],
            [[w.workflow, f"{w.runs.runs:,}", _money(w.runs.total_usd), _money(w.runs.avg_usd),
              _money(w.runs.min_usd), _money(w.runs.max_usd), w.most_expensive_agent or "-"]
             for w in rep.by_workflow],
        )  # fmt: skip
    for label, runs in (("All runs", rep.runs), ("Runs that called tools", rep.tool_runs)):
        if runs is not None:
            out.append(
                f"{label}: {runs.runs:,}, ${_money(runs.avg_usd)} per run on average (min ${_money(runs.min_usd)}, "
                f"max ${_money(runs.max_usd)}), {runs.avg_tokens:,.0f} tokens per run"
            )
    if not t.calls:
        out.append("No LLM calls in this window.")
    return "\n".join(out)


def cost_report(
    url: Annotated[str | None, typer.Option(help="A worker's HTTP server, http://host:port (its last day).")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="The state backend holding the cost history: sqlite:PATH or redis://HOST:PORT/DB."),
    ] = None,
    window: Annotated[str, typer.Option(help="How far back, ending now: 1h, 24h, 7d ...")] = "1h",
    until: Annotated[
        str | None, typer.Option(help="End of the window, ISO 8601 (2025-01-31T12:00:00Z); default now.")
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (agentflow.costs/1).")] = False,
    token_env: Annotated[str, typer.Option(help="Environment variable holding the bearer token.")] = (
        "AGENTFLOW_HTTP_TOKEN"
    ),
    password_env: Annotated[
        str, typer.Option(help="--store redis: the environment variable holding the Redis password.")
    ] = "",
    key_prefix: Annotated[str, typer.Option(help="--store redis: the \\[memory] key_prefix.")] = "agentflow:",
) -> None:
    """LLM cost by provider, model, agent and workflow over a time window: totals, per-run average, min and max,
    share by agent, and the most expensive agent."""
    if (url is None) == (store is None):
        raise typer.BadParameter("give --url http://host:port (a worker) or --store sqlite:PATH|redis://..., one.")
    window_s = option(parse_duration, window, "--window")
    end = time.time()
    if until is not None:
        try:
            end = datetime.datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise typer.BadParameter(f"{until!r} is not an ISO 8601 time.", param_hint="'--until'") from None
    err = Console(stderr=True)
    try:
        if url is not None:
            if until is not None or window_s > WORKER_MAX_S:
                raise typer.BadParameter(
                    "a worker keeps its last day: --url takes a --window up to 24h ending now; use --store for "
                    "older history.",
                    param_hint="'--window'",
                )
            data = asyncio.run(fetch(url, "/v1/costs", token_env, window_s=str(window_s)))
            rep = msgspec.convert(data, CostReport)
        else:
            assert store is not None
            config = store_config(store, password_env, key_prefix)
            rep = asyncio.run(_from_store(config, end - window_s, end, store.split("@")[-1]))
    except (SourceError, StateError, ValueError) as exc:
        err.print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=1) from None
    if json:
        typer.echo(msgspec.json.format(msgspec.json.encode(rep), indent=2).decode())
    else:
        typer.echo(render_text(rep))
