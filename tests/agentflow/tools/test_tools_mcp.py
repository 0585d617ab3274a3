"""MCP tools through session pools, against real MCP servers built with the official SDK.

The servers (tests/mcp_servers/counter_server.py) run as processes of their own: over stdio, started by the
pool, and over streamable HTTP on 127.0.0.1, started here. Each writes the requests it received, by method, to
``$STATS_DIR/<pid>.json``, so calls, pings and ``initialize`` handshakes are counted on the server's side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from mcp_helpers import SERVER, alive, server_stats, stdio_config

from agentflow.errors import ConfigError, LifecycleError, MCPUnavailableError
from agentflow.tools import MCPConfig, ToolBox, ToolConfig, ToolRegistry
from agentflow.tools.mcp import MCPHub, MCPPool

pytestmark = pytest.mark.slow


async def eventually(check: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)


async def call_ok(box: ToolBox, name: str, args: Any = None) -> Any:
    result = await box.call(name, args)
    assert result.outcome == "ok", result.content
    return result.value


# ---- listing and calling -----------------------------------------------------------------------------------


async def test_stdio_server_tools_are_listed_and_called(stats_dir: Path) -> None:
    registry = ToolRegistry()
    async with MCPPool("ctr", stdio_config(stats_dir), registry=registry) as pool:
        box = ToolBox(registry)
        assert box.names() == [
            f"ctr.{n}" for n in ("add", "count", "echo", "fail", "grow", "hang", "sleep", "wait", "whoami")
        ]
        add = box.get("ctr.add")
        assert add is not None and add.parameters["required"] == ["a", "b"]  # the server's own schema
        assert add.idempotent and box.get("ctr.echo").idempotent  # type: ignore[union-attr]
        assert not box.get("ctr.sleep").idempotent  # type: ignore[union-attr]
        assert {s["function"]["name"] for s in box.schemas()} >= {"ctr__add", "ctr__echo"}

        assert await call_ok(box, "ctr.add", {"a": 2, "b": 3}) == {"result": 5}
        assert await call_ok(box, "ctr__echo", '{"text": "hi"}') == {"result": "hi"}

        failed = await box.call("ctr.fail", {"message": "no such row"})
        assert failed.outcome == "error" and "no such row" in failed.content
        refused = await box.call("ctr.add", {"a": "two"})  # the server checks its schema; the model reads why
        assert refused.outcome == "error" and "validation error" in refused.content
        not_json = await box.call("ctr.add", "{oops")
        assert not_json.outcome == "bad_arguments"
        direct = await pool.call("no_such_tool", {})  # through the pool, the server's own answer
        assert direct.is_error
        assert pool.statistics().calls >= 5


async def test_http_sessions_are_opened_once_and_reused(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    registry = ToolRegistry()
    cfg = MCPConfig(transport="http", url=server.url, sessions_per_replica=2)
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        box = ToolBox(registry, max_parallel=4)
        results = await box.call_many([("ctr.echo", {"text": str(i)}) for i in range(60)])
        assert [r.value for r in results] == [{"result": str(i)} for i in range(60)]
        stats = pool.statistics()
        assert (stats.sessions, stats.ready, stats.opened, stats.reconnects) == (2, 2, 2, 0)
    methods = server_stats(stats_dir)[server.pid]
    assert methods["initialize"] == 2  # one per session, not one per call
    assert methods["tools/call"] == 60
    assert methods["tools/list"] == 2  # once as each session opened


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_calls_go_round_robin_over_two_replicas(stats_dir: Path, http_servers: Any, transport: str) -> None:
    if transport == "http":
        a, b = http_servers(), http_servers()
        cfg = MCPConfig(transport="http", replicas=(a.url, b.url))
    else:
        cfg = stdio_config(stats_dir, replicas=2)
    registry = ToolRegistry()
    async with MCPPool("ctr", cfg, registry=registry):
        box = ToolBox(registry)
        for i in range(40):
            await call_ok(box, "ctr.echo", {"text": str(i)})
    calls = sorted(m.get("tools/call", 0) for m in server_stats(stats_dir).values())
    assert calls == [20, 20]


# ---- failures ----------------------------------------------------------------------------------------------


async def test_calls_in_flight_when_a_replica_dies_are_retried_only_if_idempotent(
    stats_dir: Path, http_servers: Any
) -> None:
    a, b = http_servers(), http_servers()
    cfg = MCPConfig(transport="http", replicas=(a.url, b.url), reconnect_backoff_s=0.05, max_reconnect_backoff_s=0.2)
    registry = ToolRegistry()
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        box = ToolBox(registry, max_parallel=4)
        # Round-robin gives each replica one "sleep" (not idempotent) and one "wait" (idempotent).
        calls = [("ctr.sleep", {"seconds": 0.5}), ("ctr.sleep", {"seconds": 0.5})]
        calls += [("ctr.wait", {"seconds": 0.5}), ("ctr.wait", {"seconds": 0.5})]
        before = server_stats(stats_dir).get(b.pid, {}).get("tools/call", 0)
        running = asyncio.ensure_future(box.call_many(calls))
        # Killed once its two calls are in flight there (a call not yet sent would go to replica a instead).
        give_up = time.monotonic() + 10
        while server_stats(stats_dir).get(b.pid, {}).get("tools/call", 0) < before + 2:
            assert time.monotonic() < give_up, "replica b never got its two calls"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        b.kill()
        results = await running
        assert sorted(r.outcome for r in results[:2]) == ["error", "ok"]
        lost = next(r for r in results[:2] if r.outcome == "error")
        assert "may or may not have run; it was not retried because the tool is not idempotent" in lost.content
        assert [r.outcome for r in results[2:]] == ["ok", "ok"]  # the idempotent one went again, to replica a
        assert pool.statistics().failovers == 1


async def test_a_dead_replica_is_skipped_and_rejoins_when_back(stats_dir: Path, http_servers: Any) -> None:
    a, b = http_servers(), http_servers()
    cfg = MCPConfig(
        transport="http",
        replicas=(a.url, b.url),
        health_interval_s=30,  # only calls can find out that b died
        reconnect_backoff_s=0.05,
        max_reconnect_backoff_s=0.2,
    )
    registry = ToolRegistry()
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        box = ToolBox(registry)
        for _ in range(4):
            await call_ok(box, "ctr.sleep", {"seconds": 0})
        b.kill()
        # A call routed to b fails before it is sent, so it goes to a: even a tool that is not idempotent.
        for _ in range(20):
            await call_ok(box, "ctr.sleep", {"seconds": 0})
        stats = pool.statistics()
        assert stats.failovers == 1 and stats.failed_calls == 0
        assert not stats.replicas[1].up and stats.replicas[0].up
        assert server_stats(stats_dir)[a.pid]["tools/call"] == 2 + 20

        b.start()  # back on the same port
        await eventually(lambda: pool.statistics().replicas[1].up and pool.statistics().ready == 2, what="b back")
        for i in range(20):
            await call_ok(box, "ctr.add", {"a": i, "b": 1})
        assert server_stats(stats_dir)[b.pid]["tools/call"] == 10


async def test_calls_avoid_a_replica_whose_breaker_is_open(stats_dir: Path) -> None:
    registry = ToolRegistry()
    async with MCPPool("ctr", stdio_config(stats_dir, replicas=2), registry=registry) as pool:
        box = ToolBox(registry)
        answered = {(await call_ok(box, "ctr.whoami"))["pid"] for _ in range(2)}
        assert len(answered) == 2
        pool.breakers[1].force_open()
        assert pool.statistics().replicas[1].breaker_state == "forced_open"
        only = {(await call_ok(box, "ctr.whoami"))["pid"] for _ in range(6)}
        assert len(only) == 1
        pool.breakers[1].reset()
        assert {(await call_ok(box, "ctr.whoami"))["pid"] for _ in range(2)} == answered
        assert pool.breakers[0].name == "mcp:ctr/0"


async def test_a_killed_stdio_replica_is_restarted(stats_dir: Path) -> None:
    registry = ToolRegistry()
    cfg = stdio_config(stats_dir, replicas=2, reconnect_backoff_s=0.05, max_reconnect_backoff_s=0.2)
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        box = ToolBox(registry)
        answered = {(await call_ok(box, "ctr.whoami"))["pid"] for _ in range(2)}
        pids = set(server_stats(stats_dir))
        assert len(pids) == 2 and answered == pids
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        for i in range(20):  # idempotent calls carry on over the other process meanwhile
            assert await call_ok(box, "ctr.add", {"a": i, "b": 0}) == {"result": i}
        await eventually(lambda: pool.statistics().ready == 2 and len(server_stats(stats_dir)) == 3, what="restart")
        assert pool.statistics().reconnects == 1
        seen = {(await call_ok(box, "ctr.whoami"))["pid"] for _ in range(4)}
        assert victim not in seen and len(seen) == 2
    assert not any(alive(pid) for pid in server_stats(stats_dir))


async def test_a_hung_session_is_evicted_by_the_health_check(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    cfg = MCPConfig(
        transport="http",
        url=server.url,
        sessions_per_replica=2,
        health_interval_s=0.1,
        ping_timeout_s=0.3,
        reconnect_backoff_s=0.05,
    )
    registry = ToolRegistry()
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        box = ToolBox(registry)
        assert await call_ok(box, "ctr.hang") == {"result": "hung"}  # that session answers nothing from now on
        await eventually(lambda: pool.statistics().evicted_hung == 1, what="eviction")
        await eventually(lambda: pool.statistics().ready == 2, what="reopened")
        for i in range(10):
            await call_ok(box, "ctr.add", {"a": i, "b": i})
        assert pool.statistics().reconnects == 1
    assert server_stats(stats_dir)[server.pid]["initialize"] == 3


async def test_no_stdio_process_is_left_after_close(stats_dir: Path) -> None:
    pool = MCPPool("ctr", stdio_config(stats_dir, replicas=3))
    async with pool:
        pids = set(server_stats(stats_dir))
        assert len(pids) == 3 and all(alive(p) for p in pids)
    assert not any(alive(p) for p in pids), "a server process (or its zombie) outlived the pool"
    await pool.aclose()  # idempotent
    assert pool.statistics().state == "closed"


async def test_closing_cancelled_twice_still_stops_every_process(stats_dir: Path) -> None:
    pool = MCPPool("ctr", stdio_config(stats_dir, replicas=2))
    await pool.start()
    pids = set(server_stats(stats_dir))
    closing = asyncio.ensure_future(pool.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(pool.aclose(), 30)  # returns: the shielded close went on and finished
    assert pool.statistics().state == "closed"
    assert not any(alive(p) for p in pids), "a server process outlived a cancelled close"
    with pytest.raises(LifecycleError, match="once it has been closed"):
        await pool.start()


async def test_a_tool_timeout_leaves_the_session_usable(stats_dir: Path) -> None:
    registry = ToolRegistry({"ctr.sleep": ToolConfig(timeout_s=0.2)})
    async with MCPPool("ctr", stdio_config(stats_dir), registry=registry) as pool:
        box = ToolBox(registry)
        slow = await box.call("ctr.sleep", {"seconds": 5})
        assert slow.outcome == "timeout"
        assert await call_ok(box, "ctr.add", {"a": 1, "b": 1}) == {"result": 2}
        assert pool.statistics().reconnects == 0


async def test_calls_in_flight_per_session_are_bounded(stats_dir: Path) -> None:
    registry = ToolRegistry()
    cfg = stdio_config(stats_dir, max_in_flight_per_session=1)
    async with MCPPool("ctr", cfg, registry=registry):
        box = ToolBox(registry, max_parallel=3)
        t0 = time.perf_counter()
        results = await box.call_many([("ctr.sleep", {"seconds": 0.15})] * 3)
        assert [r.outcome for r in results] == ["ok"] * 3
        assert time.perf_counter() - t0 >= 0.44  # one after the other


async def test_start_goes_on_without_a_replica_that_is_down(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    cfg = MCPConfig(transport="http", replicas=(server.url, "http://127.0.0.1:9/mcp"), connect_timeout_s=10)
    registry = ToolRegistry()
    t0 = time.perf_counter()
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        assert time.perf_counter() - t0 < 5  # it did not wait out connect_timeout_s for the dead one
        stats = pool.statistics()
        assert [r.up for r in stats.replicas] == [True, False] and stats.ready == 1
        for i in range(4):
            await call_ok(ToolBox(registry), "ctr.add", {"a": i, "b": i})


async def test_start_fails_clearly_when_no_session_opens() -> None:
    cfg = MCPConfig(transport="http", url="http://127.0.0.1:9/mcp", connect_timeout_s=0.5, reconnect_backoff_s=0.05)
    pool = MCPPool("down", cfg)
    with pytest.raises(MCPUnavailableError, match="MCP server 'down' could not be reached"):
        await pool.start()
    assert pool.statistics().state == "closed"
    with pytest.raises(LifecycleError):
        await pool.start()
    with pytest.raises(MCPUnavailableError, match="not running"):
        await pool.call("echo", {"text": "x"})


# ---- stateful servers --------------------------------------------------------------------------------------


async def test_key_affinity_keeps_a_key_on_one_session(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    registry = ToolRegistry()
    cfg = MCPConfig(transport="http", url=server.url, sessions_per_replica=3, affinity="key")
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        seen: dict[str, list[tuple[int, int]]] = {}
        for _ in range(5):
            for key in ("k1", "k2"):
                value = await call_ok(ToolBox(registry, key=key), "ctr.count")
                seen.setdefault(key, []).append((value["session"], value["count"]))
        for key, calls in seen.items():
            assert len({s for s, _ in calls}) == 1, key  # one session per key
            assert [c for _, c in calls] == [1, 2, 3, 4, 5]  # its state carried from call to call
        assert pool.statistics().keys == 2

    # Without affinity the same calls spread over the sessions and a key's count is not its own.
    registry = ToolRegistry()
    async with MCPPool("ctr", msgspec.structs.replace(cfg, affinity="none"), registry=registry):
        sessions = {(await call_ok(ToolBox(registry, key="k1"), "ctr.count"))["session"] for _ in range(6)}
        assert len(sessions) == 3


async def test_workflow_affinity_follows_the_workflow(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    registry = ToolRegistry()
    cfg = MCPConfig(transport="http", url=server.url, sessions_per_replica=2, affinity="workflow")
    async with MCPPool("ctr", cfg, registry=registry):
        counts = [
            (await call_ok(ToolBox(registry, key=f"event-{i}", workflow="wf-1"), "ctr.count"))["count"]
            for i in range(4)
        ]
        assert counts == [1, 2, 3, 4]


async def test_isolate_never_lets_two_keys_share_a_session(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    registry = ToolRegistry()
    cfg = MCPConfig(
        transport="http", url=server.url, sessions_per_replica=2, affinity="key", isolate=True, reconnect_backoff_s=0.01
    )
    async with MCPPool("ctr", cfg, registry=registry) as pool:
        keys_by_session: dict[int, set[str]] = {}
        counts: dict[str, list[int]] = {}
        # Three keys, two sessions: the third key takes the least recently used key's session, reopened.
        for key in ("k1", "k1", "k2", "k2", "k3", "k3", "k1", "k2", "k3"):
            value = await call_ok(ToolBox(registry, key=key), "ctr.count")
            keys_by_session.setdefault(value["session"], set()).add(key)
            counts.setdefault(key, []).append(value["count"])
        assert all(len(keys) == 1 for keys in keys_by_session.values()), keys_by_session
        assert counts["k1"][:2] == [1, 2] and counts["k2"][:2] == [1, 2] and counts["k3"][:2] == [1, 2]
        assert pool.statistics().reconnects >= 2


def test_isolate_needs_affinity() -> None:
    with pytest.raises(msgspec.ValidationError, match="isolate = true keeps every key on a session of its own"):
        msgspec.convert({"transport": "http", "url": "http://x/mcp", "isolate": True}, MCPConfig)


# ---- secrets, list changes, config ------------------------------------------------------------------------


async def test_header_secrets_reach_the_server_but_never_logs_reprs_or_statistics(
    stats_dir: Path, http_servers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "Bearer s3cr3t-t0ken-do-not-log"
    server = http_servers(env={"EXPECT_AUTH": secret})
    cfg = MCPConfig(
        transport="http",
        url=server.url,
        headers={"Authorization_env": "AF_TEST_MCP_TOKEN", "X-Client": "agentflow-tests"},
        health_interval_s=0.05,
    )
    caplog.set_level(logging.DEBUG)
    registry = ToolRegistry()
    pool = MCPPool("ctr", cfg, registry=registry, env={"AF_TEST_MCP_TOKEN": secret})
    async with pool:
        box = ToolBox(registry)
        assert (await call_ok(box, "ctr.whoami"))["auth_ok"] is True
        await asyncio.sleep(0.2)  # a few pings
        server.kill()  # failures get logged: they must not carry the secret either
        failed = await box.call("ctr.add", {"a": 1, "b": 2})
        assert failed.outcome in ("unavailable", "error")
        seen = [repr(pool), repr(pool.statistics()), repr(cfg), failed.content, repr(box), repr(registry)]
        seen += [repr(t) for t in registry]
    seen += [caplog.text, repr(pool)]
    assert not any("s3cr3t" in text for text in seen)
    assert "AF_TEST_MCP_TOKEN" in repr(cfg)  # the file names the variable, never the value


def test_a_missing_secret_variable_is_a_config_error_naming_the_key() -> None:
    cfg = MCPConfig(transport="http", url="http://127.0.0.1:1/mcp", headers={"Authorization_env": "AF_UNSET_VAR"})
    with pytest.raises(ConfigError, match=r"mcp\.ctr\.headers\.Authorization_env names .*AF_UNSET_VAR.*not set") as e:
        MCPPool("ctr", cfg, env={})
    assert e.value.key == "mcp.ctr.headers.Authorization_env"


def test_targets_in_statistics_lose_credentials_and_queries() -> None:
    cfg = MCPConfig(transport="http", replicas=("http://user:pw@10.0.0.1:8000/mcp?token=abc", "https://h/mcp"))
    reps = MCPPool("x", cfg).statistics().replicas
    assert [r.target for r in reps] == ["http://10.0.0.1:8000/mcp", "https://h/mcp"]


async def test_tools_are_refreshed_when_the_server_says_its_list_changed(stats_dir: Path) -> None:
    registry = ToolRegistry()
    async with MCPPool("ctr", stdio_config(stats_dir), registry=registry):
        box = ToolBox(registry)
        assert "ctr.triple" not in box
        await call_ok(box, "ctr.grow", {"name": "triple"})
        await eventually(lambda: "ctr.triple" in box, what="the new tool")
        assert await call_ok(box, "ctr__triple", {"x": 21}) == {"result": 42}
    assert registry.names() == []  # a closed pool takes its tools along


async def test_tool_filter_selects_the_servers_tools(stats_dir: Path) -> None:
    registry = ToolRegistry()
    cfg = stdio_config(stats_dir, tools=("a*", "e*", "s*"), exclude_tools=("sleep",))
    async with MCPPool("ctr", cfg, registry=registry):
        assert registry.names() == ["ctr.add", "ctr.echo"]


async def test_hub_starts_every_server_and_closes_them(stats_dir: Path, http_servers: Any) -> None:
    server = http_servers()
    registry = ToolRegistry()
    hub = MCPHub(
        {"local": stdio_config(stats_dir), "remote": MCPConfig(transport="http", url=server.url)}, registry=registry
    )
    async with hub:
        box = ToolBox(registry.select(["local.add", "remote.*"]))
        assert await call_ok(box, "local.add", {"a": 1, "b": 1}) == {"result": 2}
        assert await call_ok(box, "remote.echo", {"text": "x"}) == {"result": "x"}
        assert set(hub.statistics()) == {"local", "remote"}
    assert len(registry) == 0
    assert "state=closed" in repr(hub)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        ({"transport": "stdio"}, "needs command"),
        ({"transport": "stdio", "command": "x", "sessions_per_replica": 2}, "sessions_per_replica must be 1"),
        ({"transport": "stdio", "command": "x", "replicas": ["http://a"]}, 'only transport = "http" uses'),
        ({"transport": "http"}, "needs url"),
        ({"transport": "http", "replicas": []}, "at least one URL"),
        ({"transport": "tcp"}, "Invalid enum value 'tcp'"),
    ],
)
def test_mcp_config_errors_are_sentences(data: dict[str, Any], says: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=says):
        msgspec.convert(data, MCPConfig)


async def test_pool_names_must_fit_tool_names() -> None:
    with pytest.raises(ConfigError, match="may only use letters"):
        MCPPool("my.server", MCPConfig(transport="http", url="http://x/mcp"))


def test_a_stdio_server_starts_when_stderr_is_not_a_file(stats_dir: Path) -> None:
    # An application (or agentcli under a test runner) may replace sys.stderr with an object that has no file
    # descriptor before the SDK is first imported; the server's stderr must then go elsewhere, not crash the start.
    script = f"""
import asyncio, io, sys
sys.stderr = io.StringIO()
from agentflow.tools import MCPConfig, ToolBox, ToolRegistry
from agentflow.tools.mcp import MCPPool

async def main():
    registry = ToolRegistry()
    cfg = MCPConfig(transport="stdio", command=sys.executable, args=({SERVER!r}, "stdio"))
    async with MCPPool("ctr", cfg, registry=registry):
        print((await ToolBox(registry).call("ctr.add", {{"a": 1, "b": 2}})).content)

asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == '{"result":3}'
