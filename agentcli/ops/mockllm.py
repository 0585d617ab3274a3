"""``agentcli mock-llm``: the OpenAI-compatible mock server (:mod:`agentflow.llm.mock`) as a command.

Its tool calls are scripted by ``[[call NAME {json}]]`` and ``[[loop NAME {json}]]`` in the conversation
(:mod:`agentflow.llm.mock_script`, docs/llm.md).

It serves until SIGINT/SIGTERM, then prints its own counts (the same as ``GET /stats``). Faults can be changed
while it runs with ``POST /admin/faults``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
import typer

from agentflow.llm.mock import DEFAULT_MAX_ITEMS, DEFAULT_MAX_REQUEST_BYTES, Faults, LatencyModel, MockLLMServer

from ..output import console as make_console
from ..parse import option, parse_size
from ..runtime import Interrupted, run_async

__all__ = ["mock_llm"]

_LAT = "Latency model"
_FAULT = "Faults (fractions of requests, 0..1)"


def mock_llm(
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it local.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8089,
    latency_ms: Annotated[float, typer.Option(min=0, help="Base latency per request.", rich_help_panel=_LAT)] = 0.0,
    per_token_ms: Annotated[
        float,
        typer.Option(min=0, help="Added per output token (and the gap between streamed tokens).", rich_help_panel=_LAT),
    ] = 0.0,
    per_item_ms: Annotated[
        float, typer.Option(min=0, help="Added per input of a batched request.", rich_help_panel=_LAT)
    ] = 0.0,
    distribution: Annotated[
        str, typer.Option(help="fixed, uniform, exponential or lognormal factor on the latency.", rich_help_panel=_LAT)
    ] = "fixed",
    seed: Annotated[int | None, typer.Option(help="Seed for latency and fault draws.", rich_help_panel=_LAT)] = None,
    capacity: Annotated[
        int | None, typer.Option(min=1, help="Requests served at once; the rest queue.", rich_help_panel=_LAT)
    ] = None,
    error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Answer --error-status.", rich_help_panel=_FAULT)
    ] = 0.0,
    error_status: Annotated[int, typer.Option(min=400, max=599, rich_help_panel=_FAULT)] = 500,
    rate_limit_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Answer 429 with Retry-After.", rich_help_panel=_FAULT)
    ] = 0.0,
    retry_after_s: Annotated[float, typer.Option(min=0, rich_help_panel=_FAULT)] = 1.0,
    burst_429: Annotated[int, typer.Option(min=0, help="The first N requests get 429.", rich_help_panel=_FAULT)] = 0,
    hang_rate: Annotated[float, typer.Option(min=0, max=1, help="Never answer.", rich_help_panel=_FAULT)] = 0.0,
    reset_rate: Annotated[float, typer.Option(min=0, max=1, help="Drop the connection.", rich_help_panel=_FAULT)] = 0.0,
    slow_rate: Annotated[float, typer.Option(min=0, max=1, help="Add --slow-ms.", rich_help_panel=_FAULT)] = 0.0,
    slow_ms: Annotated[float, typer.Option(min=0, rich_help_panel=_FAULT)] = 1000.0,
    dimensions: Annotated[int, typer.Option(min=1, max=8192, help="Default embedding size.")] = 8,
    reply_tokens: Annotated[int, typer.Option(min=1, help="Tokens in each answer (capped by max_tokens).")] = 16,
    max_request_bytes: Annotated[
        str,
        typer.Option(metavar="SIZE", help="Larger bodies get 413: bytes, or 64KiB, 4MiB, 1MB.", show_default="4MiB"),
    ] = str(DEFAULT_MAX_REQUEST_BYTES),
    max_items: Annotated[int, typer.Option(min=1, help="Inputs per request; more get 400.")] = DEFAULT_MAX_ITEMS,
    api_key_env: Annotated[str | None, typer.Option(help="Require the key held in this environment variable.")] = None,
) -> None:
    """Serve an OpenAI-compatible mock LLM (chat with scripted tool calls, SSE, embeddings, completions) with
    latency and faults."""
    import os

    request_bytes = option(parse_size, max_request_bytes, "--max-request-bytes")
    if request_bytes < 1024:
        raise typer.BadParameter(
            f"{max_request_bytes!r} is under 1KiB; give at least 1KiB (1024 bytes).", param_hint="'--max-request-bytes'"
        )
    if distribution not in ("fixed", "uniform", "exponential", "lognormal"):
        raise typer.BadParameter("use fixed, uniform, exponential or lognormal.", param_hint="'--distribution'")
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise typer.BadParameter(
                f"the environment variable {api_key_env} is not set.", param_hint="'--api-key-env'"
            )
    try:
        faults = Faults(
            error_rate=error_rate,
            error_status=error_status,
            rate_limit_rate=rate_limit_rate,
            retry_after_s=retry_after_s,
            burst_429=burst_429,
            hang_rate=hang_rate,
            reset_rate=reset_rate,
            slow_rate=slow_rate,
            slow_ms=slow_ms,
        ).validate()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--*-rate'") from None
    latency = msgspec.convert(
        {
            "base_ms": latency_ms,
            "per_token_ms": per_token_ms,
            "per_item_ms": per_item_ms,
            "distribution": distribution,
            "seed": seed,
        },
        LatencyModel,
    )
    server = MockLLMServer(
        host=host,
        port=port,
        latency=latency,
        faults=faults,
        capacity=capacity,
        dimensions=dimensions,
        reply_tokens=reply_tokens,
        max_request_bytes=request_bytes,
        max_items=max_items,
        api_key=api_key,
    )
    console = make_console()

    async def serve() -> None:
        async with server:
            console.print(
                f"mock LLM serving on {server.url} (stats: {server.root}/stats); Ctrl-C stops it.", highlight=False
            )
            console.file.flush()  # a script waiting for this line reads a pipe
            await asyncio.Event().wait()

    try:
        run_async(serve())
    except Interrupted:
        pass
    except OSError as exc:
        console.print(f"Cannot listen on {host}:{port}: {exc.strerror or exc}. Pick another --port.", highlight=False)
        raise typer.Exit(code=2) from None
    console.print(msgspec.json.format(msgspec.json.encode(server.stats())).decode(), highlight=False)
