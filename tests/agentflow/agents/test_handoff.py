"""The direct hand-off: events offered while an agent's dispatcher waits go to its workers synchronously."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agentflow import Context, Event
from agentflow.bus.memory import MemoryBus, MemorySubscription

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory


async def test_an_offered_event_is_taken_at_once_and_the_dispatcher_sleeps_on(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    seen: list[object] = []

    @runner.agent("t")
    async def handle(event: Event, ctx: Context) -> None:
        seen.append(event.payload)

    async with runner:
        await asyncio.sleep(0.01)  # the dispatcher is now waiting for events
        [worker] = runner._agents
        sub = worker._sub
        assert isinstance(sub, MemorySubscription) and sub._waiter is not None
        await runner.emit("t", 1)
        # No await since the emit returned: the event is already with the workers, not in the bus.
        assert len(worker._local) == 1 and worker.inflight == 1
        assert sub.statistics().buffered == 0
        waiter = sub._waiter
        assert waiter is not None and not waiter.done()  # the dispatcher was not woken
        await runner.drain()
        assert seen == [1]


async def test_a_burst_wakes_one_worker_and_the_dispatcher_takes_the_rest(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    seen: list[int] = []

    @runner.agent("t")
    async def handle(event: Event, ctx: Context) -> None:
        seen.append(event.payload)

    async with runner:
        await asyncio.sleep(0.01)
        [worker] = runner._agents
        sub = worker._sub
        assert isinstance(sub, MemorySubscription)
        for i in range(5):
            await runner.emit("t", i)
        assert len(worker._local) == 1 and worker._waking  # one taken at once, its worker on its way
        waiter = sub._waiter
        assert waiter is not None and waiter.done()  # the other four woke the dispatcher instead
        assert sub.statistics().buffered == 4
        await runner.drain()
        assert sorted(seen) == [0, 1, 2, 3, 4]


async def test_at_max_inflight_the_rest_waits_for_the_dispatcher_and_nothing_is_lost(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner = make_runner({"runner": {"max_concurrent_events": 2, "worker_pool_size": 2}})
    gate = asyncio.Event()
    seen: list[int] = []

    @runner.agent("t")
    async def handle(event: Event, ctx: Context) -> None:
        await gate.wait()
        seen.append(event.payload)

    async with runner:
        await asyncio.sleep(0.01)
        [worker] = runner._agents
        for i in range(10):
            await runner.emit("t", i)
        # The first went straight to a worker; with that worker on its way, the rest wait for the dispatcher.
        assert worker.inflight == 1 and worker._sub.statistics().buffered == 9
        await eventually(lambda: worker.inflight == 2, what="the dispatcher taking up to max_concurrent_events")
        await asyncio.sleep(0.01)
        assert worker.inflight == 2  # the bound holds; the other 8 stay in the bus
        assert worker._sub.statistics().buffered == 8
        gate.set()
        await eventually(lambda: len(seen) == 10, what="all ten events handled")
        assert sorted(seen) == list(range(10))


async def test_no_hand_off_once_intake_stops(make_runner: RunnerFactory) -> None:
    bus = MemoryBus()
    runner = make_runner(bus=bus)

    @runner.agent("t")
    async def handle(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        await asyncio.sleep(0.01)
        [worker] = runner._agents
        await worker.stop_intake()
        assert worker._sub._listener is None  # type: ignore[attr-defined]
        assert worker._pump() is False  # and a stale reference would refuse too
        assert bus.offer("t", [Event(topic="t", payload=1)])
        assert not worker._local and worker.inflight == 0
