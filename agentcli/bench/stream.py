"""``agentcli benchmark --scenario stream``: streamed chat answers through ``ctx.llm.stream``, and the items of a
streaming tool through ``ctx.tools.stream``.

* Chat: each side is a closed loop of ``--concurrent-users`` streamed answers of ``TOKENS`` tokens from the
  in-process mock LLM (zero latency, so the figures are the readers' own cost). ``agentflow``: ``ctx.llm.stream``
  (an agent's ``ctx.llm``), counting the text deltas; with ``--compare-raw``, ``raw``: a bare aiohttp SSE reader
  (one pooled session, the body read as it arrives, split into events, each decoded by a minimal msgspec Struct).
  Tokens per second are each run's ``items_per_s``; the ratio ``raw`` is agentflow ÷ bare tokens/s. Time to the
  first token is measured apart, each round, by ``TTFT_ANSWERS`` answers one at a time on each side from a second
  mock that sends its tokens one by one as a model does (``per_token_ms`` 0.1): the zero-latency mock writes a
  whole answer before either reader sees its first byte, so its TTFT is the server's. ``ttft_added_ms`` is
  agentflow's p50 minus the bare reader's, median of rounds.
* Streaming tool: an async-generator tool yields ``TOOL_ITEMS`` items, each stamped with the time it was made,
  as fast as it can; ``ctx.tools.stream(..., batch_size=100, batch_timeout_s=0.05)`` hands them over in lists.
  Items per second, and the delivery latency of each item (made → handed to the agent), of the median round.
"""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table

from agentflow import Config, LatencyHistogram, Runner, ToolBox, ToolRegistry, config_from_dict, tool
from agentflow.llm.mock import (
    LatencyModel,
    MockLLMServer,
)  # public as agentflow.MockLLMServer, but lazily: untyped there

from .measure import Limits
from .report import Measurement, by_throughput, effective_config, latency_ms, median_run, order_of, round_sides
from .schema import LatencyMs, Report, Run, StreamDetails
from .tools import closed_run

__all__ = ["StreamBenchSpec", "planned_stream_ratios", "render_stream", "run_stream_benchmark"]

MODEL = "mock"
TOKENS = 256
MSG = [{"role": "user", "content": "Tell me a long story."}]
TTFT_ANSWERS = 300
TTFT_TOKENS = 16
TTFT_PER_TOKEN_MS = 0.1
TOOL_ITEMS = 200_000
TOOL_BATCH = 100
TOOL_BATCH_TIMEOUT_S = 0.05
LABELS = {"agentflow": "agentflow, ctx.llm.stream", "raw": "bare aiohttp SSE reader"}


@dataclass(frozen=True, slots=True)
class StreamBenchSpec:
    limits: Limits
    users: int
    compare_raw: bool
    repeat: int = 1

    def sides(self) -> list[str]:
        return ["raw", "agentflow"] if self.compare_raw else ["agentflow"]


def planned_stream_ratios(spec: StreamBenchSpec) -> set[str]:
    return {"raw"} if spec.compare_raw else set()


def _config(spec: StreamBenchSpec, url: str, paced: str) -> Config:
    def provider(base: str) -> dict[str, Any]:
        return {"base_url": base, "default_model": MODEL, "max_connections": spec.users, "cache": {"enabled": False}}

    return config_from_dict({"llm": {"bench": provider(url), "paced": provider(paced)}, "retry": {"max_attempts": 1}})


class _Counted:
    """Tokens received across one run's answers; then, :meth:`timing` on, each answer's time to its first token."""

    def __init__(self) -> None:
        self.tokens = 0
        self.ttft = LatencyHistogram()
        self.timed = False

    def record(self, ttft_s: float) -> None:
        if self.timed:
            self.ttft.record(ttft_s)

    def timing(self) -> _Counted:
        """Start the time-to-first-token phase; return a copy of the counts so far (the throughput run's)."""
        before = _Counted()
        before.tokens = self.tokens
        self.timed = True
        return before


def _with_tokens(run: Run, counted: _Counted) -> Run:
    return msgspec.structs.replace(run, items_per_s=counted.tokens / run.duration_s if run.duration_s else 0.0)


