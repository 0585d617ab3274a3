"""``agentcli benchmark --scenario llm-chat | llm-embed``: agents calling an LLM server through ``ctx.llm``.

The server is the in-process mock (:class:`~agentflow.llm.mock.MockLLMServer`, zero latency, so the figures
are the client's and the server's own cost) unless ``--llm-url`` names an external one. Every side runs a
closed loop of ``--concurrent-users`` against the same server in the same process:

* ``llm-chat``: agentflow = ``runner.request`` → agent → ``ctx.llm.chat``; with ``--compare-raw``, the bare
  aiohttp loop (one pooled ``ClientSession``, the same users, ``resp.read()`` + msgspec decode), the same
  loop opening one connection per request (``force_close``), and the openai SDK when it is importable.
* ``llm-embed``: agents each embedding one input; ``--batch-size N`` is the micro-batcher's
  ``max_batch_size``. With N > 1 the same load first runs with N = 1, so items/s and the added p50 latency
  are compared in one invocation.

The server's own ``/stats`` counts are read before and after each run and reported beside agentcli's.
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
from rich.table import Table

from agentflow import Context, Event, Runner, config_from_dict
from agentflow.llm.mock import MockLLMServer

from .measure import LatencyHistogram, Limits, Tally, closed_loop

__all__ = ["LLMBenchReport", "LLMBenchSpec", "render_llm", "run_llm_benchmark"]

MSG = [{"role": "user", "content": "Summarise the benchmark in one line."}]
TOPIC = "agentcli.llm"
#: Batch-size 1 vs N comparisons wait this long at most to fill a batch.
EMBED_MAX_WAIT_MS = 5.0
FRESH_CONNECTION_SHARE = 5  # the one-connection-per-request run does 1/5 of the requests: it is slow


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


class SideResult(msgspec.Struct, kw_only=True):
    label: str
    requests: int
    errors: int
    items: int
    duration_s: float
    requests_per_s: float
    items_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    server_requests: int | None = None
    server_items: int | None = None


class CostLine(msgspec.Struct, kw_only=True):
    provider: str
    model: str
    agent: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class LLMBenchReport(msgspec.Struct, kw_only=True):
    scenario: str
    server: str
    users: int
    batch_size: int
    dimensions: int
    results: list[SideResult]
    ratios: dict[str, float]
    goals: dict[str, bool]
    items_per_s: float
    cost: list[CostLine]
    server_stats: dict[str, Any] | None = None
    notes: list[str] = msgspec.field(default_factory=list)


async def _server_stats(http: aiohttp.ClientSession, root: str) -> dict[str, Any] | None:
    try:
        async with http.get(root + "/stats", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status != 200:
                return None
            data = msgspec.json.decode(await resp.read())
            return data if isinstance(data, dict) else None
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError):
        return None


async def _measure(
    label: str,
    request: Callable[[], Awaitable[int]],
    spec: LLMBenchSpec,
    limits: Limits,
    http: aiohttp.ClientSession,
    root: str,
) -> SideResult:
    """Closed loop of ``spec.users``; ``request()`` returns the items it carried."""
    items = 0

    async def counted() -> None:
        nonlocal items
        n = await request()  # read the total only after the await: users run concurrently
        items += n

    before = await _server_stats(http, root)
    tally = Tally()
    gc.collect()
    t0 = perf_counter()
    hist: LatencyHistogram = await closed_loop(counted, spec.users, limits, (Exception,), tally)
    duration = perf_counter() - t0
    after = await _server_stats(http, root)
    result = SideResult(
        label=label,
        requests=tally.completed,
        errors=tally.errors,
        items=items,
        duration_s=duration,
        requests_per_s=tally.completed / duration if duration else 0.0,
        items_per_s=items / duration if duration else 0.0,
        p50_ms=hist.percentile(50) * 1000 if hist.count else None,
        p99_ms=hist.percentile(99) * 1000 if hist.count else None,
    )
    if before is not None and after is not None:
        result.server_requests = int(after.get("requests", 0)) - int(before.get("requests", 0))
        result.server_items = int(after.get("items", 0)) - int(before.get("items", 0))
    return result


def _runner(spec: LLMBenchSpec, url: str, batch_size: int) -> Runner:
    provider: dict[str, Any] = {
        "base_url": url,
        "default_model": spec.model,
        "max_connections": spec.users,
        "cache": {"enabled": False},  # every request must reach the server to be a fair comparison
        "batching": {"max_batch_size": batch_size, "max_wait_ms": EMBED_MAX_WAIT_MS},
    }
    config = config_from_dict(
        {"llm": {"bench": provider}, "runner": {"worker_pool_size": max(64, spec.users)}, "retry": {"max_attempts": 1}}
    )
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


async def _agentflow(
    spec: LLMBenchSpec, url: str, batch_size: int, label: str, http: aiohttp.ClientSession, root: str
) -> tuple[SideResult, list[CostLine]]:
    runner = _runner(spec, url, batch_size)
    counter = iter(range(1 << 62))

    async def one() -> int:
        # Distinct texts: equal inputs would be cache-able work, and the cache is off to keep this honest.
        await runner.request(TOPIC, f"item {next(counter)}")
        return 1

    async with runner:
        result = await _measure(label, one, spec, spec.limits, http, root)
        assert runner.llm is not None
        cost = [CostLine(**msgspec.structs.asdict(r)) for r in runner.llm.costs.rows()]
    return result, cost


async def _raw_chat(
    spec: LLMBenchSpec, url: str, label: str, limits: Limits, http: aiohttp.ClientSession, root: str, *, pooled: bool
) -> SideResult:
    body = msgspec.json.encode({"model": spec.model, "messages": MSG})
    headers = {"Content-Type": "application/json"}
    decode = msgspec.json.Decoder().decode
    connector = aiohttp.TCPConnector(limit=spec.users, force_close=not pooled)
    async with aiohttp.ClientSession(connector=connector) as session:
        post = session.post
        target = url.rstrip("/") + "/chat/completions"

        async def one() -> int:
            async with post(target, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                decode(data)
            return 1

        return await _measure(label, one, spec, limits, http, root)


async def _openai_chat(spec: LLMBenchSpec, url: str, http: aiohttp.ClientSession, root: str) -> SideResult | None:
    if importlib.util.find_spec("openai") is None:
        return None
    import openai  # optional: only to show its figure beside ours; not a dependency

    client = openai.AsyncOpenAI(base_url=url, api_key="benchmark", max_retries=0)
    try:

        async def one() -> int:
            await client.chat.completions.create(model=spec.model, messages=MSG)  # type: ignore[arg-type]
            return 1

        return await _measure("openai SDK", one, spec, spec.limits, http, root)
    finally:
        await client.close()


async def run_llm_benchmark(spec: LLMBenchSpec) -> LLMBenchReport:
    server = None if spec.llm_url is not None else MockLLMServer(dimensions=spec.dimensions)
    if server is not None:
        await server.start()
    url = spec.llm_url or (server.url if server is not None else "")
    root = url[: -len("/v1")] if url.rstrip("/").endswith("/v1") else url.rstrip("/")
    results: list[SideResult] = []
    ratios: dict[str, float] = {}
    goals: dict[str, bool] = {}
    notes: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            if spec.scenario == "llm-chat":
                raws: list[SideResult] = []
                runs: list[SideResult] = []
                for _ in range(spec.repeat):  # alternate, so drift on a shared machine hits both sides alike
                    if spec.compare_raw:
                        raws.append(await _raw_chat(spec, url, "raw aiohttp", spec.limits, http, root, pooled=True))
                    ours, cost = await _agentflow(spec, url, 1, "agentflow", http, root)
                    runs.append(ours)
                ours = _best(runs)
                if spec.compare_raw:
                    raw = _best(raws)
                    results.append(raw)
                results.append(ours)
                if spec.compare_raw:
                    ratios["agentflow/raw"] = ours.requests_per_s / raw.requests_per_s if raw.requests_per_s else 0.0
                    goals["agentflow >= 0.7x raw aiohttp"] = ratios["agentflow/raw"] >= 0.7
                    few = _fewer(spec.limits)
                    fresh = await _raw_chat(spec, url, "raw, one connection per request", few, http, root, pooled=False)
                    results.append(fresh)
                    if fresh.requests_per_s:
                        ratios["pooled/one connection per request"] = raw.requests_per_s / fresh.requests_per_s
                    sdk = await _openai_chat(spec, url, http, root)
                    if sdk is None:
                        notes.append("openai SDK not installed: its figure is not shown.")
                    else:
                        results.append(sdk)
                        if sdk.requests_per_s:
                            ratios["agentflow/openai SDK"] = ours.requests_per_s / sdk.requests_per_s
                            goals["agentflow >= 10x openai SDK"] = ratios["agentflow/openai SDK"] >= 10
            else:
                cost = []
                singles: list[SideResult] = []
                batched: list[SideResult] = []
                for _ in range(spec.repeat):
                    if spec.batch_size > 1:
                        single, _ = await _agentflow(spec, url, 1, "agentflow, batch size 1", http, root)
                        singles.append(single)
                    ours, cost = await _agentflow(
                        spec, url, spec.batch_size, f"agentflow, batch size {spec.batch_size}", http, root
                    )
                    batched.append(ours)
                ours = _best(batched)
                if singles:
                    results.append(_best(singles))
                results.append(ours)
                if spec.batch_size > 1:
                    single = results[0]
                    ratios[f"items/s batch {spec.batch_size} / batch 1"] = (
                        ours.items_per_s / single.items_per_s if single.items_per_s else 0.0
                    )
                    if ours.p50_ms is not None and single.p50_ms is not None:
                        added = ours.p50_ms - single.p50_ms
                        ratios["added p50 ms"] = added
                        goals[f"added p50 <= max_wait_ms ({EMBED_MAX_WAIT_MS:g})"] = added <= EMBED_MAX_WAIT_MS
                    want = 15 if spec.dimensions <= 64 else 2
                    goals[f"items/s >= {want}x batch 1 ({spec.dimensions} dims)"] = (
                        ratios[f"items/s batch {spec.batch_size} / batch 1"] >= want
                    )
            stats = await _server_stats(http, root)
    finally:
        if server is not None:
            await server.aclose()
    if server is not None:
        stats = msgspec.to_builtins(server.stats())
    return LLMBenchReport(
        scenario=spec.scenario,
        server=spec.llm_url or "in-process mock",
        users=spec.users,
        batch_size=spec.batch_size,
        dimensions=spec.dimensions,
        results=results,
        ratios=ratios,
        goals=goals,
        items_per_s=ours.items_per_s,
        cost=cost,
        server_stats=stats,
        notes=notes,
    )


def _best(runs: list[SideResult]) -> SideResult:
    return max(runs, key=lambda r: r.items_per_s)


def _fewer(limits: Limits) -> Limits:
    if limits.count is not None:
        return Limits(count=max(1, limits.count // FRESH_CONNECTION_SHARE))
    assert limits.duration_s is not None
    return Limits(duration_s=max(0.2, limits.duration_s / FRESH_CONNECTION_SHARE))


def render_llm(console: Console, report: LLMBenchReport) -> None:
    table = Table(title=f"{report.scenario} against {report.server}, {report.users} concurrent users")
    for col in ("run", "requests", "errors", "req/s", "items/s", "p50 ms", "p99 ms", "server requests"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in report.results:
        table.add_row(
            r.label,
            f"{r.requests:,}",
            f"{r.errors:,}",
            f"{r.requests_per_s:,.0f}",
            f"{r.items_per_s:,.0f}",
            "n/a" if r.p50_ms is None else f"{r.p50_ms:.2f}",
            "n/a" if r.p99_ms is None else f"{r.p99_ms:.2f}",
            "n/a" if r.server_requests is None else f"{r.server_requests:,}",
        )
    console.print(table)
    for name, value in report.ratios.items():
        console.print(f"{name}: {value:.2f}", highlight=False)
    for name, met in report.goals.items():
        console.print(f"goal: {name}: {'met' if met else 'not met'}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    cost = Table(title="LLM cost summary (agentflow runs)")
    for col in ("provider", "model", "agent", "calls", "prompt tokens", "completion tokens", "cost USD"):
        cost.add_column(col)
    for c in report.cost:
        cost.add_row(
            c.provider,
            c.model,
            c.agent,
            f"{c.calls:,}",
            f"{c.prompt_tokens:,}",
            f"{c.completion_tokens:,}",
            f"{c.cost_usd:.4f}",
        )
    console.print(cost)
    if not any(c.cost_usd for c in report.cost):
        console.print(
            "note: no [llm.NAME.prices] for this model, so the cost is 0; tokens are real.",
            markup=False,
            highlight=False,
        )


def run_llm(spec: LLMBenchSpec) -> LLMBenchReport:
    from .runtime import run_async

    return run_async(run_llm_benchmark(spec))
