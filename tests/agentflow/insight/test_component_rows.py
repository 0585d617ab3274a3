"""Tools, MCP tools and the state store are rows of the profile report, counted from the runner's own figures."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp_helpers import SERVER

from agentflow import Context, Event, Runner, config_from_dict


async def test_tools_and_the_state_store_are_rows_with_their_calls(tmp_path: Path) -> None:
    runner = Runner(config_from_dict({"memory": {"backend": "sqlite", "path": str(tmp_path / "s.db")}}))

    @runner.tool(concurrency=2)
    async def lookup(word: str) -> str:
        """Looks a word up."""
        return word.upper()

    @runner.agent("words", tools=["lookup"])
    async def agent(event: Event, ctx: Context) -> str:
        answer = await ctx.tools.call("lookup", {"word": event.payload})
        await ctx.state.set(answer.content)
        return answer.outcome

    async with runner:
        for i in range(12):
            await runner.request("words", f"w{i}", key=f"k{i % 3}")
        await runner.request("words", None, key="k0")  # bad arguments: an error outcome of the tool
        rows = {(r.kind, r.name): r for r in runner.insight.profile().rows}
    tool = rows["tool", "lookup"]
    assert tool.calls == 13 and tool.error_rate is not None and abs(tool.error_rate - 1 / 13) < 1e-9
    assert tool.concurrency == 2 and tool.p50_ms is not None
    assert any(r.kind == "state" and r.calls >= 1 for r in rows.values()), sorted(rows)


async def test_mcp_tools_are_rows_of_kind_mcp(tmp_path: Path) -> None:
    config = {
        "mcp": {
            "ctr": {
                "transport": "stdio",
                "command": sys.executable,
                "args": [SERVER, "stdio"],
                "env": {"STATS_DIR": str(tmp_path)},
                "tools": ["echo"],
            }
        }
    }
    runner = Runner(config_from_dict(config))

    @runner.agent("say", tools=["ctr.*"])
    async def agent(event: Event, ctx: Context) -> str:
        return (await ctx.tools.call("ctr.echo", {"text": event.payload})).value

    async with runner:
        for i in range(3):
            assert await runner.request("say", f"hi {i}") == {"result": f"hi {i}"}
        rows = {(r.kind, r.name): r for r in runner.insight.profile().rows}
    assert rows["mcp", "ctr.echo"].calls == 3
