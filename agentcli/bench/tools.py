"""``agentcli benchmark --scenario tools``: the agent loop, ``ctx.llm.run``, with 0, 1 and 3 tool calls per run.

Every run is one agent run against the in-process mock LLM (zero latency): the model asks for that many calls of a
no-op tool in its first turn (``[[call noop]]`` directives) and answers once it has their results, so 1 and 3
calls are two model turns and 0 calls one. Each side is a closed loop of ``--concurrent-users``:

* ``agentflow`` (1 call), ``agentflow_0calls``, ``agentflow_3calls``: ``runner.request`` → an agent →
  ``ctx.llm.run(messages, tools=ctx.tools)`` with the no-op tool registered by ``@runner.tool``;
* with ``--compare-raw``, ``raw_0calls``, ``raw_1call``, ``raw_3calls``: the same loop written by hand on bare
  aiohttp — one pooled ``ClientSession``, the same request bodies (tools included), the same msgspec decoding,
  and the tool called directly with ``await``. Ratios ``raw_0calls``, ``raw_1call``, ``raw_3calls``: agentflow
  runs/s ÷ bare runs/s, per round, median reported.

Two micro-measurements run in every round as well (``details``): what ``ctx.tools.call`` adds over a direct
``await`` of the same no-op coroutine function, and what loop detection costs per model turn (one
:meth:`~agentflow.LoopDetector.observe` of a turn with one and with three calls), both in microseconds.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
import msgspec
from rich.console import Console

from agentflow import (
    ChatResponse,
    Config,
    Context,
    Event,
    LatencyHistogram,
    LoopDetector,
    Runner,
    ToolBox,
    ToolCall,
    ToolRegistry,
    config_from_dict,
    tool,
)
from agentflow.llm.mock import MockLLMServer  # public as agentflow.MockLLMServer, but lazily: untyped there

from .measure import Limits, Tally, closed_loop, cpu_seconds
from .report import (
    Measurement,
    by_throughput,
    effective_config,
    latency_ms,
    median_runs_table,
    order_of,
    round_sides,
)
from .schema import Report, Run, ToolsDetails

__all__ = ["WIDTHS", "ToolsBenchSpec", "closed_run", "planned_tools_ratios", "render_tools", "run_tools_benchmark"]

TOPIC = "agentcli.tools"
MODEL = "mock"
#: Tool calls per agent run, and the side names of each width.
WIDTHS = (0, 1, 3)
AGENTFLOW = {0: "agentflow_0calls", 1: "agentflow", 3: "agentflow_3calls"}
RAW = {0: "raw_0calls", 1: "raw_1call", 3: "raw_3calls"}
RATIO = {0: "raw_0calls", 1: "raw_1call", 3: "raw_3calls"}
PROMPTS = {n: "Use the tool. " + " ".join(f'[[call noop {{"i": {i}}}]]' for i in range(n)) for n in WIDTHS}
#: Calls of each micro-measurement per round.
CALLS = 100_000
TURNS = 50_000


@dataclass(frozen=True, slots=True)
class ToolsBenchSpec:
    limits: Limits
    users: int
    compare_raw: bool
    repeat: int = 1

    def sides(self) -> list[str]:
        ours = [AGENTFLOW[n] for n in WIDTHS]
        return [s for n in WIDTHS for s in (RAW[n], AGENTFLOW[n])] if self.compare_raw else ours


def planned_tools_ratios(spec: ToolsBenchSpec) -> set[str]:
    return set(RATIO.values()) if spec.compare_raw else set()


def _label(side: str) -> str:
    for n in WIDTHS:
        calls = f"{n} tool call{'s' if n != 1 else ''} per run"
        if side == AGENTFLOW[n]:
            return f"agentflow, ctx.llm.run, {calls}"
        if side == RAW[n]:
            return f"bare aiohttp loop, {calls}"
    return side


async def closed_run(
    side: str, label: str, round_: int, request: Callable[[], Awaitable[Any]], users: int, limits: Limits
) -> Run:
    """One closed-loop run of ``users`` awaiting ``request()``: a :class:`Run` of the report."""
    tally = Tally()
    gc.collect()
    cpu0, t0 = cpu_seconds(), perf_counter()
    hist: LatencyHistogram = await closed_loop(request, users, limits, (Exception,), tally)
    duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
    return Run(
        side=side, label=label, round=round_, completed=tally.completed, errors=tally.errors, duration_s=duration,
        throughput_per_s=tally.finished() / duration if duration else 0.0, latency_ms=latency_ms(hist), cpu_s=cpu,
    )  # fmt: skip


def _config(spec: ToolsBenchSpec, url: str) -> Config:
    provider = {"base_url": url, "default_model": MODEL, "max_connections": spec.users, "cache": {"enabled": False}}
    return config_from_dict(
        {"llm": {"bench": provider}, "runner": {"worker_pool_size": max(64, spec.users)}, "retry": {"max_attempts": 1}}
    )


async def noop(i: int = 0) -> str:
    """Does nothing; answers ok."""
    return "ok"


async def _agentflow(spec: ToolsBenchSpec, width: int, round_: int, url: str) -> Run:
    runner = Runner(_config(spec, url))
    runner.tool(noop)
    messages = [{"role": "user", "content": PROMPTS[width]}]

    @runner.agent(TOPIC, name="tools", tools=["noop"])
    async def agent(event: Event, ctx: Context) -> None:
        await ctx.llm.run(messages, tools=ctx.tools)

    async def one() -> None:
        await runner.request(TOPIC, None)

    async with runner:
        side = AGENTFLOW[width]
        return await closed_run(side, _label(side), round_, one, spec.users, spec.limits)


_DECODE = msgspec.json.Decoder(ChatResponse).decode
_ARGS = msgspec.json.Decoder(dict[str, Any]).decode
_ENCODE = msgspec.json.Encoder().encode


async def _raw(spec: ToolsBenchSpec, width: int, round_: int, url: str) -> Run:
    """The agent loop by hand: POST, decode, call each tool directly, append, POST again until an answer."""
    registry = ToolRegistry()
    registry.add(tool(noop))
    schemas = registry.select(None).schemas()  # the same tools field agentflow sends
    functions: dict[str, Callable[..., Awaitable[str]]] = {"noop": noop}
    target = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    prompt = PROMPTS[width]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec.users)) as session:
        post = session.post

        async def one() -> None:
            messages: list[Any] = [{"role": "user", "content": prompt}]
            while True:
                body = _ENCODE({"model": MODEL, "messages": messages, "tools": schemas})
                async with post(target, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                message = _DECODE(data).choices[0].message
                if not message.tool_calls:
                    return
                messages.append(message)
                for call in message.tool_calls:
                    fn = call.function
                    result = await functions[fn.name](**_ARGS(fn.arguments))
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})

        side = RAW[width]
        return await closed_run(side, _label(side), round_, one, spec.users, spec.limits)


async def _call_overhead() -> tuple[float, float]:
    """µs per call: a direct ``await`` of the no-op function, and ``ctx.tools.call`` of it as a tool."""
    registry = ToolRegistry()
    registry.add(tool(noop))
    box = ToolBox(registry.select(["noop"]))
    call = box.call
    fn = noop
    await call("noop")  # the tool's timer and runtime are made on the first call
    gc.collect()
    t0 = perf_counter()
    for _ in range(CALLS):
        await fn()
    direct = perf_counter() - t0
    t0 = perf_counter()
    for _ in range(CALLS):
        await call("noop")
    boxed = perf_counter() - t0
    return direct / CALLS * 1e6, boxed / CALLS * 1e6


def _loop_detection(width: int) -> float:
    """µs per model turn of ``width`` calls: one LoopDetector.observe, the arguments changing every turn."""
    turns = [
        [ToolCall.decode(f"c{t}_{i}", "search", _ENCODE({"q": f"query {t}", "page": i}).decode()) for i in range(width)]
        for t in range(256)
    ]
    detector = LoopDetector()
    observe = detector.observe
    gc.collect()
    t0 = perf_counter()
    for k in range(TURNS):
        observe(turns[k & 255])
    return (perf_counter() - t0) / TURNS * 1e6


async def _one_side(spec: ToolsBenchSpec, side: str, round_: int, url: str) -> Run:
    for n in WIDTHS:
        if side == AGENTFLOW[n]:
            return await _agentflow(spec, n, round_, url)
        if side == RAW[n]:
            return await _raw(spec, n, round_, url)
    raise AssertionError(side)


def _round_ratios(by: dict[str, Run]) -> dict[str, float]:
    out: dict[str, float] = {}
    for n in WIDTHS:
        ours, raw = by.get(AGENTFLOW[n]), by.get(RAW[n])
        if ours is not None and raw is not None and raw.throughput_per_s:
            out[RATIO[n]] = ours.throughput_per_s / raw.throughput_per_s
    return out


async def run_tools_benchmark(spec: ToolsBenchSpec, options: dict[str, Any]) -> Measurement:
    sides = spec.sides()
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    micro: dict[str, list[float]] = {"direct": [], "boxed": [], "loop1": [], "loop3": []}
    async with MockLLMServer() as server:
        url = server.url
        for n in range(1, spec.repeat + 1):
            by = {side: await _one_side(spec, side, n, url) for side in round_sides(sides, n)}
            runs += [by[side] for side in sides]
            ratios.append(_round_ratios(by))
            direct, boxed = await _call_overhead()
            micro["direct"].append(direct)
            micro["boxed"].append(boxed)
            micro["loop1"].append(_loop_detection(1))
            micro["loop3"].append(_loop_detection(3))
        stats: dict[str, Any] = msgspec.to_builtins(server.stats())
    med = {k: statistics.median(v) for k, v in micro.items()}
    details = ToolsDetails(
        server="in-process mock", concurrent_users=spec.users, widths=list(WIDTHS),
        direct_call_us=med["direct"], tools_call_us=med["boxed"], call_overhead_us=med["boxed"] - med["direct"],
        loop_detection_1_us=med["loop1"], loop_detection_3_us=med["loop3"], calls_measured=CALLS,
        turns_measured=TURNS, server_stats=stats,
    )  # fmt: skip
    return Measurement(
        scenario="tools", mode="closed", bus="memory", runs=runs, round_ratios=ratios, details=details,
        latency_measures="one agent run: called -> answer (agentflow: runner.request -> agent -> ctx.llm.run)",
        config=effective_config(_config(spec, url)), options=options, repeat=spec.repeat,
        order=order_of(sides, spec.repeat), rank=by_throughput,
    )  # fmt: skip


def render_tools(console: Console, report: Report) -> None:
    d = report.details
    assert isinstance(d, ToolsDetails)
    console.print(
        median_runs_table(report, f"agent runs against the {d.server}, {d.concurrent_users} concurrent users", "runs")
    )
    console.print(
        f"ctx.tools.call on a no-op tool: {d.tools_call_us:.2f} µs, a direct await: {d.direct_call_us:.2f} µs, "
        f"added: {d.call_overhead_us:.2f} µs per call",
        highlight=False,
    )
    console.print(
        f"loop detection per model turn: {d.loop_detection_1_us:.2f} µs (1 call), {d.loop_detection_3_us:.2f} µs "
        "(3 calls)",
        highlight=False,
    )
