"""The memory bus hands keyless events out in emit order, even under a flood that fills the buffer: a keyless
event waits behind the events emitted before it and no others. Keyed events keep their per-key order and
concurrency beside them."""

from __future__ import annotations

import asyncio

from conftest import RunnerFactory

from agentflow import Context, Event, MemoryBus


async def test_a_flood_of_keyless_events_is_handled_in_emit_order(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 500, "worker_pool_size": 8}})
    started: list[int] = []

    @runner.agent("flood", concurrency=8)
    async def handle(event: Event, ctx: Context) -> None:
        started.append(event.payload)
        await asyncio.sleep(0)

    async with runner:
        for i in range(0, 3000, 100):  # single emits and batches, faster than the agent drains: the buffer fills
            await runner.emit_many("flood", list(range(i, i + 50)))
            for j in range(i + 50, i + 100):
                await runner.emit("flood", j)
        await runner.drain()
    assert started == list(range(3000))


async def test_keyless_and_keyed_events_mixed_keep_both_orders(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 200}})
    keyless: list[int] = []
    by_key: dict[str, list[int]] = {}

    @runner.agent("mixed", concurrency=4)
    async def handle(event: Event, ctx: Context) -> None:
        if event.key is None:
            keyless.append(event.payload)
        else:
            by_key.setdefault(event.key, []).append(event.payload)
        await asyncio.sleep(0)

    async with runner:
        for i in range(1000):
            await runner.emit("mixed", i, key=f"k{i % 5}" if i % 2 else None)
        await runner.drain()
        assert runner.statistics().bus.unacked == 0
    assert keyless == list(range(0, 1000, 2))
    for k, seen in by_key.items():
        assert seen == [i for i in range(1, 1000, 2) if f"k{i % 5}" == k]


async def test_keyless_events_given_back_are_taken_again_first() -> None:
    bus = MemoryBus(partitions=4, buffer_size=100)
    sub = await bus.subscribe("t", "g")
    events = [Event(topic="t", payload=i) for i in range(10)]
    await bus.publish("t", events[:5])
    for e in events[5:]:
        await bus.publish("t", [e])
    first = sub.take_nowait(3)
    assert [e.payload for e in first] == [0, 1, 2]
    sub.requeue(first[1:])
    assert [e.payload for e in sub.take_nowait(100)] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    await bus.aclose()
