"""Cost reports equal the sum of the cost rows; cost history in a state backend (the runner's own when ``[memory]``
is durable) survives a restart and merges several workers; token-budget warnings come once per workflow, before
the budget stops it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from state_env import StateEnv

from agentflow import (
    Context,
    CostHistory,
    Event,
    LLMPrice,
    Runner,
    StateUnavailableError,
    TokenBudgetExceededError,
    build_cost_report,
    config_from_dict,
)
from agentflow.llm.cost import CostRow, CostTracker
from agentflow.llm.ledger import CostLedger
from agentflow.llm.types import Usage
from agentflow.state import MemoryBackend, Write, WriteResult
from agentflow.testing import LatencyModel, MockLLM

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def server() -> AsyncIterator[MockLLM]:
    async with MockLLM(latency=LatencyModel(seed=3)) as s:
        yield s


def llm(server: MockLLM, **over: Any) -> dict[str, Any]:
    return {
        "mock": {
            "base_url": server.url,
            "default_model": "m",
            "prices": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}},
            "retry": {"initial_backoff_s": 0.0, "jitter_s": 0.0},
            **over,
        }
    }


def spending_runner(server: MockLLM, **config: Any) -> Runner:
    """``plan`` makes two calls and hands over to ``write``, which makes one: each workflow is three calls."""
    runner = Runner(config_from_dict({"llm": llm(server), **config}))

    @runner.agent("orders")
    async def plan(event: Event, ctx: Context) -> None:
        for _ in range(2):
            await ctx.llm.chat(MSG, temperature=0.5)
        await ctx.emit("drafts", event.payload)

    @runner.agent("drafts")
    async def write(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG * (1 + event.payload), temperature=0.5)  # a longer prompt per payload

    return runner


async def test_the_cost_report_equals_the_sum_of_the_cost_rows(server: MockLLM) -> None:
    runner = spending_runner(server)
    async with runner:
        await runner.emit_many("orders", [0, 1, 2, 3])
        await runner.drain(timeout_s=10.0)
        report = runner.insight.costs(time.time() - 60, time.time() + 1)
        assert runner.llm is not None
        rows = runner.llm.costs.rows()
    assert report is not None
    assert report.total.calls == sum(r.calls for r in rows) == 12
    assert report.total.cost_usd == pytest.approx(sum(r.cost_usd for r in rows))
    assert report.total.prompt_tokens == sum(r.prompt_tokens for r in rows)
    by_agent = {g.name: g for g in report.by_agent}
    assert by_agent["plan"].calls == 8 and by_agent["write"].calls == 4
    for row in rows:
        assert by_agent[row.agent].cost_usd == pytest.approx(row.cost_usd)
    assert [g.name for g in report.by_provider] == ["mock"] and [g.name for g in report.by_model] == ["mock/m"]
    assert sum(g.share or 0 for g in report.by_agent) == pytest.approx(1.0)
    assert report.most_expensive_agent == report.by_agent[0].name
    # four runs (one per emitted event, its follow-up included), named after the topic they started on
    assert report.runs is not None and report.runs.runs == 4
    assert report.runs.total_usd == pytest.approx(report.total.cost_usd)
    assert report.runs.min_usd < report.runs.max_usd  # the longer prompts cost more
    [wf] = report.by_workflow
    assert wf.workflow == "orders" and wf.runs.runs == 4 and {g.name for g in wf.by_agent} == {"plan", "write"}
    assert report.tool_runs is None


async def test_cost_history_survives_a_restart_and_merges_workers(server: MockLLM, state: StateEnv) -> None:
    backend = await state.backend()
    totals = []
    for _ in range(2):  # two workers one after the other, both writing the same minutes
        runner = spending_runner(server)
        runner.insight.persist_costs(backend)
        async with runner:
            await runner.emit_many("orders", [0, 1])
            await runner.drain(timeout_s=10.0)
            assert runner.llm is not None
            totals.append(runner.llm.costs.total())
        # closing the runner wrote what was left
    history = CostHistory(backend)
    now = time.time()
    minutes, runs = await history.read(now - 600, now + 60)
    report = build_cost_report(minutes, runs, since=now - 600, until=now + 60, source=state.kind)
    assert report.total.calls == sum(t.calls for t in totals) == 12
    assert report.total.cost_usd == pytest.approx(sum(t.cost_usd for t in totals))
    assert report.runs is not None and report.runs.runs == 4
    assert report.by_workflow[0].workflow == "orders"


async def test_a_runner_with_durable_memory_keeps_its_cost_history_across_restarts(
    server: MockLLM, durable_state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in durable_state.env.items():
        monkeypatch.setenv(name, value)
    memory = msgspec.to_builtins(durable_state.config())
    rows: list[CostRow] = []
    for _ in range(2):  # a worker, restarted: nothing but [memory] tells it to keep its costs
        runner = spending_runner(server, memory=memory)
        async with runner:
            assert runner.insight.history is not None
            assert runner.insight.history.backend is runner.state_store.backend
            await runner.emit_many("orders", [0, 1])
            await runner.drain(timeout_s=10.0)
            assert runner.llm is not None
            rows += runner.llm.costs.rows()
        # its last flush ran on close, before its state store closed
    runner = spending_runner(server, memory=memory)  # a third start reads what both wrote
    async with runner:
        now = time.time()
        minutes, runs = await CostHistory(runner.state_store.backend).read(now - 600, now + 60)
    report = build_cost_report(minutes, runs, since=now - 600, until=now + 60, source=durable_state.kind)
    assert report.total.calls == sum(r.calls for r in rows) == 12
    assert report.total.cost_usd == pytest.approx(sum(r.cost_usd for r in rows))
    assert report.total.prompt_tokens == sum(r.prompt_tokens for r in rows)
    assert report.runs is not None and report.runs.runs == 4


async def test_a_runner_with_memory_state_keeps_no_cost_history(server: MockLLM) -> None:
    runner = spending_runner(server)
    async with runner:
        await runner.emit_many("orders", [0])
        await runner.drain(timeout_s=10.0)
        assert runner.insight.history is None  # nothing would outlive the process
        assert runner.llm is not None and runner.llm.costs.ledger.take_changes() == ({}, {})


class SlowBackend(MemoryBackend):
    """A memory backend whose commits wait until the test lets them through, as a slow database would."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        self.entered.set()
        await self.go.wait()
        return await super()._commit(writes)


