"""``agentcli benchmark --scenario mcp``: calls of an MCP server's tool through agentflow's session pool, against the
official SDK used by hand.

The server is :mod:`agentcli.bench.mcp_server` (the SDK's ``MCPServer`` with a no-op ``echo`` tool), started by
the benchmark: once over streamable HTTP on 127.0.0.1 for the whole run, and over stdio by each side that needs a
process. Each side is a closed loop of ``--concurrent-users`` calls of ``echo``:

* ``agentflow`` (HTTP) and ``agentflow_stdio``: a Runner with ``[mcp.bench]``, the call made with
  ``ToolBox.call("bench.echo", ...)`` as ``ctx.tools.call`` makes it, through the pool's one session;
* with ``--compare-raw``: ``sdk`` / ``sdk_stdio``, one SDK ``ClientSession`` opened before the run and held open
  (the best one can do by hand); and ``per_call`` / ``per_call_stdio``, a new session per call (transport,
  ``initialize``, the call, close — a new process for stdio), on a fiftieth of the calls (stdio: a 250th) since
  it is slow.
  Both HTTP sides get the same HTTP client settings as agentflow's pool (httpx, connect timeout 20 s, read 300 s).

Ratios (agentflow calls/s ÷ the other side's, per round, median reported): ``sdk``, ``per_call``, ``sdk_stdio``,
``per_call_stdio``. Latency is per call, p50 and p99 in the table.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TextIO, cast

from rich.console import Console

from agentflow import Config, Runner, ToolBox, config_from_dict

from .measure import Limits
from .report import Measurement, by_throughput, effective_config, median_runs_table, order_of, round_sides
from .schema import MCPDetails, Report, Run
from .tools import closed_run

__all__ = ["MCPBenchSpec", "planned_mcp_ratios", "render_mcp", "run_mcp_benchmark"]

SERVER_MODULE = "agentcli.bench.mcp_server"
#: The settings agentflow's pool gives its HTTP client (tools/mcp/_transport.py), given to the SDK sides too.
CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 300.0
#: The new-session-per-call sides make 1/this of the calls: over HTTP a session costs milliseconds, over stdio a
#: process start (a second or more).
PER_CALL_SHARE = {"http": 50, "stdio": 250}
ARGS = {"text": "ping"}
LABELS = {
    "agentflow": "agentflow pool, streamable HTTP",
    "sdk": "SDK ClientSession held open, streamable HTTP",
    "per_call": "SDK, a new session per call, streamable HTTP",
    "agentflow_stdio": "agentflow pool, stdio",
    "sdk_stdio": "SDK ClientSession held open, stdio",
    "per_call_stdio": "SDK, a new session (process) per call, stdio",
}
RATIOS = {
    "sdk": ("agentflow", "sdk"),
    "per_call": ("agentflow", "per_call"),
    "sdk_stdio": ("agentflow_stdio", "sdk_stdio"),
    "per_call_stdio": ("agentflow_stdio", "per_call_stdio"),
}


@dataclass(frozen=True, slots=True)
class MCPBenchSpec:
    limits: Limits
    users: int
    compare_raw: bool
    repeat: int = 1

    def sides(self) -> list[str]:
        if not self.compare_raw:
            return ["agentflow", "agentflow_stdio"]
        return ["sdk", "agentflow", "per_call", "sdk_stdio", "agentflow_stdio", "per_call_stdio"]


def planned_mcp_ratios(spec: MCPBenchSpec) -> set[str]:
    return set(RATIOS) if spec.compare_raw else set()


def _stdio_command() -> list[str]:
    return [sys.executable, "-m", SERVER_MODULE, "stdio"]


class _HTTPServer:
    """The SDK server over streamable HTTP in a process of its own, for the whole benchmark."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> _HTTPServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, "http", "0"], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.__exit__()
            raise RuntimeError(f"the MCP benchmark server did not start (it printed {line!r}).")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/mcp"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def _config(spec: MCPBenchSpec, transport: str, url: str) -> Config:
    server: dict[str, Any] = {"max_in_flight_per_session": max(16, spec.users), "acquire_timeout_s": 30}
    if transport == "http":
        server.update(transport="http", url=url)
    else:
        command = _stdio_command()
        server.update(transport="stdio", command=command[0], args=command[1:])
    return config_from_dict({"mcp": {"bench": server}, "retry": {"max_attempts": 1}})


