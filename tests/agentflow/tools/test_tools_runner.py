"""Tools inside a Runner: ``[mcp.NAME]`` servers started with the runner and closed with it, their tools used by
agents through ``ctx.llm.run`` (real MCP servers, the mock LLM over HTTP), affinity by event key, the metrics in a
real scrape of ``/metrics``, and header secrets kept out of logs, metrics and reprs."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from mcp_helpers import SERVER, alive, server_stats
from prometheus_client.parser import text_string_to_metric_families

from agentflow import AgentRun, Context, Event, LifecycleError, MCPUnavailableError, Runner, config_from_dict
from agentflow.testing import MockLLM

pytestmark = pytest.mark.slow


@pytest.fixture
async def llm() -> AsyncIterator[MockLLM]:
    async with MockLLM() as server:
        yield server


def stdio_server(stats_dir: Path, **over: Any) -> dict[str, Any]:
    return {
        "transport": "stdio",
        "command": sys.executable,
        "args": [SERVER, "stdio"],
        "env": {"STATS_DIR": str(stats_dir)},
        **over,
    }


def runner_with(llm: MockLLM, **sections: Any) -> Runner:
    base: dict[str, Any] = {
        "llm": {"mock": {"base_url": llm.url, "default_model": "m", "cache": {"enabled": False}}},
        "retry": {"max_attempts": 1},
    }
    return Runner(config_from_dict({**base, **sections}))


async def test_an_agent_uses_an_mcp_servers_tools_through_the_runner(llm: MockLLM, stats_dir: Path) -> None:
    runner = runner_with(llm, mcp={"ctr": stdio_server(stats_dir, replicas=2)}, tools={"ctr.add": {"timeout_s": 5}})

    @runner.agent("q", tools=["ctr.*"])
    async def answer(event: Event, ctx: Context) -> AgentRun:
        text = '[[call ctr__add {"a": 2, "b": 3}]] [[call ctr__echo {"text": "hi"}]] [[call ctr__whoami]]'
        return await ctx.llm.run([{"role": "user", "content": text}], tools=ctx.tools)

    async with runner:
        add = runner.tools.get("ctr.add")
        assert add is not None and add.timeout_s == 5.0  # [tools."ctr.add"] applies to the server's tool
        runs: list[AgentRun] = [await runner.request("q", None) for _ in range(4)]
        pids = {int(r.text.split('"pid":')[1].split(",")[0]) for r in runs}
        stats = server_stats(stats_dir)
    run = runs[0]
    assert [(c.name, c.outcome) for c in run.tool_calls] == [
        ("ctr.add", "ok"),
        ("ctr.echo", "ok"),
        ("ctr.whoami", "ok"),
    ]
    assert run.text.startswith('tool results: ctr__add: {"result":5}; ctr__echo: {"result":"hi"}; ctr__whoami: {')
    assert len(pids) == 2  # round-robin over the two stdio replicas
    assert sum(m.get("tools/call", 0) for m in stats.values()) == 12
    assert all(m.get("initialize") == 1 for m in stats.values())  # sessions opened once, at start
    # Closing the runner stopped and reaped every stdio process: none left, no zombie.
    assert [pid for pid in pids if alive(pid)] == []
    assert runner.tools.get("ctr.add") is None


async def test_calls_for_one_event_key_stay_on_one_session(llm: MockLLM, stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    mcp = {"ctr": {"transport": "http", "url": server.url, "sessions_per_replica": 3, "affinity": "key"}}
    runner = runner_with(llm, mcp=mcp)

    @runner.agent("count", tools=["ctr.count"])
    async def count(event: Event, ctx: Context) -> dict[str, int]:
        result = await ctx.tools.call("ctr.count")
        assert result.outcome == "ok", result.content
        value: dict[str, int] = result.value
        return value

    async with runner:
        seen = {key: [await runner.request("count", None, key=key) for _ in range(3)] for key in ("a", "b")}
    for key, answers in seen.items():
        assert [a["count"] for a in answers] == [1, 2, 3], key  # the server's per-session counter: one session
        assert len({a["session"] for a in answers}) == 1, key
    assert seen["a"][0]["session"] != seen["b"][0]["session"]


async def test_a_server_that_cannot_start_stops_the_runners_start(llm: MockLLM) -> None:
    runner = runner_with(
        llm, mcp={"gone": {"transport": "stdio", "command": "/nonexistent/mcp", "connect_timeout_s": 2}}
    )
    with pytest.raises(MCPUnavailableError, match="MCP server 'gone' could not be reached"):
        await runner.start()
    with pytest.raises(LifecycleError):
        await runner.start()  # closed: a failed start cleaned up, and the runner cannot be reused


async def test_tool_metrics_are_in_a_real_scrape(llm: MockLLM, stats_dir: Path) -> None:
    runner = runner_with(
        llm,
        mcp={"ctr": stdio_server(stats_dir)},
        monitoring={"metrics_enabled": True, "port": 0},
    )

    @runner.tool
    async def ping() -> str:
        """Answers pong."""
        return "pong"

    @runner.agent("q", tools=["ping", "ctr.echo"])
    async def answer(event: Event, ctx: Context) -> str:
        text = '[[call ping]] [[call ctr__echo {"text": "x"}]] [[call nothing]]'
        run = await ctx.llm.run([{"role": "user", "content": text}], tools=ctx.tools)
        return run.text

    async with runner:
        await runner.request("q", None)
        assert runner.http_address is not None
        host, port = runner.http_address
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as resp:
            text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("agentflow_tool_calls_total", (("outcome", "ok"), ("tool", "ping")))] == 1
    assert samples[("agentflow_tool_calls_total", (("outcome", "ok"), ("tool", "ctr.echo")))] == 1
    assert samples[("agentflow_tool_calls_total", (("outcome", "unknown_tool"), ("tool", "_unknown")))] == 1
    assert samples[("agentflow_tool_duration_seconds_count", (("tool", "ping"),))] == 1
    assert samples[("agentflow_tool_parallel_width_sum", (("agent", "answer"),))] == 3
    assert samples[("agentflow_agent_run_turns_sum", (("agent", "answer"),))] == 2
    assert samples[("agentflow_agent_runs_total", (("agent", "answer"), ("outcome", "answered")))] == 1
    assert samples[("agentflow_mcp_sessions", (("server", "ctr"), ("state", "ready")))] == 1
    assert samples[("agentflow_mcp_replicas_up", (("server", "ctr"),))] == 1


async def test_header_secrets_of_an_mcp_server_stay_out_of_logs_metrics_and_reprs(
    llm: MockLLM, http_servers: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Bearer r7nn3r-s3cr3t-do-not-log"
    monkeypatch.setenv("AF_TEST_RUNNER_MCP_TOKEN", secret)
    server = http_servers(env={"EXPECT_AUTH": secret})
    mcp = {
        "ctr": {"transport": "http", "url": server.url, "headers": {"Authorization_env": "AF_TEST_RUNNER_MCP_TOKEN"}}
    }
    runner = runner_with(llm, mcp=mcp)
    caplog.set_level(logging.DEBUG)

    @runner.agent("q", tools=["ctr.*"])
    async def answer(event: Event, ctx: Context) -> list[str]:
        results = [await ctx.tools.call("ctr.whoami")]
        if event.payload == "after":
            results.append(await ctx.tools.call("ctr.add", {"a": 1, "b": 2}))
        return [r.content for r in results]

    async with runner:
        [whoami] = await runner.request("q", "before")
        assert '"auth_ok":true' in whoami  # the header reached the server
        server.kill()  # failures get logged: they must not carry the secret either
        await asyncio.sleep(0.1)
        after = await runner.request("q", "after")
        seen = [repr(runner), repr(runner.config), repr(runner.tools), repr(runner.statistics()), *after]
        seen += [runner.metrics.render().decode(), repr(runner.mcp)]
    seen.append(caplog.text)
    assert not [text for text in seen if "r7nn3r" in text]
    assert "AF_TEST_RUNNER_MCP_TOKEN" in repr(runner.config)  # the config names the variable, never the value