async def test_stopping_the_history_lets_a_flush_under_way_finish_and_writes_the_rest() -> None:
    backend = SlowBackend()
    async with backend:
        history = CostHistory(backend)
        ledger = CostLedger()
        ledger.track_changes()
        now = time.time()
        task = asyncio.create_task(history.run(ledger, interval_s=0.01))
        ledger.add("p", "m", "a", "r1", 10, 5, 0.25, now=now)
        await asyncio.wait_for(backend.entered.wait(), 5.0)  # the periodic flush is writing now
        ledger.add("p", "m", "a", "r2", 10, 5, 0.5, now=now)  # after it took the changes: for the last one
        history.stop()
        backend.go.set()
        await asyncio.wait_for(task, 5.0)
        minutes, runs = await history.read(now - 1, now + 1)
    report = build_cost_report(minutes, runs, since=now - 1, until=now + 1, source="t")
    assert report.total.calls == 2 and report.total.cost_usd == pytest.approx(0.75)
    assert history.failures == 0


async def test_two_ledgers_writing_one_minute_are_merged(state: StateEnv) -> None:
    backend = await state.backend()
    now = time.time()
    for agent in ("a", "b"):
        ledger = CostLedger()
        ledger.track_changes()
        ledger.add("p", "m", agent, f"run-{agent}", 10, 5, 0.5, now=now)
        await CostHistory(backend).flush(ledger)
    minutes, runs = await CostHistory(backend).read(now - 1, now + 1)
    report = build_cost_report(minutes, runs, since=now - 1, until=now + 1, source="t")
    assert {g.name: g.cost_usd for g in report.by_agent} == {"a": 0.5, "b": 0.5}
    assert report.runs is not None and report.runs.runs == 2


