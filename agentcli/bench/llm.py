"""``agentcli benchmark --scenario llm-chat | llm-embed``: agents calling an LLM server through ``ctx.llm``.

The server is the in-process mock (:class:`~agentflow.llm.mock.MockLLMServer`, zero latency, so the figures
are the client's and the server's own cost) unless ``--llm-url`` names an external one. Every side runs a
closed loop of ``--concurrent-users`` against the same server in the same process:

* ``llm-chat``: agentflow = ``runner.request`` → agent → ``ctx.llm.chat``; with ``--compare-raw``, the bare
  aiohttp loop (side ``raw``: one pooled ``ClientSession``, the same users, ``resp.read()`` + msgspec decode),
  the same loop opening one connection per request (``per_request``, ``force_close``, a fifth of the requests),
  and the openai SDK (``sdk``) when it is importable. Ratios: ``raw``, ``pooled_vs_per_request``, ``sdk``.
* ``llm-embed``: agents each embedding one input; ``--batch-size N`` is the micro-batcher's
  ``max_batch_size``. With N > 1 the same load also runs with N = 1 (side ``unbatched``), so items/s
  (ratio ``batched_vs_unbatched``) and the added p50 latency are compared in one invocation.

Every side runs in every round, the order alternating (:func:`~.report.round_sides`). The server's own
``/stats`` counts are read before and after each run and reported beside agentcli's.
"""

from __future__ import annotations

import gc
import importlib.util
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from agentflow import Config, Context, Event, LatencyHistogram, Runner, config_from_dict
from agentflow.llm.mock import MockLLMServer  # public as agentflow.MockLLMServer, but lazily: untyped there

from .measure import STOP, Limits, Tally, Ticker, closed_loop, cpu_seconds
from .report import (
    Measurement,
    by_throughput,
    effective_config,
    hdr_bytes,
    latency_ms,
    median_run,
    order_of,
    round_sides,
)
from .schema import CostLine, LatencyMs, LLMDetails, Report, Run

__all__ = ["LLMBenchSpec", "planned_ratios", "render_llm", "run_llm_benchmark"]

MSG = [{"role": "user", "content": "Summarise the benchmark in one line."}]
TOPIC = "agentcli.llm"
#: Batch-size 1 vs N comparisons wait this long at most to fill a batch.
EMBED_MAX_WAIT_MS = 5.0
FRESH_CONNECTION_SHARE = 5  # the one-connection-per-request run does 1/5 of the requests: it is slow
LABELS = {
    "raw": "raw aiohttp",
    "agentflow": "agentflow",
    "per_request": "raw, one connection per request",
    "sdk": "openai SDK",
    "unbatched": "agentflow, batch size 1",
}


@dataclass(frozen=True, slots=True)
class LLMBenchSpec:
    scenario: str  # "llm-chat" or "llm-embed"
    limits: Limits
    users: int
    compare_raw: bool
    batch_size: int
    dimensions: int
    llm_url: str | None
    model: str
    repeat: int = 1

    def sides(self) -> list[str]:
        if self.scenario == "llm-embed":
            return ["unbatched", "agentflow"] if self.batch_size > 1 else ["agentflow"]
        if not self.compare_raw:
            return ["agentflow"]
        return ["raw", "agentflow", "per_request"] + (["sdk"] if _has_openai() else [])


def _has_openai() -> bool:
    return importlib.util.find_spec("openai") is not None


def planned_ratios(spec: LLMBenchSpec) -> set[str]:
    """The ratios a run of ``spec`` reports (a threshold on another one is a usage error)."""
    sides = set(spec.sides())
    names = {"raw", "pooled_vs_per_request"} if "raw" in sides else set()
    names |= {"sdk"} if "sdk" in sides else set()
    return names | ({"batched_vs_unbatched"} if "unbatched" in sides else set())


