"""The one shutdown path: stop intake, drain for ``shutdown_grace_s``, cancel the rest, give it back to the bus.

Runners here share a ``MemoryBus`` they do not own, so what the first runner leaves pending can be counted in
the bus and handed to a second runner with the same agent (same consumer group).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest

from agentflow import Context, Event, LifecycleError, MemoryBus, RunnerState

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 10.0


def shared_bus(**kw: int) -> MemoryBus:
    return MemoryBus(partitions=kw.get("partitions", 8), buffer_size=kw.get("buffer_size", 10_000))


async def test_under_load_every_event_is_handled_exactly_once_across_two_runners(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    n = 5000
    keys = [f"k{i}" for i in range(64)]
    bus = shared_bus()
    config: dict[str, Any] = {
        "runner": {"worker_pool_size": 32, "max_concurrent_events": 256, "shutdown_grace_s": 0.05},
        "retry": {"max_attempts": 1},
    }
    log: list[tuple[str, int]] = []  # (key, n) in completion order, across both runners
    first: list[int] = []
    second: list[int] = []
    rng = random.Random(5)

    def register(runner: Any, sink: list[int], *, stragglers: bool) -> None:
        @runner.agent("work", name="worker")
        async def worker(event: Event, ctx: Context) -> None:
            i = event.payload
            # In the first runner a few handlers outlast the grace period and are cancelled.
            await asyncio.sleep(0.5 if stragglers and i % 401 == 0 else rng.choice([0, 0.001, 0.002]))
            sink.append(i)  # nothing awaits after this: recorded means finished
            log.append((event.key or "", i))

    r1 = make_runner(config, bus=bus)
    register(r1, first, stragglers=True)
    async with r1:
        for j, start in enumerate(range(0, n, 25)):
            await r1.emit_many("work", list(range(start, start + 25)), key=keys[j % len(keys)])
        await eventually(lambda: len(first) >= 300, what="the first runner to get going")
    report = r1.statistics().shutdown
    assert report is not None and r1.state is RunnerState.CLOSED
    assert len(first) == len(set(first)), "the first runner handled an event twice"
    pending = bus.statistics().buffered
    assert bus.statistics().unacked == 0
    assert len(first) + pending == n, (len(first), pending)
    assert pending > 0, "the test should stop the first runner with work left"
    assert report.returned > 0
    assert not report.drained and report.cancelled > 0, "the stragglers should have been cancelled"
    assert r1.statistics().returned == report.returned

    r2 = make_runner(config, bus=bus)
    register(r2, second, stragglers=False)
    async with r2:
        await r2.drain(timeout_s=TIMEOUT_S)
    assert len(second) == pending
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(n)), "every event handled exactly once, none lost"
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, i in log:
        by_key[key].append(i)
    assert all(seq == sorted(seq) for seq in by_key.values()), "same-key order broke across the hand-over"


async def test_same_key_order_survives_the_hand_over(make_runner: RunnerFactory, eventually: Eventually) -> None:
    bus = shared_bus(partitions=2)
    config = {"runner": {"shutdown_grace_s": 0.0}}
    log: dict[str, list[int]] = defaultdict(list)

    def register(runner: Any) -> None:
        @runner.agent("t", name="ordered", concurrency=4)
        async def ordered(event: Event, ctx: Context) -> None:
            await asyncio.sleep(0.003)
            log[event.key or ""].append(event.payload)

    r1 = make_runner(config, bus=bus)
    register(r1)
    async with r1:
        for i in range(30):
            for key in ("a", "b", "c"):
                await r1.emit("t", i, key=key)
        await eventually(lambda: sum(map(len, log.values())) >= 10, what="some progress")
    handled_first = sum(map(len, log.values()))
    assert handled_first < 90
    r2 = make_runner(config, bus=bus)
    register(r2)
    async with r2:
        await r2.drain(timeout_s=TIMEOUT_S)
    assert dict(log) == {key: list(range(30)) for key in "abc"}


async def test_handlers_that_finish_within_grace_are_not_cancelled(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"shutdown_grace_s": 5.0}})
    started = asyncio.Event()
    cancelled: list[int] = []
    finished: list[int] = []

    @runner.agent("t", concurrency=3)
    async def h(event: Event, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            cancelled.append(event.payload)
            raise
        finished.append(event.payload)

    await runner.start()
    await runner.emit_many("t", [1, 2, 3])
    await asyncio.wait_for(started.wait(), TIMEOUT_S)
    await runner.aclose()
    report = runner.statistics().shutdown
    assert report is not None
    assert (report.drained, report.cancelled, report.returned) == (True, 0, 0)
    assert report.grace_s == 5.0 and report.duration_s < 5.0
    assert cancelled == [] and sorted(finished) == [1, 2, 3]


async def test_handlers_longer_than_grace_are_cancelled_and_their_events_returned(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    bus = shared_bus()
    runner = make_runner({"runner": {"shutdown_grace_s": 0.05}}, bus=bus)
    cancelled: list[int] = []

    @runner.agent("t", concurrency=3)
    async def stuck(event: Event, ctx: Context) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(event.payload)
            raise

    await runner.start()
    await runner.emit_many("t", [1, 2, 3, 4, 5])
    await eventually(lambda: runner.statistics().pool.busy == 3, what="three running handlers")
    await runner.aclose()
    s = runner.statistics()
    assert s.shutdown is not None
    assert (s.shutdown.drained, s.shutdown.cancelled, s.shutdown.returned) == (False, 3, 5)
    assert s.shutdown.duration_s >= 0.05
    assert sorted(cancelled) == sorted(set(cancelled)) and len(cancelled) == 3
    assert (s.returned, s.handled, s.in_flight, s.dead_lettered) == (5, 0, 0, 0)
    assert s.pool.busy == 0
    assert s.agents[0].failed_attempts == 0, "a shutdown cancellation is not a handler failure"
    assert bus.statistics().buffered == 5, "all five events are back in the bus"
    await bus.publish("t", [Event(topic="t", payload="still open")])  # the runner does not close a bus it was given
    assert bus.statistics().buffered == 6
    await bus.aclose()


async def test_pending_requests_fail_with_lifecycle_error_on_close(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"shutdown_grace_s": 0.05}})

    @runner.agent("t")
    async def never(event: Event, ctx: Context) -> None:
        await asyncio.sleep(60)

    await runner.start()
    pending = [asyncio.create_task(runner.request("t", i, timeout_s=30)) for i in range(3)]
    await asyncio.sleep(0.02)
    assert runner.statistics().pending_requests == 3
    await runner.aclose()
    for task in pending:
        with pytest.raises(LifecycleError, match="closed before the result"):
            await asyncio.wait_for(task, TIMEOUT_S)
    assert runner.statistics().pending_requests == 0


@pytest.mark.parametrize("bus_owner", ["runner", "caller"])
async def test_an_emit_waiting_for_room_does_not_outlive_the_runner(make_runner: RunnerFactory, bus_owner: str) -> None:
    bus = shared_bus(partitions=1, buffer_size=1) if bus_owner == "caller" else None
    runner = make_runner(
        {"runner": {"shutdown_grace_s": 0.02, "event_buffer_size": 1, "max_concurrent_events": 1}}, bus=bus
    )

    @runner.agent("t", concurrency=1)
    async def never(event: Event, ctx: Context) -> None:
        await asyncio.sleep(60)

    await runner.start()
    await runner.emit("t", "running", key="k")
    await asyncio.sleep(0.02)
    await runner.emit("t", "buffered", key="k")
    waiting = asyncio.create_task(runner.emit("t", "waits", key="k"))
    request = asyncio.create_task(runner.request("t", "request", key="k", timeout_s=30))
    await asyncio.sleep(0.02)
    assert not waiting.done() and not request.done()
    await runner.aclose()
    # Stop intake means stop: callers blocked in emit/request are released with an error, not left hanging.
    try:
        for task in (waiting, request):
            with pytest.raises(LifecycleError):
                await asyncio.wait_for(task, 1.0)
    finally:
        for task in (waiting, request):
            task.cancel()
        await asyncio.gather(waiting, request, return_exceptions=True)
        if bus is not None:
            await bus.aclose()


async def test_emit_during_shutdown_is_refused(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner({"runner": {"shutdown_grace_s": 5.0}})
    release = asyncio.Event()
    followed: list[str | None] = []

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> None:
        await release.wait()
        # A handler draining inside the grace period may still emit its follow-ups.
        followed.append(await ctx.emit("after", 1))

    await runner.start()
    await runner.emit("t", 1)
    await eventually(lambda: runner.statistics().pool.busy == 1, what="a running handler")
    closing = asyncio.create_task(runner.aclose())
    await eventually(lambda: runner.state is RunnerState.CLOSING, what="the runner to start closing")
    with pytest.raises(LifecycleError, match="Cannot emit: the Runner is shutting down"):
        await runner.emit("t", 2)
    with pytest.raises(LifecycleError, match="shutting down"):
        runner.emit_nowait("t", 2)
    with pytest.raises(LifecycleError, match="shutting down"):
        await runner.emit_many("t", [2])
    with pytest.raises(LifecycleError, match="shutting down"):
        await runner.request("t", 2)
    release.set()
    await asyncio.wait_for(closing, TIMEOUT_S)
    s = runner.statistics()
    assert s.handled == 1 and s.emitted == 1 + len([f for f in followed if f])
    assert s.shutdown is not None and s.shutdown.drained
