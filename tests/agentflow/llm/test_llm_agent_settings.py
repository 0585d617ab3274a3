"""Per-agent LLM settings (``[agents.NAME]`` and ``@runner.agent(...)``: provider, model, temperature, cache_ttl_s)
reaching the mock LLM, and the response cache's second level in Redis shared by two runners."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer
from state_env import PASSWORD_ENV, StateEnv

from agentflow import ConfigError, Context, Event, Runner, config_from_dict
from agentflow.testing import LatencyModel, MockLLM

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
async def server() -> AsyncIterator[MockLLM]:
    async with MockLLM(latency=LatencyModel(seed=3)) as s:
        yield s


def provider(server: MockLLM, **over: Any) -> dict[str, Any]:
    return {"base_url": server.url, "default_model": "m", "retry": {"max_attempts": 1}, **over}


async def test_each_agent_calls_with_its_own_provider_model_and_temperature(server: MockLLM) -> None:
    config = {
        "llm": {"main": provider(server), "strong": provider(server)},
        # The file wins over the code: "writer" asks for model "small" in code and gets "big".
        "agents": {"writer": {"provider": "strong", "model": "big", "temperature": 0.7}},
    }
    runner = Runner(config_from_dict(config))

    @runner.agent("simple", model="small", temperature=0.0)
    async def classify(event: Event, ctx: Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    @runner.agent("hard", name="writer", model="small")
    async def write(event: Event, ctx: Context) -> str:
        return (await ctx.llm.chat(MSG)).text

    @runner.agent("own")
    async def plain(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG)  # no settings: the first provider's default model, no temperature
        await ctx.llm.chat(MSG, model="explicit", temperature=1.5)  # a call's own arguments win

    @runner.agent("override", model="small", temperature=0.2)
    async def override(event: Event, ctx: Context) -> None:
        await ctx.llm.chat(MSG, model="explicit", temperature=1.5)

    async with runner:
        for topic in ("simple", "hard", "own", "override"):
            await runner.request(topic, {})
        assert runner.llm is not None
        rows = {(r.agent, r.provider, r.model): r.calls for r in runner.llm.costs.rows()}
    stats = server.stats()
    assert stats.models == {"small": 1, "big": 1, "m": 1, "explicit": 2}
    assert stats.temperatures == {"0": 1, "0.7": 1, "unset": 1, "1.5": 2}
    assert rows == {
        ("classify", "main", "small"): 1,
        ("writer", "strong", "big"): 1,
        ("plain", "main", "m"): 1,
        ("plain", "main", "explicit"): 1,
        ("override", "main", "explicit"): 1,
    }


async def test_an_agent_asking_for_an_unknown_provider_is_refused_at_start(server: MockLLM) -> None:
    runner = Runner(config_from_dict({"llm": {"openai": provider(server)}}))

    @runner.agent("t", provider="opnai")
    async def t(event: Event, ctx: Context) -> None:
        return None

    with pytest.raises(ConfigError) as info:
        await runner.start()
    assert "Agent 't' asks for LLM provider 'opnai'" in str(info.value)
    assert "did you mean 'openai'?" in str(info.value)
    assert info.value.key == "agents.t.provider"


async def test_an_agents_cache_ttl_decides_how_long_its_answers_are_reused(server: MockLLM) -> None:
    runner = Runner(config_from_dict({"llm": {"main": provider(server)}}))

    @runner.agent("brief", cache_ttl_s=0.05, temperature=0.0)
    async def brief(event: Event, ctx: Context) -> bool:
        return (await ctx.llm.chat(MSG)).cached

    @runner.agent("long", temperature=0.0)
    async def long(event: Event, ctx: Context) -> bool:
        return (await ctx.llm.chat(MSG, max_tokens=5)).cached

    async with runner:
        first = [await runner.request("brief", {}), await runner.request("long", {})]
        await asyncio.sleep(0.1)  # past brief's 0.05 s, well within the provider's 300 s
        second = [await runner.request("brief", {}), await runner.request("long", {})]
    assert first == [False, False]
    assert second == [False, True]
    assert server.stats().requests == 3


def _lookups(runner: Runner) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(runner.metrics.render().decode()):
        for s in family.samples:
            if s.name == "agentflow_llm_cache_lookups_total":
                out[s.labels["level"], s.labels["result"]] = s.value
            if s.name == "agentflow_llm_cache_errors_total":
                out[s.labels["level"], "error"] = s.value
    return out


def _redis_runner(env: StateEnv, server: MockLLM) -> Runner:
    config = {"llm": {"main": provider(server)}, "memory": msgspec.to_builtins(env.config())}
    runner = Runner(config_from_dict(config))

    @runner.agent("ask", temperature=0.0)
    async def ask(event: Event, ctx: Context) -> bool:
        return (await ctx.llm.chat([{"role": "user", "content": event.payload}])).cached

    return runner


async def test_the_redis_level_serves_an_answer_to_another_runner(
    server: MockLLM, redis_server: RedisServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, redis_server.password)
    env = StateEnv("redis", tmp_path, redis_server)
    first, second = _redis_runner(env, server), _redis_runner(env, server)  # two workers, one Redis
    async with first, second:
        assert await first.request("ask", "what is 2+2") is False
        assert await second.request("ask", "what is 2+2") is True  # the first worker's answer, from Redis
        assert await second.request("ask", "what is 2+2") is True  # now from its own memory level
        assert await second.request("ask", "something else") is False
        assert server.stats().requests == 2
        assert _lookups(first) == {("memory", "miss"): 1, ("redis", "miss"): 1, ("memory", "hit"): 0,
                                   ("redis", "hit"): 0, ("redis", "error"): 0}  # fmt: skip
        assert _lookups(second) == {("memory", "miss"): 2, ("memory", "hit"): 1, ("redis", "hit"): 1,
                                    ("redis", "miss"): 1, ("redis", "error"): 0}  # fmt: skip


async def test_a_redis_level_that_fails_is_a_miss_and_the_call_goes_through(
    server: MockLLM, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer() as own:  # a server of this test's own, to stop mid-way
        monkeypatch.setenv(PASSWORD_ENV, own.password)
        env = StateEnv("redis", tmp_path, own)
        runner = _redis_runner(env, server)
        async with runner:
            assert await runner.request("ask", "first") is False
            own.stop()
            assert await runner.request("ask", "second") is False  # from the provider, though Redis is gone
            lookups = _lookups(runner)
    assert server.stats().requests == 2
    assert lookups[("redis", "error")] == 2  # the read and the write of "second"
    assert lookups[("redis", "miss")] == 2