class _Server:
    """The LLM server of the run: an --llm-url, or the in-process mock; reads its /stats. It also carries the
    run's progress display, which every side's measurement shows."""

    def __init__(self, spec: LLMBenchSpec, progress: Progress | None = None) -> None:
        self.mock = None if spec.llm_url is not None else MockLLMServer(dimensions=spec.dimensions)
        self.spec = spec
        self.progress = progress
        self.url = ""
        self.root = ""

    async def __aenter__(self) -> _Server:
        if self.mock is not None:
            await self.mock.start()
        self.url = self.spec.llm_url or (self.mock.url if self.mock is not None else "")
        self.root = self.url[: -len("/v1")] if self.url.rstrip("/").endswith("/v1") else self.url.rstrip("/")
        self.http = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        if self.mock is not None:
            await self.mock.aclose()

    async def stats(self) -> dict[str, Any] | None:
        if self.mock is not None:
            result: dict[str, Any] = msgspec.to_builtins(self.mock.stats())
            return result
        try:
            async with self.http.get(self.root + "/stats", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status != 200:
                    return None
                data = msgspec.json.decode(await resp.read())
                return data if isinstance(data, dict) else None
        except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
            return None


async def _measure(
    side: str, round_: int, request: Callable[[], Awaitable[int]], users: int, limits: Limits, server: _Server
) -> Run:
    """Closed loop of ``users``; ``request()`` returns the items it carried."""
    items = 0

    async def counted() -> None:
        nonlocal items
        n = await request()  # read the total only after the await: users run concurrently
        items += n

    before = await server.stats()
    tally = Tally()
    gc.collect()
    label = f"{server.spec.scenario} {LABELS[side]}" + (
        f" {round_}/{server.spec.repeat}" if server.spec.repeat > 1 else ""
    )
    async with Ticker(server.progress, label, limits, tally.finished):
        cpu0, t0 = cpu_seconds(), perf_counter()
        hist: LatencyHistogram = await closed_loop(counted, users, limits, (Exception,), tally)
        duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
    after = await server.stats()

    def delta(key: str) -> int | None:
        return int(after.get(key, 0)) - int(before.get(key, 0)) if before is not None and after is not None else None

    return Run(
        side=side, label=LABELS[side], round=round_, completed=tally.completed, errors=tally.errors,
        duration_s=duration, throughput_per_s=tally.finished() / duration if duration else 0.0,
        latency_ms=latency_ms(hist), cpu_s=cpu, items_per_s=items / duration if duration else 0.0,
        server_requests=delta("requests"), server_items=delta("items"), hdr=hdr_bytes(hist),
    )  # fmt: skip


def _config(spec: LLMBenchSpec, url: str, batch_size: int) -> Config:
    provider: dict[str, Any] = {
        "base_url": url,
        "default_model": spec.model,
        "max_connections": spec.users,
        "cache": {"enabled": False},  # every request must reach the server to be a fair comparison
        "batching": {"max_batch_size": batch_size, "max_wait_ms": EMBED_MAX_WAIT_MS},
    }
    return config_from_dict(
        {"llm": {"bench": provider}, "runner": {"worker_pool_size": max(64, spec.users)}, "retry": {"max_attempts": 1}}
    )


def _runner(spec: LLMBenchSpec, config: Config) -> Runner:
    runner = Runner(config)
    if spec.scenario == "llm-chat":

        @runner.agent(TOPIC, name="chat")
        async def chat(event: Event, ctx: Context) -> None:
            await ctx.llm.chat(MSG)

    else:
        dims = spec.dimensions

        @runner.agent(TOPIC, name="embed")
        async def embed(event: Event, ctx: Context) -> None:
            await ctx.llm.embed(event.payload, dimensions=dims)

    return runner


async def _agentflow(spec: LLMBenchSpec, side: str, round_: int, server: _Server) -> tuple[Run, list[CostLine]]:
    batch = spec.batch_size if side == "agentflow" and spec.scenario == "llm-embed" else 1
    runner = _runner(spec, _config(spec, server.url, batch))
    counter = iter(range(1 << 62))

    async def one() -> int:
        # Distinct texts: equal inputs would be cache-able work, and the cache is off to keep this honest.
        await runner.request(TOPIC, f"item {next(counter)}")
        return 1

    async with runner:
        result = await _measure(side, round_, one, spec.users, spec.limits, server)
        assert runner.llm is not None
        cost = [CostLine(**msgspec.structs.asdict(r)) for r in runner.llm.costs.rows()]
    return result, cost


async def _raw_chat(spec: LLMBenchSpec, side: str, round_: int, server: _Server) -> Run:
    pooled = side == "raw"
    body = msgspec.json.encode({"model": spec.model, "messages": MSG})
    headers = {"Content-Type": "application/json"}
    decode = msgspec.json.Decoder().decode
    connector = aiohttp.TCPConnector(limit=spec.users, force_close=not pooled)
    async with aiohttp.ClientSession(connector=connector) as session:
        post = session.post
        target = server.url.rstrip("/") + "/chat/completions"

        async def one() -> int:
            async with post(target, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                decode(data)
            return 1

        limits = spec.limits if pooled else _fewer(spec.limits)
        return await _measure(side, round_, one, spec.users, limits, server)


async def _openai_chat(spec: LLMBenchSpec, round_: int, server: _Server) -> Run:
    import openai  # type: ignore[import-not-found,unused-ignore]  # optional, not a dependency

    client = openai.AsyncOpenAI(base_url=server.url, api_key="benchmark", max_retries=0)
    try:

        async def one() -> int:
            await client.chat.completions.create(model=spec.model, messages=MSG)  # type: ignore[arg-type,unused-ignore]
            return 1

        return await _measure("sdk", round_, one, spec.users, spec.limits, server)
    finally:
        await client.close()


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _round_ratios(by: dict[str, Run]) -> dict[str, float]:
    ours = by["agentflow"]
    pairs = {
        "raw": (ours, by.get("raw")),
        "pooled_vs_per_request": (by.get("raw"), by.get("per_request")),
        "sdk": (ours, by.get("sdk")),
        "batched_vs_unbatched": (ours, by.get("unbatched")),
    }
    out: dict[str, float] = {}
    for name, (a, b) in pairs.items():
        if a is None or b is None:
            continue
        # Batching is about inputs per second: a batched request carries many.
        value = (
            _ratio(a.items_per_s, b.items_per_s)
            if name == "batched_vs_unbatched"
            else _ratio(a.throughput_per_s, b.throughput_per_s)
        )
        if value is not None:
            out[name] = value
    return out


async def _one_side(spec: LLMBenchSpec, side: str, n: int, server: _Server, costs: dict[int, list[CostLine]]) -> Run:
    if side in ("agentflow", "unbatched"):
        run, cost = await _agentflow(spec, side, n, server)
        if side == "agentflow":
            costs[n] = cost
        return run
    if side == "sdk":
        return await _openai_chat(spec, n, server)
    return await _raw_chat(spec, side, n, server)


def _added_p50(runs: list[Run]) -> float | None:
    """Median over rounds of p50 batched - p50 unbatched (ms)."""
    added = []
    for ours in (r for r in runs if r.side == "agentflow"):
        single = next((r for r in runs if r.side == "unbatched" and r.round == ours.round), None)
        if single is not None and single.latency_ms is not None and ours.latency_ms is not None:
            added.append(ours.latency_ms.p50 - single.latency_ms.p50)
    return sorted(added)[(len(added) - 1) // 2] if added else None


async def run_llm_benchmark(
    spec: LLMBenchSpec, options: dict[str, Any], progress: Progress | None = None
) -> Measurement | None:
    """Every round of every side; None when a Ctrl-C came before the agentflow side ran at all."""
    sides = spec.sides()
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    costs: dict[int, list[CostLine]] = {}
    async with _Server(spec, progress) as server:
        for n in range(1, spec.repeat + 1):
            by: dict[str, Run] = {}
            for side in round_sides(sides, n):
                if STOP.set:  # after a Ctrl-C the side in progress ends with what it measured; no other starts
                    break
                by[side] = await _one_side(spec, side, n, server, costs)
            runs += [by[side] for side in sides if side in by]
            if "agentflow" in by:
                ratios.append(_round_ratios(by))
            if STOP.set:
                break
        stats = await server.stats() if server.mock is None else None
        url = server.url
    if server.mock is not None:
        stats = msgspec.to_builtins(server.mock.stats())
    top = median_run(runs, "agentflow", by_throughput)
    if top is None:
        return None
    notes = []
    if spec.scenario == "llm-chat" and spec.compare_raw and "sdk" not in sides:
        notes.append("openai SDK not installed: its figure is not shown.")
    details = LLMDetails(
        server=spec.llm_url or "in-process mock", concurrent_users=spec.users, batch_size=spec.batch_size,
        max_wait_ms=EMBED_MAX_WAIT_MS, dimensions=spec.dimensions, added_p50_ms=_added_p50(runs),
        cost=costs.get(top.round, []), server_stats=stats,
    )  # fmt: skip
    return Measurement(
        scenario=spec.scenario, mode="closed", bus="memory", runs=runs, round_ratios=ratios, details=details,
        latency_measures="request round trip: called -> answer decoded (agentflow: runner.request through the agent)",
        config=effective_config(_config(spec, url, spec.batch_size)), options=options,
        repeat=spec.repeat, order=order_of(sides, spec.repeat), rank=by_throughput, notes=notes,
    )  # fmt: skip


def _fewer(limits: Limits) -> Limits:
    if limits.count is not None:
        return Limits(count=max(1, limits.count // FRESH_CONNECTION_SHARE))
    assert limits.duration_s is not None
    return Limits(duration_s=max(0.2, limits.duration_s / FRESH_CONNECTION_SHARE))


def _ms(v: LatencyMs | None, key: str) -> str:
    return "n/a" if v is None else f"{getattr(v, key):.2f}"


def render_llm(console: Console, report: Report) -> None:
    """The median run of each side, and the cost summary of the reported agentflow run."""
    d = report.details
    assert isinstance(d, LLMDetails)
    table = Table(title=f"{report.scenario} against {d.server}, {d.concurrent_users} concurrent users")
    for col in ("run", "requests", "errors", "req/s", "items/s", "p50 ms", "p99 ms", "server requests"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for side in dict.fromkeys(r.side for r in report.runs):
        r = median_run(report.runs, side, by_throughput)
        assert r is not None
        table.add_row(
            r.label, f"{r.completed:,}", f"{r.errors:,}", f"{r.throughput_per_s:,.0f}", f"{r.items_per_s or 0:,.0f}",
            _ms(r.latency_ms, "p50"), _ms(r.latency_ms, "p99"),
            "n/a" if r.server_requests is None else f"{r.server_requests:,}",
        )  # fmt: skip
    console.print(table)
    if d.added_p50_ms is not None:
        console.print(f"added p50 (batched - batch size 1): {d.added_p50_ms:.2f} ms", highlight=False)
    cost = Table(title="LLM cost summary (the reported agentflow run)")
    for col in ("provider", "model", "agent", "calls", "prompt tokens", "completion tokens", "cost USD"):
        cost.add_column(col)
    for c in d.cost:
        cost.add_row(
            c.provider, c.model, c.agent, f"{c.calls:,}", f"{c.prompt_tokens:,}", f"{c.completion_tokens:,}",
            f"{c.cost_usd:.4f}",
        )  # fmt: skip
    console.print(cost)
    if not any(c.cost_usd for c in d.cost):
        console.print(
            "note: no [llm.NAME.prices] for this model, so the cost is 0; tokens are real.",
            markup=False,
            highlight=False,
        )
