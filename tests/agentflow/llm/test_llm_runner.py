"""ctx.llm inside a Runner against the mock server: attribution, cost, token budgets, the fault matrix, and
the LLM metric families (checked against docs/llm.md)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import REPO_ROOT
from prometheus_client.parser import text_string_to_metric_families

from agentflow import Context, Event, LifecycleError, Runner, config_from_dict
from agentflow.testing import Faults, LatencyModel, MockLLM

DOC = REPO_ROOT / "docs" / "llm.md"
MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def server() -> AsyncIterator[MockLLM]:
    async with MockLLM(latency=LatencyModel(seed=3)) as s:
        yield s


def llm_config(server: MockLLM, **over: Any) -> dict[str, Any]:
    provider: dict[str, Any] = {
        "base_url": server.url,
        "default_model": "m",
        "retry": {"initial_backoff_s": 0.0, "jitter_s": 0.0, "max_backoff_s": 0.0},
        "prices": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}},
    }
    provider.update(over)
    return {"mock": provider}


async def test_ctx_llm_attributes_calls_to_agent_and_prices_them(server: MockLLM) -> None:
    runner = Runner(config_from_dict({"llm": llm_config(server)}))

    @runner.agent("questions")
    async def answer(event: Event, ctx: Context) -> str:
        reply = await ctx.llm.chat(MSG, temperature=0.5)
        vec = await ctx.llm.embed(["a", "b"], provider="mock")
        assert len(vec.vectors) == 2
        return reply.text

    async with runner:
        assert (await runner.request("questions", {})).startswith("echo:hello")
        assert runner.llm is not None
        [row] = runner.llm.costs.rows()
        assert (row.provider, row.model, row.agent, row.calls) == ("mock", "m", "answer", 2)
        assert (row.prompt_tokens, row.completion_tokens) == (3 + 2, 16)
        assert row.cost_usd == pytest.approx((5 * 1.0 + 16 * 2.0) / 1e6)
    assert server.stats().connections_open == 0  # the runner closed the pool on shutdown


async def test_ctx_llm_without_a_provider_says_what_to_do() -> None:
    runner = Runner(config_from_dict({"retry": {"max_attempts": 1}}))
    seen: list[BaseException] = []

    @runner.agent("t")
    async def uses_llm(event: Event, ctx: Context) -> None:
        try:
            assert ctx.llm is None  # raises first
        except LifecycleError as exc:
            seen.append(exc)

    async with runner:
        await runner.request("t", {})
    assert "add an [llm.NAME] table" in str(seen[0])


async def test_token_budget_stops_the_workflow(server: MockLLM) -> None:
    # Each call uses 3 + 16 = 19 tokens; a budget of 50 allows three calls in one workflow, then refuses.
    config = {"llm": llm_config(server, token_budget_per_workflow=50), "retry": {"max_attempts": 1}}
    runner = Runner(config_from_dict(config))
    calls: list[int] = []

    @runner.agent("loop")
    async def again(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG)
        calls.append(event.depth)
        await ctx.emit("loop", {}, key=event.key)  # the same workflow, one level deeper

    async with runner:
        await runner.emit("loop", {})
        await runner.emit("loop", {})  # a second workflow has its own budget
        await runner.drain(timeout_s=10)
        letters = await runner.dlq.list(agent="again")
        stats = runner.statistics()
    assert sorted(calls) == [0, 0, 1, 1, 2, 2]
    assert stats.dead_lettered == 2
    assert server.stats().by_endpoint["chat"] == 6
    assert {d.error_type for d in letters} == {"TokenBudgetExceededError"}
    assert "reaching its budget of 50" in letters[0].error


async def test_fault_matrix_every_event_handled_or_dead_lettered(server: MockLLM) -> None:
    """30 % errors (500s, resets, hangs, 429s) and 429 bursts: every event ends handled or in the DLQ."""
    server.set_faults(
        Faults(error_rate=0.15, reset_rate=0.05, hang_rate=0.02, rate_limit_rate=0.08, retry_after_s=0.02)
    )
    provider = llm_config(
        server,
        request_timeout_s=0.2,
        retry={
            "max_attempts": 3,
            "initial_backoff_s": 0.005,
            "jitter_s": 0.005,
            "max_backoff_s": 0.02,
            "deadline_s": 1,
        },
        breaker={"minimum_calls": 10, "window_size": 20, "open_wait_s": 0.05, "max_open_wait_s": 0.2},
    )
    config = {
        "llm": provider,
        "retry": {"max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.1, "jitter_s": 0.01},
        "agents": {"ask": {"timeout_s": 5}},
    }
    runner = Runner(config_from_dict(config))
    handled: set[int] = set()

    @runner.agent("work")
    async def ask(event: Event, ctx: Context) -> None:
        await ctx.llm.chat([{"role": "user", "content": f"event {event.payload}"}])
        handled.add(event.payload)

    n = 300
    async with runner:
        for i in range(n):
            await runner.emit("work", i)
            if i % 100 == 50:
                server.set_faults(
                    Faults(error_rate=0.15, reset_rate=0.05, hang_rate=0.02, burst_429=20, retry_after_s=0.02)
                )
        await runner.drain(timeout_s=90)
        stats = runner.statistics()
        dead = stats.dead_lettered
        dlq_entries = stats.bus.dead_letters
    assert stats.handled == len(handled)
    assert stats.handled + dead == n  # none lost
    assert dlq_entries == dead
    assert stats.handled > n // 2
    faults = server.stats().faults
    assert faults["error"] > 0 and faults["rate_limited"] >= 20 and faults["reset"] > 0


# ---- metrics and their documentation --------------------------------------------------------------------


async def _render(server: MockLLM) -> str:
    runner = Runner(config_from_dict({"llm": llm_config(server)}))

    @runner.agent("t")
    async def calls(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG, temperature=0)
        await ctx.llm.chat(MSG, temperature=0)
        await ctx.llm.chat(MSG, stream=True)

    async with runner:
        await runner.request("t", {})
        return runner.metrics.render().decode()


async def test_llm_metrics_are_rendered_and_documented(server: MockLLM) -> None:
    text = await _render(server)
    families = {f.name: f for f in text_string_to_metric_families(text) if f.name.startswith("agentflow_llm_")}
    doc = DOC.read_text(encoding="utf-8")
    section = doc.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        n: set(re.findall(r"`(\w+)`", labels))
        for n, labels in re.findall(r"^\| `(agentflow_llm_\w+)` \| ([^|]*) \|", section, re.M)
    }
    rendered = {(f.name + "_total" if f.type == "counter" else f.name): f for f in families.values()}
    assert set(rows) == set(rendered), "docs/llm.md's metric table and the rendered LLM families differ"
    for name, fam in rendered.items():
        labels = {k for s in fam.samples for k in s.labels} - {"le"}
        # agentflow_llm_cache_errors_total has series only with a shared cache level (test_llm_shared_cache.py)
        assert rows[name] == labels or not fam.samples, name
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples["agentflow_llm_requests_total", (("model", "m"), ("outcome", "success"), ("provider", "mock"))] == 2
    lookup = (("level", "memory"), ("provider", "mock"), ("result", "hit"))
    assert samples["agentflow_llm_cache_lookups_total", lookup] == 1
    assert samples["agentflow_llm_time_to_first_token_seconds_count", (("model", "m"), ("provider", "mock"))] == 1
    tokens = samples[
        "agentflow_llm_tokens_total", (("agent", "calls"), ("kind", "completion"), ("model", "m"), ("provider", "mock"))
    ]
    assert tokens == 32
