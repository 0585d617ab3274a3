"""The agent loop, ``ctx.llm.run``, inside a Runner over real HTTP to the mock LLM: tools called and quoted back,
parallel calls under ``max_parallel_tools``, failures that go back to the model, and the limits — loop detection
(to the dead-letter queue as ``tool_loop``), ``max_turns``, the token budget and the run's deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from aiohttp import web
from llm_servers import ScriptedLLM

from agentflow import (
    AgentRun,
    ConfigError,
    Context,
    DeadLetteredError,
    Event,
    LifecycleError,
    Runner,
    ToolCallRecord,
    config_from_dict,
    tool,
)
from agentflow.state import ConversationMemory, StateConfig, StateHandle, StateStore
from agentflow.testing import MockLLM


@pytest.fixture
async def llm() -> AsyncIterator[MockLLM]:
    async with MockLLM() as server:
        yield server


def make_runner(url: str, **extra: Any) -> Runner:
    provider: dict[str, Any] = {"base_url": url, "default_model": "m", "cache": {"enabled": False}}
    provider.update(extra.pop("provider", {}))
    return Runner(config_from_dict({"llm": {"mock": provider}, "retry": {"max_attempts": 1}, **extra}))


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Probe:
    """Counts the tool calls running at once, and the order they started in."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.started: list[int] = []

    async def hold(self, i: int, seconds: float) -> None:
        self.started.append(i)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1


def add_weather(runner: Runner) -> None:
    @runner.tool
    async def get_weather(city: str, days: int = 1) -> dict[str, Any]:
        """The forecast for a city.

        Args:
            city: The city's name.
            days: Days ahead.
        """
        return {"city": city, "days": days, "sky": "clear"}


async def dead_letters(runner: Runner) -> list[Any]:
    return (await runner.dlq.page()).dead_letters


