"""Conversation memory (``ctx.memory``) over the state store, on memory, SQLite and Redis."""

from __future__ import annotations

import asyncio

import pytest
from state_env import StateEnv

from agentflow.llm.types import ChatMessage
from agentflow.state import ConversationMemory, StateHandle, StateStore


def memory(store: StateStore, *, event: str = "evt-1", **kwargs: object) -> ConversationMemory:
    return ConversationMemory(StateHandle(store, "chat", "user-1", store.unit(f"bot:{event}")), **kwargs)  # type: ignore[arg-type]


def chat(n: int, role: str = "user") -> dict[str, str]:
    return {"role": role, "content": f"message {n}"}


async def test_messages_append_in_order_and_survive_to_another_worker(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store)
    assert await m.messages() == []
    assert await m.append(chat(1)) == 1
    assert await m.append(ChatMessage(role="assistant", content="hello"), chat(2)) == 3
    expected = [chat(1), {"role": "assistant", "content": "hello"}, chat(2)]
    assert await m.messages() == expected
    assert await memory(await state.store()).messages() == expected


async def test_the_stored_history_keeps_max_messages_and_its_leading_system_message(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store, max_messages=4)
    await m.append({"role": "system", "content": "be brief"})
    for i in range(10):
        await m.append(chat(i))
    assert await m.messages() == [{"role": "system", "content": "be brief"}, chat(7), chat(8), chat(9)]


async def test_a_window_by_message_count(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store)
    await m.append({"role": "system", "content": "sys"}, *(chat(i) for i in range(6)))
    assert await m.window(max_messages=3) == [{"role": "system", "content": "sys"}, chat(4), chat(5)]
    assert await m.window(max_messages=2, keep_system=False) == [chat(4), chat(5)]
    assert len(await m.window()) == 7


async def test_a_window_by_tokens(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store, count_tokens=len)  # one token per character keeps the arithmetic visible
    await m.append({"role": "system", "content": "s" * 10}, *({"role": "user", "content": "x" * 20} for _ in range(5)))
    # system: 10 + 4 overhead; each message: 20 + 4
    assert len(await m.window(max_tokens=14 + 3 * 24)) == 4
    assert len(await m.window(max_tokens=14 + 3 * 24 - 1)) == 3
    assert len(await m.window(max_tokens=3 * 24, keep_system=False)) == 3
    assert await m.window(max_tokens=14) == [{"role": "system", "content": "s" * 10}]
    assert len(await m.window(max_tokens=10_000, max_messages=2)) == 2
    assert m.tokens({"role": "user", "content": None}) == 4


async def test_the_default_token_estimate_is_the_llm_clients(state: StateEnv) -> None:
    from agentflow.llm.tokens import estimate_tokens

    store = await state.store()
    m = memory(store)
    text = "a fairly ordinary sentence of about forty characters"
    assert m.tokens({"role": "user", "content": text}) == estimate_tokens(text) + 4


async def test_the_history_expires_ttl_after_its_last_append(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store, ttl_s=0.5)
    await m.append(chat(1))
    await asyncio.sleep(0.3)
    await m.append(chat(2))
    await asyncio.sleep(0.3)
    assert await m.messages() == [chat(1), chat(2)]
    await asyncio.sleep(0.4)
    assert await m.messages() == []


async def test_a_redelivered_event_does_not_append_twice(state: StateEnv) -> None:
    store = await state.store()
    await memory(store, event="evt-1").append(chat(1), once=True)
    await memory(store, event="evt-2").append(chat(2), once=True)
    await memory(await state.store(), event="evt-1").append(chat(1), once=True)  # evt-1 again, on another worker
    assert await memory(store).messages() == [chat(1), chat(2)]


async def test_concurrent_appends_all_land(state: StateEnv) -> None:
    a, b = await state.store(max_update_attempts=50), await state.store(max_update_attempts=50)
    await asyncio.gather(*(memory(s).append(chat(i)) for i in range(10) for s in (a, b)))
    assert len(await memory(await state.store()).messages()) == 20


async def test_clear_forgets_the_history_and_bad_messages_are_refused(state: StateEnv) -> None:
    store = await state.store()
    m = memory(store)
    await m.append(chat(1))
    await m.clear()
    assert await m.messages() == []
    with pytest.raises(ValueError, match="string 'role'"):
        await m.append({"content": "no role"})
    with pytest.raises(ValueError, match="max_messages"):
        memory(store, max_messages=0)
    assert repr(m) == "<ConversationMemory chat:'user-1' max_messages=200>"
