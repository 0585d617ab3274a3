"""``agentcli profile --url ... --seconds 10 --output prof.json``: a CPU profile of a running worker (speedscope
JSON, open it at https://www.speedscope.app), or its heap, asyncio tasks or event-loop lag — from the worker's
``/debug/*`` routes, which ``[monitoring] profiling = true`` turns on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from ..apps import fail
from .source import SourceError, fetch

__all__ = ["profile"]

_PATHS = {"cpu": "/debug/profile", "heap": "/debug/heap", "tasks": "/debug/tasks", "loop": "/debug/loop"}


def profile(
    url: Annotated[str, typer.Option(help="The worker's HTTP server, http://host:port.")],
    kind: Annotated[
        Literal["cpu", "heap", "tasks", "loop"],
        typer.Option(help="cpu (a sampled CPU profile), heap (top allocations), tasks (asyncio tasks), loop (lag)."),
    ] = "cpu",
    seconds: Annotated[float, typer.Option(min=0.1, max=300, help="cpu: how long to sample.")] = 10.0,
    interval_ms: Annotated[float, typer.Option(min=1, max=1000, help="cpu: time between samples.")] = 5.0,
    output: Annotated[
        Path | None, typer.Option(help="Write the JSON here (cpu: a speedscope file); default: print it.")
    ] = None,
    token_env: Annotated[str, typer.Option(help="Environment variable holding the bearer token.")] = (
        "AGENTFLOW_HTTP_TOKEN"
    ),
) -> None:
    """Profile a running worker: CPU (speedscope JSON), heap, asyncio tasks or event-loop lag."""
    params = {"seconds": str(seconds), "interval_ms": str(interval_ms)} if kind == "cpu" else {}
    try:
        data = asyncio.run(fetch(url, _PATHS[kind], token_env, timeout_s=seconds + 60, **params))
    except SourceError as exc:
        Console(stderr=True).print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=1) from None
    body = msgspec.json.format(msgspec.json.encode(data), indent=1)
    if output is None:
        typer.echo(body.decode())
        return
    try:
        output.write_bytes(body)
    except OSError as exc:
        raise fail(f"cannot write {output}: {exc.strerror}.") from None
    cost = data.get("agentflow") if isinstance(data, dict) else None
    if kind == "cpu" and isinstance(cost, dict):
        share = 100 * (cost.get("sampler_cpu_share") or 0)
        taking = (
            f"taking them took {share:.1f}% of the event loop's time"
            if cost.get("clock") == "cpu"
            else f"the sampler thread used {share:.1f}% of a core"
        )
        typer.echo(
            f"CPU profile written to {output}: {cost['samples']:,} samples over {cost['seconds']} s; {taking}. "
            "Open it at https://www.speedscope.app",
            err=True,
        )
    else:
        typer.echo(f"{kind} written to {output}", err=True)
