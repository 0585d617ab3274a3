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


async def test_a_member_takes_keyed_partitions_and_the_keyless_lane_in_turn() -> None:
    bus = MemoryBus(partitions=4, buffer_size=100)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [Event(topic="t", payload=f"n{i}") for i in range(3)])
    assert [e.payload for e in sub.take_nowait(2)] == ["n0", "n1"]  # only keyless events wait: the lane
    await bus.publish("t", [Event(topic="t", payload="a", key="k")])
    await bus.publish("t", [Event(topic="t", payload="n3")])
    # A keyed event waits too: the partitions and the lane are taken in turn, one of them per call.
    first, second = sub.take_nowait(10), sub.take_nowait(10)
    assert sorted([[e.payload for e in first], [e.payload for e in second]]) == [["a"], ["n2", "n3"]]
    assert sub.take_nowait(10) == []
    sub.ack_many(first + second)
    await bus.aclose()


async def test_a_keyless_emit_wakes_the_first_waiting_member_and_a_cancelled_wait_is_not_counted() -> None:
    bus = MemoryBus(partitions=2, buffer_size=100)
    a, b = await bus.subscribe("t", "g"), await bus.subscribe("t", "g")
    cancelled = asyncio.ensure_future(a.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    await asyncio.sleep(0)
    assert bus.offer("t", (Event(topic="t", payload=1),))  # runner.emit's single-event path
    await asyncio.sleep(0)
    assert [w.done() for w in waits] == [True, False]  # the first member waiting is woken, once
    assert [e.payload for e in a.take_nowait(10)] == [1]
    assert bus.offer("t", (Event(topic="t", payload=2),))
    await asyncio.sleep(0)
    assert waits[1].done()  # b still waits (a is busy): the next keyless event wakes it
    assert [e.payload for e in b.take_nowait(10)] == [2]
    await bus.aclose()