async def _agentflow(spec: MCPBenchSpec, side: str, round_: int, url: str) -> Run:
    runner = Runner(_config(spec, "stdio" if side.endswith("stdio") else "http", url))
    async with runner:
        call = ToolBox(runner.tools.select(["bench.echo"])).call

        async def one() -> None:
            result = await call("bench.echo", ARGS)
            if result.outcome != "ok":
                raise RuntimeError(result.content)

        return await closed_run(side, LABELS[side], round_, one, spec.users, spec.limits)


@asynccontextmanager
async def _session(transport: str, url: str) -> AsyncIterator[Any]:
    """An initialized SDK ClientSession whose tool list is read (as agentflow's pool reads it once)."""
    import httpx2
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async with AsyncExitStack() as stack:
        if transport == "http":
            client = httpx2.AsyncClient(timeout=httpx2.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S))
            await stack.enter_async_context(client)
            streams = await stack.enter_async_context(streamable_http_client(url, http_client=client))
        else:
            command = _stdio_command()
            params = StdioServerParameters(command=command[0], args=command[1:])
            # The server logs nothing below ERROR; and under a test runner sys.stderr may be no file at all.
            quiet = cast(TextIO, subprocess.DEVNULL)
            streams = await stack.enter_async_context(stdio_client(params, errlog=quiet))
        session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
        await session.initialize()
        await session.list_tools()
        yield session


async def _sdk(spec: MCPBenchSpec, side: str, round_: int, url: str) -> Run:
    transport = "stdio" if side.endswith("stdio") else "http"
    if side.startswith("per_call"):

        async def fresh() -> None:
            async with _session(transport, url) as session:
                result = await session.call_tool("echo", ARGS)
            if result.is_error:
                raise RuntimeError(str(result.content))

        return await closed_run(side, LABELS[side], round_, fresh, spec.users, _fewer(spec.limits, transport))
    async with _session(transport, url) as session:
        call_tool = session.call_tool

        async def one() -> None:
            result = await call_tool("echo", ARGS)
            if result.is_error:
                raise RuntimeError(str(result.content))

        return await closed_run(side, LABELS[side], round_, one, spec.users, spec.limits)


def _fewer(limits: Limits, transport: str) -> Limits:
    if limits.count is not None:
        return Limits(count=max(8, limits.count // PER_CALL_SHARE[transport]))
    assert limits.duration_s is not None
    return Limits(duration_s=max(0.5, limits.duration_s / 5))


def _round_ratios(by: dict[str, Run]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, (a, b) in RATIOS.items():
        ours, other = by.get(a), by.get(b)
        if ours is not None and other is not None and other.throughput_per_s:
            out[name] = ours.throughput_per_s / other.throughput_per_s
    return out


async def run_mcp_benchmark(spec: MCPBenchSpec, options: dict[str, Any]) -> Measurement:
    sides = spec.sides()
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    with _HTTPServer() as server:
        for n in range(1, spec.repeat + 1):
            by: dict[str, Run] = {}
            for side in round_sides(sides, n):
                run: Callable[[MCPBenchSpec, str, int, str], Awaitable[Run]] = (
                    _agentflow if side.startswith("agentflow") else _sdk
                )
                by[side] = await run(spec, side, n, server.url)
            runs += [by[side] for side in sides]
            ratios.append(_round_ratios(by))
        url = server.url
    details = MCPDetails(
        server=f"python -m {SERVER_MODULE} (the SDK's MCPServer, one no-op tool)", transports=["http", "stdio"],
        concurrent_users=spec.users, sessions=1, sdk_version=importlib.metadata.version("mcp"),
        per_call_share=PER_CALL_SHARE["http"], per_call_stdio_share=PER_CALL_SHARE["stdio"],
    )  # fmt: skip
    return Measurement(
        scenario="mcp", mode="closed", bus="memory", runs=runs, round_ratios=ratios, details=details,
        latency_measures="one tool call: called -> result (agentflow: ToolBox.call through the pool)",
        config=effective_config(_config(spec, "http", url)), options=options, repeat=spec.repeat,
        order=order_of(sides, spec.repeat), rank=by_throughput,
    )  # fmt: skip


def render_mcp(console: Console, report: Report) -> None:
    d = report.details
    assert isinstance(d, MCPDetails)
    console.print(
        median_runs_table(
            report, f"MCP tool calls (mcp {d.sdk_version}), {d.concurrent_users} concurrent users", "calls"
        )
    )
