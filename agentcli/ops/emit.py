"""``agentcli emit``: send events to a running worker's HTTP ingest (any bus) or straight to Kafka.

Payloads come from ``--data JSON`` or ``--file events.jsonl`` (one JSON payload per line); every line is parsed
before anything is sent, so a bad line stops the command (exit 2, with its line number) with nothing emitted.
``--count N`` sends N events, cycling through the file's lines. ``--rate`` (``100/s``, ``60/m``, ``10/h``, as
every command reads rates: :mod:`agentcli.parse`) paces events on a fixed schedule (event i is due at
start + i/rate), so pauses are caught up and the rate never drifts; events already due go together in one
request or batch of at most ``--batch``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import msgspec
import typer

from agentflow import AgentflowError, Config, Producer

from ..apps import check_destination, config_or_exit
from ..output import console as make_console
from ..output import error_line
from ..parse import option, parse_rate

__all__ = ["emit", "read_payloads", "schedule"]

MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_RETRY_WAIT_S = 5.0

Send = Callable[[list[Any]], Awaitable[list[str]]]


class EmitFailed(Exception):
    """Sending failed in a way retrying will not fix; the message says why."""


def read_payloads(data: str | None, file: Path | None) -> list[Any]:
    """The payloads of ``--data`` or ``--file``; a bad line raises typer.BadParameter naming its number."""
    if data is not None:
        try:
            return [msgspec.json.decode(data)]
        except msgspec.DecodeError as exc:
            raise typer.BadParameter(f"{data[:60]!r} is not valid JSON ({exc}).", param_hint="'--data'") from None
    assert file is not None
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise typer.BadParameter(f"{file} is over {MAX_FILE_BYTES // 2**20} MiB; split it.", param_hint="'--file'")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}: {exc}.", param_hint="'--file'") from None
    payloads = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            payloads.append(msgspec.json.decode(line))
        except msgspec.DecodeError as exc:
            raise typer.BadParameter(
                f"{file} line {n} is not valid JSON ({exc}); each line must be one JSON payload.",
                param_hint="'--file'",
            ) from None
    if not payloads:
        raise typer.BadParameter(f"{file} holds no events.", param_hint="'--file'")
    return payloads


def schedule(count: int, rate: float | None, start: float, now: float) -> tuple[int, float]:
    """How many events of ``count`` are due by ``now`` (cumulative), and when the next one is due.

    Event ``i`` is due at ``start + i / rate``: the schedule depends only on the start, so a slow send is caught
    up by later sends and the long-run rate stays exact (no drift from summing sleeps).
    """
    if rate is None:
        return count, now
    due = min(count, int((now - start) * rate + 1e-9) + 1)  # the epsilon: now == a due time counts as due
    return due, start + due / rate


async def _pace(payloads: list[Any], count: int, rate: float | None, batch: int, send: Send) -> list[str]:
    ids: list[str] = []
    start = time.perf_counter()
    sent = 0
    while sent < count:
        due, next_at = schedule(count, rate, start, time.perf_counter())
        if due <= sent:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            continue
        n = min(due - sent, batch)
        chunk = [payloads[(sent + i) % len(payloads)] for i in range(n)]
        ids.extend(await send(chunk))
        sent += n
    return ids


def _http_sender(
    session: aiohttp.ClientSession, url: str, topic: str, key: str | None, token: str | None, deadline_s: float
) -> Send:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    endpoint = url.rstrip("/") + "/v1/events"

    async def send(chunk: list[Any]) -> list[str]:
        body = msgspec.json.encode([{"topic": topic, "payload": p, "key": key} for p in chunk])
        give_up = time.monotonic() + deadline_s
        while True:
            try:
                async with session.post(endpoint, data=body, headers=headers) as resp:
                    if resp.status == 202:
                        ids: list[str] = (await resp.json())["ids"]
                        return ids
                    text = await resp.text()
                    try:
                        reason = msgspec.json.decode(text)["error"]
                    except (msgspec.DecodeError, KeyError, TypeError):
                        reason = text[:200]
                    if resp.status not in (429, 503):
                        raise EmitFailed(f"{endpoint} answered {resp.status}: {reason}")
                    wait = min(float(resp.headers.get("Retry-After", "1")), MAX_RETRY_WAIT_S)
            except aiohttp.ClientError as exc:
                reason, wait = f"{type(exc).__name__}: {exc}", 0.5
            if time.monotonic() + wait > give_up:
                raise EmitFailed(f"{endpoint} did not accept the events within {deadline_s:g} s: {reason}")
            await asyncio.sleep(wait)

    return send


async def _emit_http(
    url: str, topic: str, key: str | None, token: str | None, payloads: list[Any], count: int,
    rate: float | None, batch: int, timeout_s: float,
) -> list[str]:  # fmt: skip
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        return await _pace(payloads, count, rate, batch, _http_sender(session, url, topic, key, token, timeout_s))


async def _emit_kafka(
    config: Config, topic: str, key: str | None, payloads: list[Any], count: int, rate: float | None, batch: int
) -> list[str]:
    try:
        async with Producer(config) as producer:

            async def send(chunk: list[Any]) -> list[str]:
                ids: list[str] = await producer.emit_many(topic, chunk, key=key)
                return ids

            return await _pace(payloads, count, rate, batch, send)
    except AgentflowError as exc:
        raise EmitFailed(str(exc)) from None


def emit(
    topic: Annotated[str, typer.Option(help="Topic of every event.")],
    data: Annotated[str | None, typer.Option(metavar="JSON", help="The payload, as JSON.")] = None,
    file: Annotated[Path | None, typer.Option(help="A JSONL file: one JSON payload per line.")] = None,
    key: Annotated[str | None, typer.Option(help="Key of every event (same key: handled in order).")] = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Events to send (cycling through --file).", show_default="1 or the file")
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(metavar="RATE", help="Events per second or minute: 100/s, 60/m.", show_default="flat out"),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Most events per request or producer batch.")] = 100,
    url: Annotated[
        str | None, typer.Option(help="A worker's HTTP server, http://host:port (its ingest; any bus).")
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option(metavar="HOST:PORT", help="Kafka brokers: emit through agentflow.Producer.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="agentflow TOML config (the [kafka] settings).")] = None,
    token_env: Annotated[
        str, typer.Option(help="Environment variable holding the ingest bearer token.")
    ] = "AGENTFLOW_HTTP_TOKEN",
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to keep retrying a refused request.")] = 30.0,
    ids: Annotated[bool, typer.Option(help="Print every event id on stdout.")] = True,
) -> None:
    """Emit events to a worker's HTTP ingest (--url) or to Kafka (--bootstrap); prints ids and a summary."""
    per_s = option(parse_rate, rate, "--rate") if rate is not None else None
    if (data is None) == (file is None):
        raise typer.BadParameter("give --data JSON or --file events.jsonl (one of them).", param_hint="'--data'")
    check_destination(url, bootstrap, config, worker="a worker's ingest")
    if not topic or not topic.isprintable():
        raise typer.BadParameter(f"{topic!r} is not a topic name.", param_hint="'--topic'")
    payloads = read_payloads(data, file)
    n = count or len(payloads)
    err = make_console(stderr=True)
    t0 = time.perf_counter()
    try:
        if url is not None:
            sent = asyncio.run(
                _emit_http(url, topic, key, os.environ.get(token_env) or None, payloads, n, per_s, batch, timeout)
            )
        else:
            cfg = config_or_exit(config)
            cfg = msgspec.structs.replace(
                cfg,
                bus=msgspec.structs.replace(cfg.bus, backend="kafka"),
                kafka=msgspec.structs.replace(cfg.kafka, bootstrap_servers=bootstrap),
            )
            sent = asyncio.run(_emit_kafka(cfg, topic, key, payloads, n, per_s, batch))
    except EmitFailed as exc:
        error_line(str(exc))
        raise typer.Exit(code=1) from None
    except KeyboardInterrupt:
        err.print("Interrupted.")
        raise typer.Exit(code=130) from None
    elapsed = time.perf_counter() - t0
    if ids:
        sys.stdout.write("".join(i + "\n" for i in sent))
        sys.stdout.flush()
    err.print(
        f"emitted {len(sent):,} events to {topic!r} via {url or bootstrap} in {elapsed:.2f} s "
        f"({len(sent) / elapsed if elapsed > 0 else 0:,.0f}/s)",
        highlight=False,
    )