async def test_an_agent_uses_python_tools_through_ctx_llm_run(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    add_weather(runner)

    @runner.agent("questions", tools=["get_weather"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        return await ctx.llm.run(user(event.payload), tools=ctx.tools)

    async with runner:
        run: AgentRun = await runner.request(
            "questions",
            'Weather? [[call get_weather {"city": "Oslo", "days": "2"}]] [[call get_weather {"city": "Rome"}]]',
        )
    # The mock quotes each tool result in its answer: the tools really ran, with converted arguments.
    assert run.text == (
        'tool results: get_weather: {"city":"Oslo","days":2,"sky":"clear"}; '
        'get_weather: {"city":"Rome","days":1,"sky":"clear"}'
    )
    assert run.turns == 2
    assert [(c.turn, c.name, c.arguments, c.outcome) for c in run.tool_calls] == [
        (1, "get_weather", {"city": "Oslo", "days": 2}, "ok"),
        (1, "get_weather", {"city": "Rome", "days": 1}, "ok"),
    ]
    assert all(isinstance(c, ToolCallRecord) and c.duration_s >= 0 for c in run.tool_calls)
    roles = [m["role"] if isinstance(m, dict) else m.role for m in run.messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]
    assert run.usage.total_tokens == run.usage.prompt_tokens + run.usage.completion_tokens > 0
    assert llm.stats().requests == 2


async def test_the_run_is_priced_from_the_providers_price_table(llm: MockLLM) -> None:
    runner = make_runner(llm.url, provider={"prices": {"m": {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}}})
    add_weather(runner)

    @runner.agent("q", tools=["get_*"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        return await ctx.llm.run(user('[[call get_weather {"city": "Oslo"}]]'), tools=ctx.tools)

    async with runner:
        run: AgentRun = await runner.request("q", None)
        assert runner.llm is not None
        [row] = runner.llm.costs.rows()
    expected = (run.usage.prompt_tokens * 1.0 + run.usage.completion_tokens * 2.0) / 1e6
    assert run.cost_usd == pytest.approx(expected) and row.cost_usd == pytest.approx(expected) and expected > 0


async def test_parallel_calls_run_concurrently_under_max_parallel_tools_and_come_back_in_order(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    probe = Probe()

    @runner.tool
    async def wait(i: int) -> int:
        """Sleep a little, then return i."""
        await probe.hold(i, 0.05)
        return i

    @runner.agent("q", tools=["wait"], max_parallel_tools=2)
    async def answer(event: Event, ctx: Context) -> AgentRun:
        return await ctx.llm.run(user(" ".join(f'[[call wait {{"i": {i}}}]]' for i in range(5))), tools=ctx.tools)

    async with runner:
        run: AgentRun = await runner.request("q", None)
    assert probe.peak == 2  # concurrent, and never more than the agent's limit
    assert run.text == "tool results: " + "; ".join(f"wait: {i}" for i in range(5))  # in call order
    assert [c.arguments for c in run.tool_calls] == [{"i": i} for i in range(5)]


async def test_config_overrides_the_agents_tools_and_its_parallel_limit(llm: MockLLM) -> None:
    runner = make_runner(llm.url, agents={"answer": {"tools": ["wait"], "max_parallel_tools": 3}})
    probe = Probe()
    add_weather(runner)

    @runner.tool
    async def wait(i: int) -> int:
        """Sleep a little, then return i."""
        await probe.hold(i, 0.05)
        return i

    @runner.agent("q", tools=["get_weather"], max_parallel_tools=1)
    async def answer(event: Event, ctx: Context) -> list[str]:
        await ctx.tools.call_many([("wait", {"i": i}) for i in range(6)])
        return ctx.tools.names()

    async with runner:
        assert await runner.request("q", None) == ["wait"]
    assert probe.peak == 3


async def test_a_tool_timeout_bad_arguments_and_an_unknown_tool_go_back_to_the_model(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    add_weather(runner)

    @runner.tool(timeout_s=0.05)
    async def slow() -> str:
        """Takes too long."""
        await asyncio.sleep(10)
        return "never"

    @runner.agent("q", tools=["get_weather", "slow"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        text = '[[call slow]] [[call get_weather {"days": "soon"}]] [[call get_weather {"city": "Par]] [[call fly]]'
        return await ctx.llm.run(user(text), tools=ctx.tools)

    async with runner:
        run: AgentRun = await runner.request("q", None)
    assert [c.outcome for c in run.tool_calls] == ["timeout", "bad_arguments", "bad_arguments", "unknown_tool"]
    assert run.turns == 2  # the run went on: the model read the errors and answered
    text = run.text
    assert "slow: Tool 'slow' did not finish within 0.05 s and was cancelled" in text
    assert "do not match its parameters" in text and "are not valid JSON" in text
    assert "There is no tool named 'fly'. Call one of the available tools: get_weather, slow." in text


async def test_a_doom_loop_is_warned_then_dead_lettered_as_tool_loop_with_the_repeated_call(llm: MockLLM) -> None:
    runner = make_runner(llm.url, retry={"max_attempts": 3, "initial_backoff_s": 0, "jitter_s": 0})
    add_weather(runner)
    calls: list[str] = []

    @runner.tool
    async def get_time(zone: str) -> str:
        """The time in a zone."""
        calls.append(zone)
        return "12:00"

    @runner.agent("q", tools=["get_*"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        # Two calls per turn, their order rotating every turn, and key order not mattering either: still a loop.
        text = '[[loop get_weather {"days": 2, "city": "Oslo"}]] [[loop get_time {"zone": "CET"}]]'
        return await ctx.llm.run(user(text), tools=ctx.tools)

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("q", None)
        [letter] = await dead_letters(runner)
        scrape = runner.metrics.render().decode()
    assert info.value.reason == "tool_loop"
    assert (letter.reason, letter.error_type, letter.attempts) == ("tool_loop", "ToolLoopError", 1)  # not retried
    assert 'get_time({"zone":"CET"})' in letter.error and 'get_weather({"city":"Oslo","days":2})' in letter.error
    assert "in 4 consecutive turns" in letter.error
    assert calls == ["CET"] * 3  # the fourth identical turn was stopped before its tools ran
    assert llm.stats().requests == 4
    assert 'agentflow_tool_loops_total{action="warned",agent="answer"} 1.0' in scrape
    assert 'agentflow_tool_loops_total{action="stopped",agent="answer"} 1.0' in scrape
    assert 'agentflow_agent_runs_total{agent="answer",outcome="tool_loop"} 1.0' in scrape


async def test_the_model_is_told_it_repeats_itself_in_the_turn_that_reaches_the_threshold() -> None:
    # A server that always asks for the same call, and keeps every request body: the tool messages it was sent.
    async def same_call(request: web.Request, body: dict[str, Any], n: int) -> web.Response:
        call = {"id": f"c{n}", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return web.json_response({"id": f"r{n}", "model": "m", "choices": [{"index": 0, "message": message}]})

    async with ScriptedLLM(same_call) as server:
        runner = make_runner(server.url)
        add_weather(runner)
        seen: list[str] = []

        @runner.agent("q", tools=["get_weather"])
        async def answer(event: Event, ctx: Context) -> None:
            try:
                await ctx.llm.run(user("weather?"), tools=ctx.tools, loop_threshold=2)
            except Exception as exc:
                seen.append(type(exc).__name__)

        async with runner:
            await runner.request("q", None)
    assert seen == ["ToolLoopError"] and server.requests == 3
    last_tool_message = [m["content"] for m in server.bodies[2]["messages"] if m["role"] == "tool"]
    assert "Do not repeat it" not in last_tool_message[0]
    assert "in 2 consecutive turns" in last_tool_message[1] and "Do not repeat it" in last_tool_message[1]


async def test_arguments_that_change_every_turn_are_no_loop_and_max_turns_ends_the_run(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    pages: list[int] = []

    @runner.tool
    async def search(page: int) -> str:
        """One page of results."""
        pages.append(page)
        return f"page {page}: nothing yet"

    @runner.agent("q", tools=["search"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        return await ctx.llm.run(user('[[loop search {"page": $turn}]]'), tools=ctx.tools, max_turns=5)

    async with runner:
        with pytest.raises(DeadLetteredError):
            await runner.request("q", None)
        [letter] = await dead_letters(runner)
    assert (letter.reason, letter.error_type) == ("exhausted", "MaxTurnsExceededError")
    assert "in turn 5, its last (max_turns=5)" in letter.error
    assert pages == [1, 2, 3, 4]  # five model turns, the last one's calls never run


async def test_the_workflow_token_budget_stops_the_run(llm: MockLLM) -> None:
    runner = make_runner(llm.url, provider={"token_budget_per_workflow": 150})
    add_weather(runner)

    @runner.agent("q", tools=["get_weather"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        return await ctx.llm.run(user('[[loop get_weather {"city": "Oslo", "days": $turn}]]'), tools=ctx.tools)

    async with runner:
        with pytest.raises(DeadLetteredError):
            await runner.request("q", None)
        [letter] = await dead_letters(runner)
        assert runner.llm is not None
        used = runner.llm.costs.used(letter.event_id)
        scrape = runner.metrics.render().decode()
    assert letter.error_type == "TokenBudgetExceededError"
    assert 150 <= used < 150 + 100  # the last call started under the budget; none started after it
    assert llm.stats().requests < 8
    assert 'agentflow_agent_runs_total{agent="answer",outcome="budget"} 1.0' in scrape


async def test_the_runs_deadline_cancels_it_where_it_is(llm: MockLLM) -> None:
    runner = make_runner(llm.url)

    @runner.tool
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(10)
        return "late"

    @runner.agent("q", tools=["slow"])
    async def answer(event: Event, ctx: Context) -> str:
        try:
            await ctx.llm.run(user("[[call slow]]"), tools=ctx.tools, timeout_s=0.1)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return "no timeout"

    async with runner:
        said = await runner.request("q", None)
    assert said.startswith("AgentRunTimeoutError: The agent run did not finish within timeout_s=0.1 s (1 model turns)")


async def test_a_conversation_memory_gives_the_history_and_keeps_the_runs_messages(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    add_weather(runner)
    async with StateStore(StateConfig()) as store:

        @runner.agent("q", tools=["get_weather"])
        async def answer(event: Event, ctx: Context) -> AgentRun:
            memory = ConversationMemory(StateHandle(store, "chat", "user-1", store.unit(f"answer:{event.id}")))
            return await ctx.llm.run(user(event.payload), tools=ctx.tools, memory=memory)

        async with runner:
            first: AgentRun = await runner.request("q", '[[call get_weather {"city": "Oslo"}]]')
            second: AgentRun = await runner.request("q", "and tomorrow?")
        stored = await ConversationMemory(StateHandle(store, "chat", "user-1", store.unit())).messages()
    assert len(first.messages) == 4
    assert second.messages[:4] == msgspec.to_builtins(first.messages)  # the history came first
    assert second.text.startswith("echo:and tomorrow?")
    assert [m["role"] for m in stored] == ["user", "assistant", "tool", "assistant", "user", "assistant"]


async def test_a_tool_pattern_that_selects_nothing_stops_the_start_with_the_closest_name(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    add_weather(runner)

    @runner.agent("q", tools=["get_wether"])
    async def answer(event: Event, ctx: Context) -> None:
        pass

    with pytest.raises(ConfigError) as info:
        await runner.start()
    message = str(info.value)
    assert message.startswith("Agent 'answer' asks for the tool 'get_wether', which matches no registered tool; did")
    assert "did you mean 'get_weather'?" in message


async def test_batch_agents_and_agents_without_tools_get_a_tool_box(llm: MockLLM) -> None:
    runner = make_runner(llm.url)
    add_weather(runner)

    @runner.agent("batch", tools=["get_weather"], batch_size=8)
    async def batch(events: list[Event], ctx: Any) -> list[str]:
        results = await ctx.tools.call_many([("get_weather", {"city": e.payload}) for e in events])
        return [r.value["city"] for r in results]

    @runner.agent("plain")
    async def plain(event: Event, ctx: Context) -> list[str]:
        return ctx.tools.names()

    async with runner:
        assert await runner.request("batch", "Oslo") == "Oslo"
        assert await runner.request("plain", None) == []


def test_a_context_builds_no_tool_box_until_a_handler_asks() -> None:
    # Context is made per event; agents that use no tools must not pay for one.
    assert not any("tool" in field for field in Context.__struct_fields__)
    assert isinstance(Context.__dict__["tools"], property)


async def test_runner_tool_registers_functions_and_tools_made_apart_with_the_config_applied(
    llm: MockLLM, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(llm.url, tools={"shout": {"timeout_s": 2.5}, "missing": {"concurrency": 2}})

    @tool(idempotent=True)
    async def shout(text: str) -> str:
        """Upper-cases text."""
        return text.upper()

    registered = runner.tool(shout)
    assert registered is not shout and registered.timeout_s == 2.5 and registered.idempotent  # [tools.shout]
    assert await registered("hi") == "HI"  # calling the tool calls the function

    @runner.tool(name="whisper", concurrency=3)
    async def quiet(text: str) -> str:
        """Lower-cases text."""
        return text.lower()

    assert (quiet.name, quiet.concurrency) == ("whisper", 3)
    with pytest.raises(TypeError, match="is made already; give its options where it was made"):
        runner.tool(timeout_s=1)(shout)

    @runner.agent("q", tools=["shout", "whisper"])
    async def answer(event: Event, ctx: Context) -> list[str]:
        return [r.content for r in await ctx.tools.call_many([("shout", {"text": "a"}), ("whisper", '{"text": "B"}')])]

    async with runner:
        assert await runner.request("q", None) == ["A", "b"]
        with pytest.raises(LifecycleError, match="Register tools before starting the Runner"):
            runner.tool(shout)
    assert "The config has [tools.missing] but no tool of that name is registered" in caplog.text
