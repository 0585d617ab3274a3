"""Workflow steps in the profile report: one row per step with its runs, duration, tokens and cost, the workflow's
totals naming its slowest and most expensive step, and the step with most of the workflow's time flagged — from
``runner.insight`` and from ``GET /v1/profile``; and the cost report's runs named after their workflow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from agentflow import Context, Event, ProfileReport, Runner, config_from_dict
from agentflow.insight.profile import ProfileRow
from agentflow.testing import MockLLM

TIMEOUT_S = 10.0
RUNS = 12  # at least MIN_CALLS: rows with fewer calls get no flag
STEPS = ["plan", "search.web", "search.papers", "merge", "write"]
PRICES = {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}


@pytest.fixture
async def llm() -> AsyncIterator[MockLLM]:
    async with MockLLM() as server:
        yield server


async def ask(ctx: Context, prompt: str) -> str:
    return (await ctx.llm.chat([{"role": "user", "content": prompt}], temperature=0.5)).text


async def plan(event: Event, ctx: Context) -> str:
    await ask(ctx, "plan")
    return str(event.payload)


async def web(event: Event, ctx: Context) -> str:
    return await ask(ctx, f"web {event.payload}")


async def papers(event: Event, ctx: Context) -> str:
    return await ask(ctx, f"papers {event.payload}")


async def merge(event: Event, ctx: Context) -> str:
    return await ask(ctx, "merge " + "x" * 4000)  # about 1,000 prompt tokens: the most expensive step


async def write(event: Event, ctx: Context) -> str:
    await asyncio.sleep(0.1)  # the slowest step, most of the run's step time
    return await ask(ctx, "write")


def research_runner(llm: MockLLM, **config: Any) -> Runner:
    """plan → web and papers in parallel → merge (a join) → write, each step one LLM call."""
    runner = Runner(config_from_dict({"llm": {"mock": {"base_url": llm.url, "default_model": "m",
                                                        "prices": PRICES}}, **config}))  # fmt: skip
    wf = runner.workflow("research")
    wf.step("plan", plan)
    wf.parallel("search", [web, papers], after="plan")
    wf.join("merge", merge, after="search")
    wf.step("write", write, after="merge")
    return runner


def step_rows(report: ProfileReport) -> dict[str, ProfileRow]:
    return {r.name: r for r in report.rows if r.kind == "step"}


async def test_each_step_is_a_row_and_the_workflow_totals_name_the_slowest_and_most_expensive(
    llm: MockLLM,
) -> None:
    runner = research_runner(llm, monitoring={"metrics_enabled": True, "port": 0})
    async with runner:
        for i in range(RUNS):
            run = await runner.start_workflow("research", f"topic {i}")
            await run.result(timeout_s=TIMEOUT_S)
        report = runner.insight.profile()
        assert runner.llm is not None
        costs = runner.llm.costs.rows()
        spending = runner.insight.costs(time.time() - 600, time.time() + 1)
        assert runner.http_address is not None
        host, port = runner.http_address
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/v1/profile") as resp:
            assert resp.status == 200
            served = msgspec.json.decode(await resp.read(), type=ProfileReport)
    rows = step_rows(report)
    assert list(rows) == STEPS
    for name, row in rows.items():
        assert (row.workflow, row.calls, row.error_rate, row.retry_rate) == ("research", RUNS, 0.0, 0.0), name
        assert row.p95_ms is not None and row.concurrency is not None
        spent = [c for c in costs if c.agent == f"research.{name}"]  # the step's agent's cost rows
        assert row.prompt_tokens == sum(c.prompt_tokens for c in spent) > 0, name
        assert row.completion_tokens == sum(c.completion_tokens for c in spent) > 0, name
        assert row.cost_usd == pytest.approx(sum(c.cost_usd for c in spent)), name
    [wf] = report.workflows
    assert (wf.workflow, wf.steps, wf.calls) == ("research", len(STEPS), len(STEPS) * RUNS)
    assert wf.slowest_step == "write" and wf.slowest_p95_ms == rows["write"].p95_ms
    assert wf.most_expensive_step == "merge"
    assert wf.cost_usd == pytest.approx(sum(c.cost_usd for c in costs))
    write_row = rows["write"]
    assert write_row.share_of_time is not None and write_row.share_of_time > 0.5
    flagged = {f.flag: f for f in write_row.flags}
    assert set(flagged) == {"SLOW", "BOTTLENECK"}  # p95 far above the other steps', and most of the run's time
    assert "of workflow 'research''s step time" in flagged["BOTTLENECK"].figure
    others = {s: [f.flag for f in rows[s].flags] for s in STEPS if s != "write"}
    assert others == {"plan": [], "search.web": [], "search.papers": [], "merge": ["COSTLY"]}
    assert [r for r in report.recommendations if r.kind == "step"] == []  # one run at a time: its slots are free
    # the cost report names the runs after their workflow, not the topic of its first step
    assert spending is not None
    [by_wf] = spending.by_workflow
    assert (by_wf.workflow, by_wf.runs.runs) == ("research", RUNS)
    assert by_wf.most_expensive_agent == "research.merge"
    # the route serves the same rows
    assert {n: (r.calls, r.cost_usd) for n, r in step_rows(served).items()} == {
        n: (r.calls, r.cost_usd) for n, r in rows.items()
    }
    assert served.workflows[0].slowest_step == "write"


async def test_a_steps_failed_attempts_count_as_errors_and_its_retries_as_retries(llm: MockLLM) -> None:
    runner = Runner(config_from_dict({"retry": {"initial_backoff_s": 0.0, "jitter_s": 0.0}}))

    async def flaky(event: Event, ctx: Context) -> str:
        if ctx.attempt == 1:
            raise ValueError("the first attempt fails")
        return "ok"

    runner.workflow("once").step("flaky", flaky)
    async with runner:
        for i in range(3):
            run = await runner.start_workflow("once", i)
            assert await run.result(timeout_s=TIMEOUT_S) == "ok"
        before = runner.insight.snapshot()
        report = runner.insight.profile()
    row = step_rows(report)["flaky"]
    assert (row.calls, row.error_rate, row.retry_rate) == (6, 0.5, 0.5)
    [sample] = [c for c in before.components if c.kind == "step"]
    assert (sample.calls, sample.errors, sample.retries, sample.in_flight) == (6, 3, 3, 0)
