"""State inside a runner: ``ctx.state``, ``ctx.workflow_state`` and ``ctx.memory`` from real handlers on memory, a
real SQLite file and the session's real Redis server, and the durability contract as the worker applies it (an
event is acknowledged only after its writes are committed; a failed commit is a failed attempt)."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import msgspec
import pytest
from state_env import StateEnv

from agentflow import (
    Context,
    DeadLetteredError,
    Event,
    Runner,
    StateError,
    config_from_dict,
)

TIMEOUT_S = 10.0
NO_WAIT = {"initial_backoff_s": 0.0, "jitter_s": 0.0}


class Cart(msgspec.Struct):
    items: list[str] = []


def runner_for(env: StateEnv, monkeypatch: pytest.MonkeyPatch, **memory: Any) -> Runner:
    """A runner whose [memory] is the test's backend (a fresh file, or a fresh key prefix on the Redis server)."""
    for name, value in env.env.items():
        monkeypatch.setenv(name, value)
    config: dict[str, Any] = {
        "memory": msgspec.to_builtins(env.config(**memory)),
        "retry": {"max_attempts": 3, **NO_WAIT},
    }
    return Runner(config_from_dict(config))


async def test_handlers_keep_state_per_key_share_workflow_state_and_reach_other_keys(
    state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runner_for(state, monkeypatch)

    @runner.agent("orders")
    async def add(event: Event, ctx: Context) -> Any:
        cart = ctx.state.typed(Cart)
        new = await cart.update(lambda c: Cart(items=[*c.items, event.payload["sku"]]), default=Cart(), once=True)
        await ctx.state.of("skus", event.payload["sku"]).update(lambda n: n + 1, default=0)
        await ctx.workflow_state.set({"items": len(new.items)})
        await ctx.emit("audit", {"sku": event.payload["sku"]}, key=event.key)
        return len(new.items)

    seen: list[Any] = []

    @runner.agent("audit")
    async def audit(event: Event, ctx: Context) -> None:
        seen.append(await ctx.workflow_state.get())  # written by `add` for the same correlation id

    async with runner:
        sizes = [await runner.request("orders", {"sku": s}, key="cust-1", timeout_s=TIMEOUT_S) for s in "abc"]
        assert await runner.request("orders", {"sku": "a"}, key="cust-2", timeout_s=TIMEOUT_S) == 1
        await runner.drain(timeout_s=TIMEOUT_S)
        store = runner.state_store
        assert await store.get("add:cust-1", store.decoder_for(Cart)) == Cart(items=["a", "b", "c"])
        assert [await store.get(f"skus:{s}") for s in "abc"] == [2, 1, 1]
    assert sizes == [1, 2, 3]
    assert sorted(s["items"] for s in seen) == [1, 1, 2, 3]


async def test_an_event_is_acknowledged_only_once_its_writes_are_committed(
    durable_state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long flush interval: the write waits in the buffer well after the handler returned.
    runner = runner_for(durable_state, monkeypatch, flush_interval_ms=300)
    raw = await durable_state.backend()
    committed_when_returned: list[bool] = []

    @runner.agent("jobs")
    async def job(event: Event, ctx: Context) -> str:
        await ctx.state.set({"done": event.payload})
        committed_when_returned.append(await raw.get("job:k") is not None)
        return "ok"

    async with runner:
        await runner.state_store.flush()  # start the interval now, so the next write waits for it
        assert await runner.request("jobs", 1, key="k", timeout_s=TIMEOUT_S) == "ok"
        # The reply came after the ack, which came after the commit: another worker reads the value.
        value = await (await durable_state.store()).get("job:k")
        stats = runner.statistics()
    assert committed_when_returned == [False]
    assert value == {"done": 1}
    assert stats.handled == 1 and runner.state_store.state.value == "closed"


async def test_a_commit_that_fails_fails_the_attempt_and_the_event_is_retried(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, eventually: Any
) -> None:
    env = StateEnv("sqlite", tmp_path, None)
    runner = runner_for(env, monkeypatch, operation_timeout_s=0.2)
    attempts: list[int] = []

    @runner.agent("jobs")
    async def job(event: Event, ctx: Context) -> int:
        attempts.append(ctx.attempt)
        await ctx.state.set(ctx.attempt)
        return ctx.attempt

    async with runner:
        # Another process holds SQLite's write lock past operation_timeout_s: the first flush fails.
        blocker = sqlite3.connect(env.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        reply = asyncio.ensure_future(runner.request("jobs", None, key="k", timeout_s=TIMEOUT_S))
        await eventually(lambda: runner.state_store.statistics().flush_failures > 0, what="a failed flush")
        blocker.execute("ROLLBACK")
        blocker.close()
        assert await reply == 2
        assert await runner.state_store.get("job:k") == 2
        agent = runner.statistics().agents[0]
    assert attempts == [1, 2]
    assert (agent.handled, agent.retries, agent.dead_lettered) == (1, 1, 0)


async def test_a_value_over_max_state_bytes_goes_to_the_dlq_without_a_retry(
    state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runner_for(state, monkeypatch, max_state_bytes=64)
    attempts: list[int] = []

    @runner.agent("docs")
    async def keep(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        await ctx.state.set("x" * 1000)

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("docs", None, key="k", timeout_s=TIMEOUT_S)
        [letter] = await runner.dlq.list()
    assert info.value.reason == "state_too_large"
    assert attempts == [1]
    assert (letter.reason, letter.error_type, letter.attempts) == ("state_too_large", "StateTooLargeError", 1)
    assert "max_state_bytes" in letter.error


async def test_ctx_memory_keeps_a_conversation_per_key_and_windows_it(
    state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runner_for(state, monkeypatch, conversation_max_messages=5)

    @runner.agent("chat")
    async def chat(event: Event, ctx: Context) -> Any:
        if not await ctx.memory.messages():
            await ctx.memory.append({"role": "system", "content": "be brief"})
        await ctx.memory.append({"role": "user", "content": event.payload}, once=True)
        await ctx.memory.append({"role": "assistant", "content": f"re: {event.payload}"}, once=True)
        return {
            "last3": await ctx.memory.window(max_messages=3),
            "tokens": await ctx.memory.window(max_tokens=ctx.memory.tokens({"content": "be brief"}) + 8),
        }

    async with runner:
        for text in ("one", "two", "three"):
            result = await runner.request("chat", text, key="conv-1", timeout_s=TIMEOUT_S)
        other = await runner.request("chat", "hello", key="conv-2", timeout_s=TIMEOUT_S)
        stored = await runner.state_store.get("_memory.chat:conv-1")
    # 7 messages written, 5 kept: the system message at the start always stays.
    assert [m["content"] for m in stored] == ["be brief", "two", "re: two", "three", "re: three"]
    assert [m["content"] for m in result["last3"]] == ["be brief", "three", "re: three"]
    assert [m["content"] for m in result["tokens"]] == ["be brief", "re: three"]
    assert [m["content"] for m in other["last3"]] == ["be brief", "hello", "re: hello"]


async def test_follow_ups_get_ids_from_their_parent_so_a_retried_parent_is_deduplicated(
    make_runner: Any,
) -> None:
    runner = make_runner({"retry": {"max_attempts": 2, **NO_WAIT}})
    emitted: list[list[str]] = []
    deliveries: list[str] = []

    @runner.agent("orders")
    async def split(event: Event, ctx: Context) -> None:
        ids = [await ctx.emit("lines", {"n": 1}, key=event.key)]
        ids += await ctx.emit_many("lines", [{"n": 2}, {"n": 3}], key=event.key)
        emitted.append([i for i in ids if i is not None])
        if ctx.attempt == 1:
            raise RuntimeError("fails after emitting: the retry emits the same follow-ups again")

    @runner.agent("lines")
    async def line(event: Event, ctx: Context) -> None:
        deliveries.append(event.id)
        await ctx.state.of("totals", event.key or "").update(lambda t: t + event.payload["n"], default=0, once=True)

    async with runner:
        parent = await runner.emit("orders", {}, key="o-1")
        await runner.drain(timeout_s=TIMEOUT_S)
        total = await runner.state_store.get("totals:o-1")
    assert emitted == [[f"{parent}/0", f"{parent}/1", f"{parent}/2"]] * 2
    assert sorted(deliveries) == sorted(emitted[0] * 2)
    assert total == 6, "each follow-up's once-write applied once, though delivered twice"


async def test_an_event_without_a_key_reaches_other_keys_only(make_runner: Any) -> None:
    runner = make_runner()

    @runner.agent("events")
    async def note(event: Event, ctx: Context) -> Any:
        with pytest.raises(StateError, match="has no key"):
            await ctx.state.get()
        await ctx.state.of("notes", "all").update(lambda n: n + 1, default=0)
        return await ctx.state.of("notes", "all").get()

    async with runner:
        assert await runner.request("events", None, timeout_s=TIMEOUT_S) == 1


async def test_a_batch_is_acknowledged_once_every_events_writes_are_committed(
    durable_state: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = runner_for(durable_state, monkeypatch, flush_interval_ms=200)

    @runner.agent("docs", batch_size=8)
    async def embed(events: list[Event], ctx: Any) -> list[str]:
        for ev in events:
            await ctx.of(ev).state.set(ev.payload)
            await ctx.emit("indexed", ev.payload, parent=ev)
        return [ev.id for ev in events]

    async with runner:
        await runner.state_store.flush()
        ids = await asyncio.gather(*(runner.request("docs", n, key=f"d{n}", timeout_s=TIMEOUT_S) for n in range(5)))
        reader = await durable_state.store()  # another worker: what was committed
        values = [await reader.get(f"embed:d{n}") for n in range(5)]
    assert values == list(range(5)), "each reply came after its batch's commit"
    assert len(set(ids)) == 5
