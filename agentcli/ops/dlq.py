"""``agentcli dlq list|replay``: the dead-letter queue of either bus.

With ``--url`` they talk to a running worker's HTTP server (``GET /v1/dlq``, ``POST /v1/dlq/replay``) — the only
way to reach a memory bus, which lives inside that worker. With ``--bootstrap`` they read the ``<topic>.dlq``
topics on Kafka directly, through the same :class:`agentflow.DeadLetters` logic a runner uses: a replayed event
goes back to the agent that failed it, at attempt 1, and leaves the queue.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import aiohttp
import msgspec
import typer
from rich.console import Console
from rich.table import Table

from agentflow import AgentflowError, Config, DeadLetters, Runner, create_bus

from ..apps import check_destination, config_or_exit

__all__ = ["dlq_app"]

T = TypeVar("T")

dlq_app = typer.Typer(
    name="dlq", help="List and replay dead letters (memory bus: via a worker's --url; Kafka: --bootstrap).",
    no_args_is_help=True,
)  # fmt: skip

MAX_LIST = 1000

_Url = Annotated[str | None, typer.Option(help="A worker's HTTP server, http://host:port (any bus).")]
_Bootstrap = Annotated[str | None, typer.Option(metavar="HOST:PORT", help="Kafka brokers: read the .dlq topics.")]
_Config = Annotated[Path | None, typer.Option(help="agentflow TOML config (the [kafka] and [dlq] settings).")]
_Topic = Annotated[str | None, typer.Option(help="Only dead letters of this topic.")]
_Agent = Annotated[str | None, typer.Option(help="Only dead letters of this agent.")]
_TokenEnv = Annotated[str, typer.Option(help="Environment variable holding the bearer token.")]


class DlqFailed(Exception):
    """The DLQ could not be read or replayed; the message says why."""


def _kafka_config(config: Path | None, bootstrap: str) -> Config:
    cfg = config_or_exit(config)
    if cfg.bus.backend != "kafka":
        cfg = msgspec.structs.replace(cfg, bus=msgspec.structs.replace(cfg.bus, backend="kafka"))
    return msgspec.structs.replace(cfg, kafka=msgspec.structs.replace(cfg.kafka, bootstrap_servers=bootstrap))


async def _with_kafka_runner(cfg: Config, use: Callable[[Runner], Awaitable[T]]) -> T:
    # A runner without agents: nothing consumes, but runner.dlq reads and replays exactly as a worker's would.
    bus = create_bus(cfg)
    try:
        async with Runner(cfg, bus=bus) as runner:
            return await use(runner)
    except AgentflowError as exc:
        raise DlqFailed(str(exc)) from None
    finally:
        await bus.aclose()


async def _http(method: str, url: str, token_env: str, **kwargs: Any) -> Any:
    token = os.environ.get(token_env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        try:
            async with session.request(method, url, headers=headers, **kwargs) as resp:
                body = await resp.read()
                try:
                    data = msgspec.json.decode(body)
                except msgspec.DecodeError:
                    data = None
                if resp.status != 200:
                    reason = data.get("error") if isinstance(data, dict) else body[:200].decode(errors="replace")
                    raise DlqFailed(f"{url} answered {resp.status}: {reason}")
                return data
        except aiohttp.ClientError as exc:
            raise DlqFailed(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None


def _run(coro: Awaitable[T]) -> T:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except DlqFailed as exc:
        Console(stderr=True).print(f"[bold red]Error:[/] {exc}", highlight=False)
        raise typer.Exit(code=1) from None


@dlq_app.command("list")
def list_(
    url: _Url = None,
    bootstrap: _Bootstrap = None,
    config: _Config = None,
    topic: _Topic = None,
    agent: _Agent = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIST, help="Show at most N dead letters (one page).")] = 100,
    cursor: Annotated[
        str | None, typer.Option(help="Show the page after this one: the cursor the previous page printed.")
    ] = None,
    newest: Annotated[
        bool | None,
        typer.Option(
            "--newest/--oldest", help="Newest or oldest failures first (default: oldest, or the cursor's order)."
        ),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    token_env: _TokenEnv = "AGENTFLOW_HTTP_TOKEN",
) -> None:
    """List dead letters a page at a time: id, event id, topic, agent, reason, attempts and the last error.

    The footer names the --cursor for the next page; with --json the output is the page itself,
    {"dead_letters": [...], "count": n, "next_cursor": "..." or null}, as GET /v1/dlq answers.
    """
    check_destination(url, bootstrap, config)
    order: Literal["oldest", "newest"] | None = None if newest is None else "newest" if newest else "oldest"
    if cursor is not None:
        try:
            DeadLetters.check_cursor(cursor, order)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--cursor'") from None
    page: dict[str, Any]
    if url is not None:
        params = {
            "limit": str(limit),
            **({"topic": topic} if topic else {}),
            **({"agent": agent} if agent else {}),
            **({"cursor": cursor} if cursor else {}),
            **({"order": order} if order else {}),
        }
        page = _run(_http("GET", url.rstrip("/") + "/v1/dlq", token_env, params=params))
    else:
        assert bootstrap is not None

        async def read(runner: Runner) -> dict[str, Any]:
            found = await runner.dlq.page(topic=topic, agent=agent, limit=limit, cursor=cursor, order=order)
            letters = msgspec.to_builtins(found.dead_letters)
            return {"dead_letters": letters, "count": len(letters), "next_cursor": found.next_cursor}

        page = _run(_with_kafka_runner(_kafka_config(config, bootstrap), read))
    if json:
        sys.stdout.write(msgspec.json.encode(page).decode() + "\n")
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=240)  # piped or redirected: 80 columns would truncate ids
    table = Table(title="dead letters")
    for name in ("id", "event id", "topic", "agent", "reason", "attempts", "failed at (UTC)"):
        table.add_column(name, no_wrap=True)  # ids are copied into `dlq replay --id`: never split them
    table.add_column("error")
    for d in page["dead_letters"]:
        at = datetime.datetime.fromtimestamp(d["failed_at"], datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        error = f"{d['error_type']}: {d['error']}"
        table.add_row(
            d["id"], d.get("event_id") or "-", d["topic"], d["agent"] or "-", d["reason"], str(d["attempts"]), at,
            error if len(error) <= 80 else error[:77] + "...",
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(page['dead_letters'])} dead letter(s)", highlight=False)
    if page.get("next_cursor"):
        console.print(f"more: add --cursor {page['next_cursor']}", highlight=False, soft_wrap=True)


@dlq_app.command()
def replay(
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Replay this dead letter: its id from `dlq list`, not the event id (repeatable)."),
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Replay every dead letter (or every one of --topic/--agent).")
    ] = False,
    url: _Url = None,
    bootstrap: _Bootstrap = None,
    config: _Config = None,
    topic: _Topic = None,
    agent: _Agent = None,
    token_env: _TokenEnv = "AGENTFLOW_HTTP_TOKEN",
) -> None:
    """Send dead letters back to the agent that failed them (attempt 1 again) and remove them from the queue."""
    check_destination(url, bootstrap, config)
    if not ids and not all_ and topic is None and agent is None:
        raise typer.BadParameter(
            "say which dead letters to replay: --id ID (repeatable), --topic, --agent, or --all for every one.",
            param_hint="'--id'",
        )
    if ids and all_:
        raise typer.BadParameter("give --id or --all, not both.", param_hint="'--all'")
    if url is not None:
        body = {"ids": ids or None, "topic": topic, "agent": agent}
        n = _run(_http("POST", url.rstrip("/") + "/v1/dlq/replay", token_env, json=body))["replayed"]
    else:
        assert bootstrap is not None

        async def go(runner: Runner) -> int:
            return await runner.dlq.replay(ids or None, topic=topic, agent=agent)

        n = _run(_with_kafka_runner(_kafka_config(config, bootstrap), go))
    Console().print(f"replayed {n} dead letter(s)", highlight=False)
    if ids and n < len(ids):
        Console(stderr=True).print(
            f"{len(ids) - n} of the given ids were not in the queue (or had no decodable event to replay); "
            f"give dead-letter ids (the id column of `agentcli dlq list`), not event ids.",
            highlight=False,
        )
        raise typer.Exit(code=1)
