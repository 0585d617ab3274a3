"""``agentcli profile-report``: where the time and the money go, and what to change — from a running worker
(``--url``) or from a report file (``--from``: a ``agentcli benchmark --json`` or ``agentcli loadtest --json``
report, or a saved profile).

The text table is plain text sized to its content, never cut to the terminal's width, so it reads the same in a
pipe or a file; ``--json`` prints the report (``agentflow.profile/1``), ``--html PATH`` writes a self-contained
page (:mod:`.html`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from ..apps import fail
from ..parse import option, parse_duration
from .html import write_html
from .source import SourceError, profile_from_file, profile_from_url
from .table import render_text

__all__ = ["profile_report"]


def profile_report(
    url: Annotated[str | None, typer.Option(help="A worker's HTTP server, http://host:port.")] = None,
    from_: Annotated[
        Path | None,
        typer.Option("--from", help="A benchmark or loadtest --json report, or a saved profile (report or snapshot)."),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(help="With --url: profile the next DURATION (e.g. 30s) instead of everything since start."),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (agentflow.profile/1).")] = False,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML page to this path.")] = None,
    token_env: Annotated[str, typer.Option(help="Environment variable holding the bearer token.")] = (
        "AGENTFLOW_HTTP_TOKEN"
    ),
) -> None:
    """Where the time and the money go, per agent, provider, tool, MCP server, state store and workflow step;
    SLOW / BOTTLENECK / COSTLY flags with the figure behind each, and what to change."""
    if (url is None) == (from_ is None):
        raise typer.BadParameter("give --url http://host:port (a worker) or --from REPORT.json, one of them.")
    if window is not None and url is None:
        raise typer.BadParameter("--window needs --url: a report file covers its own run.", param_hint="'--window'")
    window_s = None if window is None else option(parse_duration, window, "--window")
    try:
        if url is not None:
            report = asyncio.run(profile_from_url(url, token_env, window_s))
        else:
            assert from_ is not None
            report = profile_from_file(from_)
    except SourceError as exc:
        Console(stderr=True).print(f"[bold red]Error:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(code=1) from None
    if html is not None:
        try:
            write_html(html, report)
        except OSError as exc:
            raise fail(f"cannot write {html}: {exc.strerror}.") from None
    if json:
        typer.echo(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        typer.echo(render_text(report))
    if html is not None:
        typer.echo(f"HTML report written to {html}", err=True)