async def _agentflow(spec: StreamBenchSpec, round_: int, url: str, paced: str) -> tuple[Run, _Counted]:
    runner = Runner(_config(spec, url, paced))
    counted = _Counted()
    async with runner:
        assert runner.llm is not None
        llm = runner.llm.for_agent("stream", None)  # what an agent's ctx.llm is
        provider = "bench"

        async def one() -> None:
            n = 0
            t0 = perf_counter()
            async with llm.stream(MSG, provider=provider) as answer:
                async for delta in answer:
                    if delta.kind == "text":
                        if not n:
                            counted.record(perf_counter() - t0)
                        n += 1
            counted.tokens += n

        run = await closed_run("agentflow", LABELS["agentflow"], round_, one, spec.users, spec.limits)
        first = counted.timing()
        provider = "paced"
        await closed_run("agentflow", "", round_, one, 1, Limits(count=TTFT_ANSWERS))
    return _with_tokens(run, first), counted


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)


_CHUNK = msgspec.json.Decoder(_Chunk).decode
_ENCODE = msgspec.json.Encoder().encode


async def _raw(spec: StreamBenchSpec, round_: int, url: str, paced: str) -> tuple[Run, _Counted]:
    """The bare reader: read the body as it arrives, split it into events, decode each and count its text."""
    counted = _Counted()
    record = counted.record
    body = _ENCODE({"model": MODEL, "messages": MSG, "stream": True, "stream_options": {"include_usage": True}})
    headers = {"Content-Type": "application/json"}
    target = url.rstrip("/") + "/chat/completions"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec.users)) as session:
        post = session.post

        async def one() -> None:
            n = 0
            t0 = perf_counter()
            rest = b""
            async with post(target, data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                async for data in resp.content.iter_any():
                    events = (rest + data).split(b"\n\n")
                    rest = events.pop()
                    for event in events:
                        if not event.startswith(b"data: ") or event == b"data: [DONE]":
                            continue
                        for choice in _CHUNK(event[6:]).choices:
                            if choice.delta.content:
                                if not n:
                                    record(perf_counter() - t0)
                                n += 1
            counted.tokens += n

        run = await closed_run("raw", LABELS["raw"], round_, one, spec.users, spec.limits)
        first = counted.timing()
        target = paced.rstrip("/") + "/chat/completions"
        await closed_run("raw", "", round_, one, 1, Limits(count=TTFT_ANSWERS))
    return _with_tokens(run, first), counted


async def _stream_tool() -> tuple[float, LatencyHistogram]:
    """Items per second through ctx.tools.stream, and each item's delivery latency."""

    @tool
    async def items(n: int) -> AsyncIterator[float]:
        """Yields n timestamps."""
        for _ in range(n):
            yield perf_counter()

    registry = ToolRegistry()
    registry.add(items)
    box = ToolBox(registry)
    hist = LatencyHistogram()
    record_many = hist.record_many
    got = 0
    t0 = perf_counter()
    async for batch in box.stream(
        "items", {"n": TOOL_ITEMS}, batch_size=TOOL_BATCH, batch_timeout_s=TOOL_BATCH_TIMEOUT_S
    ):
        now = perf_counter()
        record_many([now - stamp for stamp in batch])
        got += len(batch)
    elapsed = perf_counter() - t0
    if got != TOOL_ITEMS:
        raise RuntimeError(f"the streaming tool delivered {got} of {TOOL_ITEMS} items.")
    return got / elapsed, hist


def _p50(counted: _Counted) -> float | None:
    return counted.ttft.percentile(50) * 1e3 if counted.ttft.count else None


async def run_stream_benchmark(spec: StreamBenchSpec, options: dict[str, Any]) -> Measurement:
    sides = spec.sides()
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    ttft: dict[str, list[float | None]] = {"agentflow": [], "raw": []}
    added: list[float] = []
    tool_runs: list[tuple[float, LatencyHistogram]] = []
    paced_latency = LatencyModel(per_token_ms=TTFT_PER_TOKEN_MS)
    async with (
        MockLLMServer(reply_tokens=TOKENS) as server,
        MockLLMServer(reply_tokens=TTFT_TOKENS, latency=paced_latency) as paced_server,
    ):
        url, paced = server.url, paced_server.url
        for n in range(1, spec.repeat + 1):
            by: dict[str, tuple[Run, _Counted]] = {}
            for side in round_sides(sides, n):
                by[side] = await (_agentflow if side == "agentflow" else _raw)(spec, n, url, paced)
            runs += [by[side][0] for side in sides]
            for side, (_, counted) in by.items():
                ttft[side].append(_p50(counted))
            ours, raw = by["agentflow"][0], by.get("raw", (None, None))[0]
            if raw is not None and raw.items_per_s and ours.items_per_s is not None:
                ratios.append({"raw": ours.items_per_s / raw.items_per_s})
                a, b = _p50(by["agentflow"][1]), _p50(by["raw"][1])
                if a is not None and b is not None:
                    added.append(a - b)
            else:
                ratios.append({})
            tool_runs.append(await _stream_tool())
    top = median_run(runs, "agentflow", by_throughput)
    assert top is not None
    tool_rate, tool_hist = sorted(tool_runs, key=lambda t: t[0])[(len(tool_runs) - 1) // 2]
    delivery = latency_ms(tool_hist)
    assert delivery is not None
    raw_ttft = ttft["raw"][top.round - 1] if spec.compare_raw else None
    details = StreamDetails(
        server="in-process mock", concurrent_users=spec.users, tokens_per_answer=TOKENS, ttft_answers=TTFT_ANSWERS,
        ttft_per_token_ms=TTFT_PER_TOKEN_MS, ttft_p50_ms=ttft["agentflow"][top.round - 1] or 0.0,
        raw_ttft_p50_ms=raw_ttft, ttft_added_ms=statistics.median(added) if added else None, tool_items=TOOL_ITEMS,
        tool_batch_size=TOOL_BATCH, tool_batch_timeout_ms=TOOL_BATCH_TIMEOUT_S * 1e3, tool_items_per_s=tool_rate,
        tool_delivery_ms=delivery,
    )  # fmt: skip
    return Measurement(
        scenario="stream", mode="closed", bus="memory", runs=runs, round_ratios=ratios, details=details,
        latency_measures="one streamed answer: called -> last token (agentflow: an agent's ctx.llm.stream)",
        config=effective_config(_config(spec, url, paced)), options=options, repeat=spec.repeat,
        order=order_of(sides, spec.repeat), rank=by_throughput,
    )  # fmt: skip


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def render_stream(console: Console, report: Report) -> None:
    d = report.details
    assert isinstance(d, StreamDetails)
    table = Table(title=f"streamed answers of {d.tokens_per_answer} tokens, {d.concurrent_users} concurrent users")
    for col in ("run", "answers", "errors", "answers/s", "tokens/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for side in dict.fromkeys(r.side for r in report.runs):
        r = median_run(report.runs, side, by_throughput)
        assert r is not None
        lat: LatencyMs | None = r.latency_ms
        table.add_row(
            r.label, f"{r.completed:,}", f"{r.errors:,}", f"{r.throughput_per_s:,.0f}", f"{r.items_per_s or 0:,.0f}",
            _ms(lat.p50 if lat else None), _ms(lat.p99 if lat else None),
        )  # fmt: skip
    console.print(table)
    console.print(
        f"time to first token, p50: agentflow {d.ttft_p50_ms:.3f} ms, bare reader {_ms(d.raw_ttft_p50_ms)} ms, "
        f"added {_ms(d.ttft_added_ms)} ms",
        highlight=False,
    )
    t = d.tool_delivery_ms
    console.print(
        f"streaming tool: {d.tool_items:,} items in batches of {d.tool_batch_size}: {d.tool_items_per_s:,.0f} items/s, "
        f"delivery p50 {t.p50:.3f} ms, p95 {t.p95:.3f} ms, p99 {t.p99:.3f} ms",
        highlight=False,
    )
