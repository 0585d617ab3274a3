"""The state contract: one suite over the memory backend, a real SQLite file and a real Redis server.

Tests taking ``state`` run on all three; tests taking ``durable_state`` are about the write-behind buffer, which
only SQLite and Redis have (the memory backend applies each write at once, so there is nothing to coalesce or
flush). A second store opened by ``state.store()`` stands for another worker process on the same data.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

import msgspec
import pytest
from state_env import StateEnv

from agentflow.errors import (
    LifecycleError,
    StateConflictError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateTooLargeError,
)
from agentflow.state import MISSING, StateHandle, StateStore, Write


class Cart(msgspec.Struct):
    items: list[str]
    total_cents: int = 0


def handle(store: StateStore, key: str = "k", *, scope: str | None = "agent:evt-1") -> StateHandle[Any]:
    return StateHandle(store, "agent", key, store.unit(scope))


# -- values, reads and writes ----------------------------------------------------------------------------------


VALUES = [{"a": 1, "b": [1, 2, {"c": "d"}]}, [1, "x", 2.5], "text", 42, 3.5, True, None, b"bytes"]


async def test_values_round_trip_within_a_store_and_to_another_store(state: StateEnv) -> None:
    writer = await state.store()
    unit = writer.unit("agent:evt-1")
    for i, value in enumerate(VALUES):
        await StateHandle(writer, "agent", f"k{i}", unit).set(value)
        assert await StateHandle(writer, "agent", f"k{i}").get("absent") == value
    await unit.committed()
    reader = await state.store()
    for i, value in enumerate(VALUES):
        assert await StateHandle(reader, "agent", f"k{i}").get("absent") == value


async def test_get_of_a_missing_key_returns_the_default(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store, "never-written")
    assert await h.get() is None
    assert await h.get(7) == 7
    assert await store.get("agent:never-written") is MISSING


async def test_delete_removes_the_value_for_every_reader(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store)
    await h.set({"n": 1})
    await h.delete()
    assert await h.get("gone") == "gone"
    await h.unit.committed()  # type: ignore[union-attr]
    reader = await state.store()
    assert await handle(reader).get("gone") == "gone"
    assert await (await state.backend()).get("agent:k") is None


async def test_namespaces_and_keys_are_separate(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store, "user-1")
    await h.set("mine")
    await h.of("profiles", "user-1").set("profile")
    await h.of("agent", "user-2").set("other")
    assert await h.get() == "mine"
    assert await h.of("profiles", "user-1").get() == "profile"
    assert await StateHandle(store, "agent", "user-2").get() == "other"
    # A key may hold anything, ':' included; a namespace may not.
    await h.of("agent", "a:b:c").set(1)
    assert await StateHandle(store, "agent", "a:b:c").get() == 1
    with pytest.raises(ValueError, match="free of ':'"):
        h.of("a:b", "k")


async def test_an_unencodable_value_is_refused_with_a_sentence(state: StateEnv) -> None:
    store = await state.store()
    with pytest.raises(StateEncodeError, match="cannot be encoded") as info:
        await handle(store).set(object())
    assert isinstance(info.value, TypeError)
    assert await handle(store).get("none") == "none"


# -- TTL -------------------------------------------------------------------------------------------------------


async def test_ttl_expires_a_value_for_the_writer_and_for_other_readers(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store)
    await h.set("short", ttl_s=0.4)
    await h.of("agent", "long").set("long", ttl_s=60)
    await h.unit.committed()  # type: ignore[union-attr]
    reader = await state.store()
    assert await handle(reader).get() == "short"
    await asyncio.sleep(0.6)
    assert await h.get("expired") == "expired"
    assert await handle(reader).get("expired") == "expired"
    assert await (await state.backend()).get("agent:k") is None
    assert await h.of("agent", "long").get() == "long"


async def test_default_ttl_applies_when_a_write_gives_none(state: StateEnv) -> None:
    store = await state.store(default_ttl_s=0.4)
    h = handle(store)
    await h.set("v")
    assert await h.update(lambda v: v + "!", default="") == "v!"
    assert await h.get() == "v!"
    await asyncio.sleep(0.6)
    assert await h.get("expired") == "expired"


async def test_an_expired_value_counts_as_absent_for_update(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store)
    await h.set(41, ttl_s=0.3)
    await h.unit.committed()  # type: ignore[union-attr]
    await asyncio.sleep(0.5)
    assert await h.update(lambda n: n + 1, default=0) == 1


# -- size limit and compression ---------------------------------------------------------------------------------


async def test_a_value_over_max_state_bytes_is_refused_and_nothing_is_written(state: StateEnv) -> None:
    store = await state.store(max_state_bytes=100)
    h = handle(store)
    await h.set("small")
    with pytest.raises(StateTooLargeError, match="max_state_bytes") as info:
        await h.set("x" * 200)
    assert isinstance(info.value, ValueError)
    assert info.value.limit_bytes == 100 and info.value.size_bytes > 100
    assert info.value.key == "agent:k"
    with pytest.raises(StateTooLargeError):
        await h.update(lambda s: s * 100)
    assert await h.get() == "small"
    await h.unit.committed()  # type: ignore[union-attr]
    assert await handle(await state.store()).get() == "small"


async def test_compression_round_trip_is_transparent(state: StateEnv) -> None:
    big = {"text": "all work and no play " * 500, "n": list(range(100))}
    writer = await state.store(enable_state_compression=True, compression_threshold_bytes=256)
    h = handle(writer)
    await h.set(big)
    await h.of("agent", "small").set({"text": "tiny"})
    await h.unit.committed()  # type: ignore[union-attr]
    assert writer.statistics().compressed == 1
    backend = await state.backend()
    stored = await backend.get("agent:k")
    assert stored is not None
    encoded = msgspec.msgpack.encode(big)
    assert stored.value[:1] == b"\x01" and len(stored.value) < len(encoded) / 5
    assert zlib.decompress(stored.value[1:]) == encoded
    small = await backend.get("agent:small")
    assert small is not None and small.value[:1] == b"\x00"
    # A reader with compression off still reads compressed values (the header says how each was stored).
    reader = await state.store(enable_state_compression=False)
    assert await handle(reader).get() == big
    assert await handle(reader).update(lambda v: {**v, "n": []}) == {**big, "n": []}


async def test_a_compressed_value_that_inflates_past_the_limit_is_refused(state: StateEnv) -> None:
    backend = await state.backend()
    bomb = b"\x01" + zlib.compress(msgspec.msgpack.encode("z" * 10_000))
    await backend.commit([Write(key="agent:k", value=bomb)])
    store = await state.store(max_state_bytes=1000)
    with pytest.raises(StateDecodeError, match="inflates to more than max_state_bytes"):
        await handle(store).get()


async def test_bytes_not_written_by_the_store_are_refused_with_a_sentence(state: StateEnv) -> None:
    backend = await state.backend()
    await backend.commit([Write(key="agent:k", value=b"\x7fforeign")])
    store = await state.store()
    with pytest.raises(StateDecodeError, match="unknown format"):
        await handle(store).get()


# -- optimistic concurrency --------------------------------------------------------------------------------------


async def test_concurrent_updates_from_two_workers_all_land(state: StateEnv) -> None:
    a = await state.store(max_update_attempts=100)
    b = await state.store(max_update_attempts=100)

    async def increment(n: int | None) -> int:
        await asyncio.sleep(0)  # let the other updates read the same version: real conflicts
        return (n or 0) + 1

    async def worker(store: StateStore) -> None:
        for _ in range(5):
            await handle(store, "counter").update(increment)

    await asyncio.gather(*(worker(s) for s in (a, b) for _ in range(5)))
    # (Not read through a or b: each caches its own last write, and a key both write is read stale for up to
    # state_cache_ttl_s there; update itself never trusts the cache past a conflict.)
    assert await handle(await state.store(), "counter").get() == 50
    conflicts = a.statistics().update_conflicts + b.statistics().update_conflicts
    assert conflicts > 0


async def test_update_gives_up_after_max_update_attempts(state: StateEnv) -> None:
    mine = await state.store(max_update_attempts=3)
    other = await state.store()
    calls = 0

    async def always_beaten(n: int | None) -> int:
        nonlocal calls
        calls += 1
        await handle(other, "counter").update(lambda m: (m or 0) + 100)  # another worker gets in first
        return (n or 0) + 1

    with pytest.raises(StateConflictError, match="max_update_attempts") as info:
        await handle(mine, "counter").update(always_beaten)
    assert info.value.attempts == 3 and calls == 3
    assert await handle(await state.store(), "counter").get() == 300
    assert mine.statistics().update_conflicts == 3


async def test_update_sees_the_buffered_writes_of_its_own_store(state: StateEnv) -> None:
    store = await state.store(flush_interval_ms=60_000)
    h = handle(store)
    await h.set(10)
    await h.set(20)
    assert await h.update(lambda n: n + 1) == 21
    assert await h.update(lambda n: n + 1) == 22
    assert await h.get() == 22
    await store.flush()
    assert await handle(await state.store()).get() == 22


async def test_concurrent_updates_behind_a_buffered_write_all_land(state: StateEnv) -> None:
    store = await state.store(flush_interval_ms=60_000, max_update_attempts=50)
    h = handle(store)
    await h.set(0)  # buffered (durable backends): the updates below read it and go behind it

    async def increment(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    await asyncio.gather(*(h.update(increment) for _ in range(20)))
    assert await h.get() == 20
    await store.flush()
    assert await handle(await state.store()).get() == 20


async def test_update_does_not_wait_for_writes_that_keep_coming_after_it(durable_state: StateEnv) -> None:
    store = await durable_state.store()
    h = handle(store)
    await h.set(0)
    writing = True

    async def writer() -> None:
        nonlocal writing
        for i in range(3000):
            await h.set(i)
            await asyncio.sleep(0)
        writing = False

    task = asyncio.create_task(writer())
    await asyncio.sleep(0)
    await h.of("agent", "k").update(lambda n: -1)
    assert writing, "update waited for the writes issued after it"
    await task
    assert await h.get() == 2999


async def test_update_with_a_sync_function_returns_the_new_value(state: StateEnv) -> None:
    store = await state.store()
    h = handle(store)
    assert await h.update(lambda n: n + 1, default=0) == 1
    assert await h.update(lambda n: n * 10) == 10
    assert await h.get() == 10


# -- typed state -----------------------------------------------------------------------------------------------


async def test_typed_state_round_trips_structs(state: StateEnv) -> None:
    store = await state.store()
    cart = handle(store).typed(Cart)
    assert await cart.get() is None
    await cart.set(Cart(items=["apple"], total_cents=120))
    got = await cart.get()
    assert got == Cart(items=["apple"], total_cents=120)
    new = await cart.update(lambda c: Cart(items=[*c.items, "pear"], total_cents=c.total_cents + 80))
    assert new == Cart(items=["apple", "pear"], total_cents=200)
    assert await handle(store).get() == {"items": ["apple", "pear"], "total_cents": 200}
    await cart.unit.committed()  # type: ignore[union-attr]
    reader = handle(await state.store()).typed(Cart)
    assert await reader.get() == new
    assert reader.value_type is Cart


async def test_typed_read_of_a_value_of_another_shape_raises_decode_error(state: StateEnv) -> None:
    store = await state.store()
    await handle(store).set({"items": "not a list"})
    with pytest.raises(StateDecodeError, match="does not decode as Cart"):
        await handle(store).typed(Cart).get()
    await handle(store).set([1, 2])
    assert await handle(store).typed(list[int]).get() == [1, 2]


# -- effectively once ------------------------------------------------------------------------------------------


async def test_a_redelivered_event_applies_its_once_writes_once(state: StateEnv) -> None:
    first = await state.store()

    async def deliver(store: StateStore, event_id: str) -> Any:
        unit = store.unit(f"agent:{event_id}")
        unit.begin_attempt()
        h = StateHandle(store, "agent", "k", unit)
        count = await h.of("agent", "counter").update(lambda n: n + 1, default=0, once=True)
        await h.set(f"written by {event_id}", once=True)
        await unit.committed()
        return count

    assert await deliver(first, "evt-1") == 1
    await StateHandle(first, "agent", "k", first.unit("agent:evt-2")).set("a later, plain write")
    await first.flush()
    # The event comes again (the worker died before acknowledging it), to another worker.
    second = await state.store()
    assert await deliver(second, "evt-1") == 1
    assert await StateHandle(second, "agent", "counter").get() == 1
    assert await StateHandle(second, "agent", "k").get() == "a later, plain write"
    assert second.statistics().duplicates == 2
    # Another event applies as usual.
    assert await deliver(second, "evt-3") == 2
    assert await StateHandle(second, "agent", "k").get() == "written by evt-3"


async def test_a_retried_attempt_repeats_its_once_writes_without_applying_them_twice(state: StateEnv) -> None:
    store = await state.store()
    unit = store.unit("agent:evt-1")
    h = StateHandle(store, "agent", "counter", unit)
    for _ in range(3):  # attempt 1 and two retries, each making the same two once-updates
        unit.begin_attempt()
        await h.update(lambda n: n + 1, default=0, once=True)
        await h.update(lambda n: n + 10, default=0, once=True)
    await unit.committed()
    assert await h.get() == 11


async def test_once_writes_are_scoped_by_agent(state: StateEnv) -> None:
    store = await state.store()
    for agent in ("billing", "audit"):  # two agents handle the same event id, one shared key
        unit = store.unit(f"{agent}:evt-1")
        await StateHandle(store, "shared", "n", unit).update(lambda n: n + 1, default=0, once=True)
    assert await StateHandle(store, "shared", "n").get() == 2


async def test_once_needs_a_unit_with_a_scope(state: StateEnv) -> None:
    store = await state.store()
    with pytest.raises(StateError, match="once=True needs"):
        await StateHandle(store, "agent", "k").set(1, once=True)
    with pytest.raises(StateError, match="scope"):
        await handle(store, scope=None).set(1, once=True)


# -- durability and write-behind -------------------------------------------------------------------------------


async def test_a_committed_unit_is_visible_to_every_other_worker(state: StateEnv) -> None:
    store = await state.store()
    units = [store.unit(f"agent:evt-{i}") for i in range(20)]
    for i, unit in enumerate(units):
        await StateHandle(store, "agent", f"k{i}", unit).set(i)
    for unit in units:
        await unit.committed()
        assert unit.done and unit.writes == 1
    backend = await state.backend()
    for i in range(20):
        assert await backend.get(f"agent:k{i}") is not None
    reader = await state.store()
    assert [await StateHandle(reader, "agent", f"k{i}").get() for i in range(20)] == list(range(20))


async def test_a_unit_is_committed_only_after_the_flush_holding_its_writes(durable_state: StateEnv) -> None:
    store = await durable_state.store(flush_interval_ms=300)
    backend = await durable_state.backend()
    await handle(store, "first").set("flushed")
    await store.flush()  # flushes start at most every 300 ms: the next one is ~300 ms away
    unit = store.unit("agent:evt-1")
    await StateHandle(store, "agent", "k", unit).set("v")
    assert not unit.done
    assert await StateHandle(store, "agent", "k").get() == "v"  # read-your-writes from the buffer
    assert await backend.get("agent:k") is None
    waited = time.perf_counter()
    await unit.committed()
    assert time.perf_counter() - waited > 0.1
    assert unit.done
    assert await backend.get("agent:k") is not None


async def test_writes_to_one_key_are_coalesced_into_one_commit(durable_state: StateEnv) -> None:
    store = await durable_state.store(flush_interval_ms=60_000)
    unit = store.unit("agent:evt-1")
    h = StateHandle(store, "agent", "k", unit)
    for i in range(100):
        await h.set(i)
    await h.of("agent", "other").set("x")
    before = store.statistics().backend_stats.commits
    await store.flush()
    await unit.committed()
    stats = store.statistics()
    assert (stats.writes, stats.coalesced, stats.flushed_writes) == (101, 99, 2)
    assert stats.backend_stats.commits == before + 1
    assert await handle(await durable_state.store()).get() == 99


async def test_once_writes_keep_their_place_in_the_buffer(durable_state: StateEnv) -> None:
    store = await durable_state.store(flush_interval_ms=60_000)
    unit = store.unit("agent:evt-1")
    h = StateHandle(store, "agent", "k", unit)
    await h.set("a", once=True)
    await h.set("b")
    await h.set("c")  # coalesces with "b", not with the once-write before it
    await h.set("d", once=True)
    await store.flush()
    stats = store.statistics()
    assert (stats.coalesced, stats.flushed_writes) == (1, 3)
    assert await handle(await durable_state.store()).get() == "d"


async def test_a_full_buffer_flushes_at_once_and_writers_wait_for_room(durable_state: StateEnv) -> None:
    store = await durable_state.store(max_pending_writes=8, flush_interval_ms=100)
    most = 0

    async def write(i: int) -> None:
        nonlocal most
        unit = store.unit(f"agent:evt-{i}")
        await StateHandle(store, "agent", f"k{i}", unit).set(i)
        most = max(most, store.statistics().pending)
        await unit.committed()

    await asyncio.wait_for(asyncio.gather(*(write(i) for i in range(50))), timeout=30)
    assert most <= 8
    assert store.statistics().flushes >= 50 // 8
    reader = await durable_state.store()
    assert [await StateHandle(reader, "agent", f"k{i}").get() for i in range(50)] == list(range(50))


async def test_a_read_during_a_flush_sees_the_write_being_committed(durable_state: StateEnv) -> None:
    store = await durable_state.store(flush_interval_ms=0)
    h = handle(store)
    for i in range(50):
        await h.set(i)
        assert await h.get() == i
        await asyncio.sleep(0)
    await store.flush()
    assert await h.get() == 49


# -- lifecycle -------------------------------------------------------------------------------------------------


async def test_closing_flushes_what_is_buffered(state: StateEnv) -> None:
    store = await state.store(flush_interval_ms=60_000)
    unit = store.unit("agent:evt-1")
    await StateHandle(store, "agent", "k", unit).set("kept")
    await store.aclose()
    await unit.committed()
    assert await handle(await state.store()).get() == "kept"


async def test_a_cancelled_close_still_finishes_and_close_is_idempotent(state: StateEnv) -> None:
    store = await state.store(flush_interval_ms=60_000)
    await handle(store).set("kept")
    closing = asyncio.create_task(store.aclose())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await store.aclose()
    await store.aclose()
    assert store.statistics().state == "closed"
    assert await handle(await state.store()).get() == "kept"


async def test_a_store_starts_once_and_refuses_use_after_close(state: StateEnv) -> None:
    store = await state.store()
    with pytest.raises(LifecycleError, match="start it once"):
        await store.start()
    await store.aclose()
    with pytest.raises(LifecycleError, match="closed"):
        await handle(store).get()
    with pytest.raises(LifecycleError, match="closed"):
        await handle(store).set(1)
    with pytest.raises(LifecycleError, match="once it has been closed"):
        await store.start()


async def test_a_store_is_an_async_context_manager(state: StateEnv) -> None:
    async with StateStore(state.config(), backend=state.memory, env=state.env) as store:
        await handle(store).set(1)
        assert "state=running" in repr(store)
    assert "state=closed" in repr(store)
    assert await handle(await state.store()).get() == 1


async def test_statistics_and_repr_show_live_state(state: StateEnv) -> None:
    store = await state.store(flush_interval_ms=60_000)
    h = handle(store)
    await h.set(1)
    await h.set(2)
    await h.get()
    stats = store.statistics()
    assert stats.backend == state.kind and stats.state == "running" and stats.writes == 2
    assert f"backend={state.kind}" in repr(store) and "writes=2" in repr(store)
    if state.durable:
        assert stats.pending == 1 and stats.coalesced == 1 and "pending=1" in repr(store)
        assert not h.unit.done  # type: ignore[union-attr]
    await store.flush()
    assert store.statistics().pending == 0 and "pending=0" in repr(store)
    assert repr(h) == "<StateHandle agent:'k'>"
    assert "committed" in repr(h.unit)
