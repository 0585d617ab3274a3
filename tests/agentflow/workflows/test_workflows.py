"""Workflows in one process: sequence, parallel steps, joins (their parts in the state store, surviving a
restart), results and status (also over HTTP), the checks at start, join timeouts and run deadlines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import pytest

from agentflow import (
    Context,
    Event,
    MemoryBus,
    Runner,
    WorkflowError,
    WorkflowFailedError,
    WorkflowGraphError,
    config_from_dict,
    load_config,
)
from agentflow.testing import LatencyModel, MockLLM

if TYPE_CHECKING:
    from conftest import RunnerFactory

TIMEOUT_S = 10.0
NO_WAIT = {"initial_backoff_s": 0.0, "jitter_s": 0.0}


async def plan(event: Event, ctx: Context) -> dict[str, Any]:
    return {"topic": event.payload["topic"]}


async def web(event: Event, ctx: Context) -> str:
    return f"web on {event.payload['topic']}"


async def papers(event: Event, ctx: Context) -> str:
    return f"papers on {event.payload['topic']}"


async def news(event: Event, ctx: Context) -> str:
    return f"news on {event.payload['topic']}"


async def merge(event: Event, ctx: Context) -> dict[str, Any]:
    return dict(event.payload)


async def write(event: Event, ctx: Context) -> str:
    return " | ".join(event.payload.values())


def research(runner: Runner, **join: Any) -> None:
    wf = runner.workflow("research")
    wf.step("plan", plan)
    wf.parallel("search", [web, papers, news], after="plan")
    wf.join("merge", merge, after="search", **join)
    wf.step("write", write, after="merge")


async def test_callers_waiting_for_one_run_time_out_or_are_cancelled_alone(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    release = asyncio.Event()

    async def slow(event: Event, ctx: Context) -> str:
        await release.wait()
        return "done"

    runner.workflow("w").step("only", slow)
    async with runner:
        run = await runner.start_workflow("w", 1)
        patient = [asyncio.create_task(run.result(timeout_s=TIMEOUT_S)) for _ in range(2)]
        cancelled = asyncio.create_task(run.result(timeout_s=TIMEOUT_S))
        with pytest.raises(TimeoutError, match="did not finish within"):
            await run.result(timeout_s=0.05)  # runs out while the others keep waiting
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert not any(t.done() for t in patient)
        release.set()
        assert await asyncio.gather(*patient) == ["done", "done"]
        assert await run.result(timeout_s=TIMEOUT_S) == "done"  # a caller after the end reads it from the store
        assert "waiting=0" in repr(runner.workflows)


async def test_a_run_goes_through_sequence_parallel_steps_and_a_join(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    research(runner)
    async with runner:
        run = await runner.start_workflow("research", {"topic": "tides"})
        result = await run.result(timeout_s=TIMEOUT_S)
        status = await run.status()
        topics = runner.agent_topics
    assert result == "web on tides | papers on tides | news on tides"  # the join's parts in the parents' order
    assert status is not None and status.state == "done" and status.workflow == "research"
    assert [(s.name, s.state, s.attempts) for s in status.steps] == [
        ("plan", "done", 1), ("search.web", "done", 1), ("search.papers", "done", 1), ("search.news", "done", 1),
        ("merge", "done", 1), ("write", "done", 1),
    ]  # fmt: skip
    assert all(s.duration_s is not None and s.duration_s >= 0 for s in status.steps)
    assert status.duration_s is not None and status.finished_at is not None
    assert topics["research.search.web"] == "wf.research.search.web"


async def test_steps_share_workflow_state_and_the_run_counts_tokens_and_cost() -> None:
    async with MockLLM(latency=LatencyModel(seed=1)) as server:
        provider = {"base_url": server.url, "default_model": "m",
                    "prices": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}}  # fmt: skip
        runner = Runner(config_from_dict({"llm": {"mock": provider}}))

        async def ask(event: Event, ctx: Context) -> str:
            await ctx.workflow_state.update(lambda n: n + 1, default=0)
            return (await ctx.llm.chat([{"role": "user", "content": "hi"}])).text

        async def count(event: Event, ctx: Context) -> Any:
            return await ctx.workflow_state.get()

        wf = runner.workflow("llm")
        wf.parallel("ask", {"a": ask, "b": ask})
        wf.join("count", count, after="ask")
        async with runner:
            run = await runner.start_workflow("llm", None)
            assert await run.result(timeout_s=TIMEOUT_S) == 2
            status = await runner.workflows.status(run.run_id)
    assert status is not None
    by_step = {s.name: s for s in status.steps}
    # One chat call each: 1 prompt token ("hi") and 16 completion tokens.
    assert (by_step["ask.a"].tokens, by_step["ask.b"].tokens, by_step["count"].tokens) == (17, 17, 0)
    assert status.tokens == 34
    assert status.cost_usd == pytest.approx(2 * (1 * 1.0 + 16 * 2.0) / 1e6)


async def test_a_workflow_from_toml_names_handlers_by_import_path_and_by_agent(tmp_path: Path) -> None:
    toml = tmp_path / "wf.toml"
    toml.write_text(
        '[workflows.docs]\nmax_execution_time_s = 30\n'
        '[workflows.docs.steps.plan]\nhandler = "workflow_steps:plan"\n'
        '[workflows.docs.steps.look]\nparallel = ["workflow_steps:web", "workflow_steps:papers"]\nafter = ["plan"]\n'
        '[workflows.docs.steps.merge]\nhandler = "workflow_steps:merge"\nafter = ["look"]\ntimeout_s = 5\n'
        '[workflows.docs.steps.shout]\nagent = "shout"\nafter = ["merge"]\n'
    )  # fmt: skip
    runner = Runner(load_config(toml, env={}))

    @runner.agent("shouting")
    async def shout(event: Event, ctx: Context) -> list[str]:
        return [line.upper() for line in event.payload]

    async with runner:
        run = await runner.start_workflow("docs", {"topic": "ice"})
        assert await run.result(timeout_s=TIMEOUT_S) == ["LOOK.WEB: WEB ON ICE", "LOOK.PAPERS: PAPERS ON ICE"]
        status = await run.status()
    assert status is not None and status.deadline is not None
    assert status.deadline == pytest.approx(status.started_at + 30)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda wf: wf.step("a", plan, after="c").step("b", plan, after="a").step("c", plan, after="b"),
            "Workflow 'w' has a cycle: a → b → c → a; a step cannot (indirectly) come after itself.",
        ),
        (
            lambda wf: wf.step("a", plan, after="a"),
            "Workflow 'w' has a cycle: a → a; a step cannot come after itself.",
        ),
        (
            lambda wf: (
                wf.step("plan", plan)
                .parallel("search", [web, papers], after="plan")
                .join("merge", merge, after="serch")
            ),
            "Workflow 'w': step 'merge' comes after 'serch', which is not a step or group of it; did you mean "
            "'search'? Its steps and groups: plan, search, search.papers, search.web.",
        ),
        (
            lambda wf: wf.step("a", "workflow_steps:not_async"),
            "Handler 'workflow_steps:not_async' must be an async function: async def f(event, ctx).",
        ),
        (
            lambda wf: wf.step("a", "nosuchagent"),
            "Step 'a' of workflow 'w' runs agent 'nosuchagent', which is not registered; did you mean 'nosuch'?",
        ),
    ],
)
async def test_the_graph_is_checked_at_start(make_runner: RunnerFactory, build: Any, message: str) -> None:
    runner = make_runner()

    @runner.agent("x")
    async def nosuch(event: Event, ctx: Context) -> None:
        return None

    build(runner.workflow("w"))
    with pytest.raises(WorkflowGraphError) as info:
        await runner.start()
    assert str(info.value).startswith(message), str(info.value)


def test_names_and_duplicates_are_refused_when_defined(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    wf = runner.workflow("w")
    wf.step("a", plan)
    with pytest.raises(WorkflowGraphError, match="already has a step or group named 'a'"):
        wf.step("a", plan)
    with pytest.raises(WorkflowGraphError, match="'a b' is not a valid name"):
        wf.step("a b", plan)
    with pytest.raises(WorkflowGraphError, match="A workflow named 'w' is already defined"):
        runner.workflow("w")


async def test_starting_an_unknown_workflow_names_the_closest(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    research(runner)
    async with runner:
        with pytest.raises(WorkflowError, match="No workflow named 'reserch' runs here; did you mean 'research'?"):
            await runner.start_workflow("reserch", {})


async def test_a_join_that_times_out_fails_the_run_to_the_dlq_with_its_parts(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 1}})
    release = asyncio.Event()

    async def slow(event: Event, ctx: Context) -> str:
        await release.wait()
        return "too late"

    wf = runner.workflow("w")
    wf.step("plan", plan)
    wf.parallel("search", {"fast": web, "slow": slow}, after="plan")
    wf.join("merge", merge, after="search", timeout_s=0.2)
    async with runner:
        run = await runner.start_workflow("w", {"topic": "t"})
        with pytest.raises(WorkflowFailedError) as info:
            await run.result(timeout_s=TIMEOUT_S)
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)
        status = await run.status()
        [letter] = await runner.dlq.list()
    assert (info.value.step, info.value.reason) == ("merge", "join_timeout")
    assert (letter.reason, letter.agent, letter.error_type) == ("join_timeout", "w.merge", "JoinTimeoutError")
    assert "got 1 of 2 parts within 0.2 s; missing: search.slow" in letter.error
    assert letter.event is not None and letter.event.payload == {"search.fast": "web on t"}
    assert status is not None and status.state == "failed" and status.failed_step == "merge"
    by_step = {s.name: s.state for s in status.steps}
    assert by_step == {"plan": "done", "search.fast": "done", "search.slow": "done", "merge": "failed"}


async def test_a_run_past_its_deadline_fails_before_the_next_step_without_retries(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 3, **NO_WAIT}})
    ran: list[str] = []

    async def slow_plan(event: Event, ctx: Context) -> dict[str, Any]:
        ran.append("plan")
        await asyncio.sleep(0.3)
        return {"topic": "t"}

    async def after(event: Event, ctx: Context) -> str:
        ran.append("after")
        return "never"

    wf = runner.workflow("w", max_execution_time_s=0.1)
    wf.step("plan", slow_plan)
    wf.step("after", after, after="plan")
    async with runner:
        run = await runner.start_workflow("w", None)
        with pytest.raises(WorkflowFailedError) as info:
            await run.result(timeout_s=TIMEOUT_S)
        [letter] = await runner.dlq.list()
    assert ran == ["plan"]
    assert (info.value.step, info.value.reason) == ("after", "deadline_exceeded")
    assert (letter.reason, letter.error_type, letter.attempts) == ("deadline_exceeded", "WorkflowDeadlineError", 1)
    assert "passed its deadline (0.1 s, max_execution_time_s)" in letter.error


async def test_a_failing_step_fails_the_run_and_status_says_why(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 2, **NO_WAIT}})

    async def broken(event: Event, ctx: Context) -> None:
        raise ValueError(f"broken on attempt {ctx.attempt}")

    runner.workflow("w").step("plan", plan).step("broken", broken, after="plan")
    async with runner:
        run = await runner.start_workflow("w", {"topic": "t"})
        with pytest.raises(WorkflowFailedError, match=r"step 'broken' ended in the dead-letter queue \(exhausted"):
            await run.result(timeout_s=TIMEOUT_S)
        status = await run.status()
    assert status is not None and status.state == "failed"
    failed = status.steps[1]
    assert (failed.state, failed.reason, failed.attempts) == ("failed", "exhausted", 2)
    assert failed.error == "ValueError: broken on attempt 2"


async def test_redelivered_parts_are_counted_once_and_only_the_completing_one_reruns_the_join(
    make_runner: RunnerFactory,
) -> None:
    runner = make_runner()
    joined: list[Any] = []
    after: list[str] = []

    async def record(event: Event, ctx: Context) -> Any:
        joined.append(event.payload)
        return event.payload

    async def last(event: Event, ctx: Context) -> None:
        after.append(event.id)

    wf = runner.workflow("w")
    wf.parallel("p", {"a": web, "b": papers})
    wf.join("j", record, after="p")
    wf.step("last", last, after="j")
    headers = {"agentflow-workflow": "w", "agentflow-run": "run-1"}

    def part(step: str, payload: str, eid: str) -> Event:
        return Event(
            topic="wf.w.j", payload=payload, key="run-1", id=eid, headers={**headers, "agentflow-part": step},
            created_at=0.0, correlation_id="run-1",
        )  # fmt: skip

    part_a, part_b = part("p.a", "A", "run-1/0/0"), part("p.b", "B", "run-1/1/0")
    async with runner:
        # As step p.a would send its part, delivered twice (a redelivery after a crash): one part, no join yet.
        for batch in ([part_a, part_a], [part_b], [part_a], [part_b]):
            await runner.bus.publish("wf.w.j", batch)
            await runner.drain(timeout_s=TIMEOUT_S)
            if batch == [part_a, part_a]:
                assert joined == []
    # b completed the join: it runs then, and again only when b itself is redelivered, emitting the same ids.
    assert joined == [{"p.a": "A", "p.b": "B"}] * 2
    assert after == ["run-1/1/0/0"] * 2


async def test_a_join_keeps_its_parts_across_a_restart(tmp_path: Path) -> None:
    # Two runners one after the other on one bus and one SQLite file: a restarted worker.
    bus = MemoryBus(partitions=2)
    await bus.start()
    config = {"memory": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
              "runner": {"shutdown_grace_s": 0.1}}  # fmt: skip
    blocked = asyncio.Event()
    calls: list[str] = []

    def build(hang: bool) -> Runner:
        runner = Runner(config_from_dict(config), bus=bus)

        async def c(event: Event, ctx: Context) -> str:
            calls.append("c")
            if hang:
                blocked.set()
                await asyncio.Event().wait()  # cancelled by the shutdown: its event goes back to the bus
            return "C"

        async def joined(event: Event, ctx: Context) -> Any:
            return event.payload

        wf = runner.workflow("w")
        wf.parallel("p", {"a": web, "b": papers, "c": c})
        wf.join("j", joined, after="p")
        return runner

    try:
        first = build(hang=True)
        async with first:
            run = await first.start_workflow("w", {"topic": "t"})
            await asyncio.wait_for(blocked.wait(), TIMEOUT_S)
            await first.state_store.flush()
        second = build(hang=False)
        async with second:
            result = await second.workflows.result(run.run_id, "w", TIMEOUT_S)
    finally:
        await bus.aclose()
    assert result == {"p.a": "web on t", "p.b": "papers on t", "p.c": "C"}
    assert calls == ["c", "c"], "a and b ran once, before the restart; their parts came from the file"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


async def test_get_v1_workflows_run_id_answers_the_status_behind_the_token(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTFLOW_HTTP_TOKEN", "t0ken")
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True}})
    research(runner)
    async with runner:
        run = await runner.start_workflow("research", {"topic": "tides"})
        await run.result(timeout_s=TIMEOUT_S)
        assert runner.http_address is not None
        url = "http://{}:{}/v1/workflows/".format(*runner.http_address)
        auth = {"Authorization": "Bearer t0ken"}
        async with http.get(url + run.run_id, headers=auth) as resp:
            ok = (resp.status, msgspec.json.decode(await resp.read()))
        async with http.get(url + run.run_id) as resp:
            denied = resp.status
        async with http.get(url + "no-such-run", headers=auth) as resp:
            missing = (resp.status, (await resp.json())["error"])
    assert ok[0] == 200
    assert (ok[1]["run_id"], ok[1]["state"], len(ok[1]["steps"])) == (run.run_id, "done", 6)
    assert denied == 401
    assert missing == (
        404,
        "No workflow run 'no-such-run' is known: it was never started, or its records have expired.",
    )


async def test_replaying_a_failed_steps_dead_letter_lets_the_run_finish(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 1}})
    broken = True

    async def flaky(event: Event, ctx: Context) -> str:
        if broken:
            raise ValueError("the upstream is down")
        return "recovered"

    runner.workflow("w").step("plan", plan).step("flaky", flaky, after="plan")
    async with runner:
        run = await runner.start_workflow("w", {"topic": "t"})
        with pytest.raises(WorkflowFailedError):
            await run.result(timeout_s=TIMEOUT_S)
        broken = False
        assert await runner.dlq.replay() == 1
        assert await run.result(timeout_s=TIMEOUT_S) == "recovered"
        status = await run.status()
    # The replay took the run out of failure: it finished, and its status no longer names a failed step.
    assert status is not None and status.state == "done" and status.failed_step is None
    assert status.steps[1].state == "done"