class FlakyBackend(MemoryBackend):
    """A memory backend whose first ``failures`` commits fail as an unreachable database would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def _commit(self, writes: Sequence[Write]) -> list[WriteResult]:
        if self.failures:
            self.failures -= 1
            raise StateUnavailableError("the database is unreachable")
        return await super()._commit(writes)


async def test_changes_that_could_not_be_written_are_written_by_the_next_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = FlakyBackend(failures=1)
    async with backend:
        history = CostHistory(backend)
        ledger = CostLedger()
        ledger.track_changes()
        now = time.time()
        ledger.add("p", "m", "a", "r1", 10, 5, 0.25, now=now)
        assert await history.flush(ledger) == 0 and history.failures == 1
        assert "Could not write cost history" in caplog.text
        ledger.add("p", "m", "a", "r1", 10, 5, 0.25, now=now)
        assert await history.flush(ledger) == 1
        minutes, runs = await history.read(now - 1, now + 1)
    report = build_cost_report(minutes, runs, since=now - 1, until=now + 1, source="t")
    assert report.total.calls == 2 and report.total.cost_usd == pytest.approx(0.5)
    assert report.runs is not None and report.runs.runs == 1 and report.runs.max_usd == pytest.approx(0.5)


def test_tool_calls_mark_a_run_and_the_ledger_is_bounded() -> None:
    ledger = CostLedger(max_minutes=2, max_runs=3)
    for i in range(5):
        ledger.add("p", "m", "a", f"r{i}", 1, 1, 0.1, now=60.0 * i)
    ledger.tool_called("r4", 2, now=240.0)
    assert [m.minute for m in ledger.minutes(0, 1e9)] == [3, 4]
    runs = ledger.runs(0, 1e9)
    assert [r.run for r in runs] == ["r2", "r3", "r4"]
    report = build_cost_report(ledger.minutes(0, 1e9), runs, since=0, until=1e9, source="t")
    assert report.tool_runs is not None and report.tool_runs.runs == 1


def test_a_runs_record_gives_its_tokens_and_each_steps_usage() -> None:
    # One record per run serves the cost report, the workflow steps' usage and (without budgets) the tokens used.
    tracker = CostTracker()
    tracker.set_prices("p", {"m": LLMPrice(input_usd_per_mtok=1_000_000, output_usd_per_mtok=2_000_000)})
    tracker.record("p", "m", "plan", "wf", Usage(prompt_tokens=3, completion_tokens=1))
    tracker.record("p", "m", "write", "wf", Usage(prompt_tokens=5, completion_tokens=2))
    tracker.record("p", "m", "plan", "wf", Usage(prompt_tokens=1, completion_tokens=1))
    tracker.record("p", "m", "plan", None, Usage(prompt_tokens=100, completion_tokens=100))
    assert tracker.used("wf") == 13 and tracker.used("other") == 0
    assert tracker.step_usage("wf", "plan") == (4, 2, pytest.approx(8.0))
    assert tracker.step_usage("wf", "write") == (5, 2, pytest.approx(9.0))
    assert tracker.step_usage("wf", "nobody") == (0, 0, 0.0)
    [run] = tracker.ledger.runs(0, time.time() + 1)
    assert run.calls == 3 and run.agents == {"plan": pytest.approx(8.0), "write": pytest.approx(9.0)}
    # With a budget, tokens are counted per workflow for it, across providers, as before.
    budgeted = CostTracker()
    budgeted.set_budget("p", 1000, 0.8)
    budgeted.record("p", "m", "plan", "wf", Usage(prompt_tokens=3, completion_tokens=1))
    budgeted.record("q", "m", "plan", "wf", Usage(prompt_tokens=2, completion_tokens=0))
    assert budgeted.used("wf") == 6


def test_a_workflow_passing_the_warning_share_is_warned_once_before_the_budget_stops_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = CostTracker()
    tracker.set_budget("p", 100, 0.8)
    used = Usage(prompt_tokens=30, completion_tokens=0)
    for _ in range(2):
        tracker.record("p", "m", "a", "wf", used)
    assert tracker.budget_warnings == 0  # 60 of 100
    tracker.record("p", "m", "a", "wf", used)  # 90: past 80
    tracker.record("p", "m", "a", "wf", Usage(prompt_tokens=5))  # 95: warned already
    assert tracker.budget_warnings == 1
    [line] = [r.getMessage() for r in caplog.records if "of its budget" in r.getMessage()]
    assert "Workflow 'wf' has used 90 LLM tokens, 90% of its budget of 100" in line
    tracker.record("p", "m", "a", "wf", Usage(prompt_tokens=5))  # 100: the budget stops the next call
    with pytest.raises(TokenBudgetExceededError):
        tracker.check_budget("wf", 100)
    tracker.record("p", "m", "a", "other", Usage(prompt_tokens=85))
    assert tracker.budget_warnings == 2


async def test_budget_warnings_and_deterministic_calls_are_metrics(server: MockLLM) -> None:
    config = {"llm": llm(server, token_budget_per_workflow=50, token_budget_warn_share=0.5, cache={"enabled": False})}
    runner = Runner(config_from_dict(config))

    @runner.agent("q")
    async def ask(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG, temperature=0)  # 19 tokens
        await ctx.llm.chat(MSG, temperature=0)  # 38: past 25, warned

    async with runner:
        await runner.request("q", {})
        text = runner.metrics.render().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("agentflow_llm_budget_warnings_total", ())] == 1.0
    det = ("agentflow_llm_deterministic_calls_total", (("agent", "ask"), ("cache", "off"), ("provider", "mock")))
    assert samples[det] == 2.0


async def test_deterministic_calls_count_cache_hits(server: MockLLM, caplog: pytest.LogCaptureFixture) -> None:
    runner = Runner(config_from_dict({"llm": llm(server)}))
    caplog.set_level(logging.WARNING)

    @runner.agent("q")
    async def ask(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG, temperature=0)
        await ctx.llm.chat(MSG, temperature=0)  # the same prompt: a hit
        await ctx.llm.chat(MSG, temperature=0.7)  # not deterministic: not counted

    async with runner:
        await runner.request("q", {})
        assert runner.llm is not None
        assert runner.llm.llm_metrics.deterministic_calls() == {("mock", "ask"): {"hit": 1, "miss": 1, "off": 0}}


def test_a_minutes_rows_are_the_calls_made_in_it_and_the_open_minute_is_reported_too() -> None:
    # Each call is counted once, in the totals; a minute's rows are what the totals grew by in it.
    ledger = CostLedger()
    ledger.add("p", "m", "a", None, 10, 5, 0.5, now=60.0)
    ledger.add("p", "m", "b", None, 1, 1, 0.25, now=61.0)
    ledger.add("p", "m", "a", None, 20, 5, 1.0, now=125.0)  # minute 2 closes minute 1
    ledger.add("p", "m", "a", None, 7, 0, 0.0, now=119.0)  # a clock step back: counted in the open minute
    got = {m.minute: {(r.agent, r.calls, r.prompt_tokens, r.cost_usd) for r in m.rows} for m in ledger.minutes(0, 1e9)}
    assert got == {1: {("a", 1, 10, 0.5), ("b", 1, 1, 0.25)}, 2: {("a", 2, 27, 1.0)}}
    assert [m.minute for m in ledger.minutes(120, 130)] == [2]
    assert {(r.agent, r.calls) for r in ledger.totals.values()} == {("a", 3), ("b", 1)}


def test_a_run_named_before_its_first_call_keeps_the_name_and_each_agents_usage() -> None:
    ledger = CostLedger(max_runs=10)
    ledger.name_run("r1", "orders")
    ledger.name_run("r1", "other")  # the first name stays
    ledger.add("p", "m", "plan", "r1", 3, 1, 0.5, now=10.0)
    ledger.add("p", "m", "write", "r1", 5, 2, 0.25, now=11.0)
    ledger.add("p", "m", "plan", "r1", 1, 1, 0.5, now=12.0)
    ledger.name_run("r1", "checkout", replace=True)
    [run] = ledger.runs(0, 100)
    assert (run.run, run.workflow, run.calls, run.started_at, run.last_at) == ("r1", "checkout", 3, 10.0, 12.0)
    assert run.agents == {"plan": 1.0, "write": 0.25}
    assert ledger.step("r1", "plan") == (4, 2, 1.0) and ledger.step("r1", "write") == (5, 2, 0.25)
    assert ledger.tokens("r1") == 13


def test_one_agent_runs_leave_nothing_for_the_garbage_collector_to_visit() -> None:
    # The ledger keeps thousands of runs for a long time: a one-agent run's record must not be a tracked container.
    import gc

    ledger = CostLedger()
    ledger.add("p", "m", "a", "r1", 3, 1, 0.5, now=10.0)
    rec = ledger._runs["r1"]
    assert not gc.is_tracked(rec) and rec.others is None
