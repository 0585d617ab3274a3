"""Bugs of the hardening pass, each reproduced: a non-finite created_at on a shared bus, a retry wait asked for by
the failure that no bound capped, and a Runner.aclose cancelled twice."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from conftest import RunnerFactory

from agentflow import Event, MemoryBus, Retry, RetryConfig, RetryPolicy, RunnerState
from agentflow.metrics import Pow2Histogram


@pytest.mark.parametrize("created_at", [math.nan, math.inf, -math.inf])
async def test_an_event_with_a_non_finite_created_at_on_a_shared_bus_is_handled_and_the_runner_goes_on(
    make_runner: RunnerFactory, created_at: float
) -> None:
    # Published as an object on a MemoryBus the runner shares: no codec checks it on the way.
    bus = MemoryBus()
    runner = make_runner(bus=bus)
    handled: list[str] = []

    @runner.agent("t", concurrency=1)
    async def work(event: Event, ctx: object) -> None:
        handled.append(event.id)

    async with runner:
        await bus.publish("t", [Event(topic="t", payload=1, id="bad", created_at=created_at)])
        await runner.emit("t", 2)
        await runner.drain(timeout_s=5)
        assert handled[0] == "bad" and len(handled) == 2
        assert runner.state is RunnerState.RUNNING
        waits = runner.metrics.agent("work").queue_wait
        assert waits.count == 2 and math.isfinite(waits.sum)
    await bus.aclose()


async def test_the_hot_path_files_each_queue_wait_where_pow2histogram_observe_does(
    make_runner: RunnerFactory,
) -> None:
    # AgentWorker._work writes observe out for speed: the values it files must land where observe files them.
    bus = MemoryBus()
    runner = make_runner(bus=bus)

    @runner.agent("t", concurrency=1)
    async def work(event: Event, ctx: object) -> None:
        return None

    now = time.time()
    created = [math.nan, math.inf, -math.inf, now + 3600.0, -1e300, 0.0, now - 0.25]
    async with runner:
        waits = runner.metrics.agent("work").queue_wait
        for i, c in enumerate(created):
            before = list(waits.counts)
            await bus.publish("t", [Event(topic="t", payload=i, id=f"e{i}", created_at=c)])
            await runner.drain(timeout_s=5)
            filed = [b for b, (x, y) in enumerate(zip(before, waits.counts, strict=True)) if y != x]
            reference = Pow2Histogram()
            reference.observe(time.time() - c)  # the wait, a moment later: the same bucket but for the last two
            expected = [b for b, n in enumerate(reference.counts) if n]
            if i < 5:  # non-finite, negative or beyond MAX_OBSERVED_S: clamped to 0 or the maximum, exactly
                assert filed == expected, (c, filed, expected)
            else:
                assert len(filed) == 1 and abs(filed[0] - expected[0]) <= 1, (c, filed, expected)
        assert waits.count == len(created) and math.isfinite(waits.sum)
        runs = runner.metrics.agent("work").duration
        assert runs.count == len(created) and math.isfinite(runs.sum) and runs.sum >= 0
    await bus.aclose()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-7, 0.25, 3e9])
def test_observe_and_observe_many_record_the_same_clamped_value(value: float) -> None:
    one, many = Pow2Histogram(), Pow2Histogram()
    one.observe(value)
    many.observe_many(value, 1)
    assert one.counts == many.counts and one.sum == many.sum
    assert math.isfinite(one.sum)


def test_a_wait_the_failure_asks_for_is_capped_at_max_after_s() -> None:
    policy = RetryPolicy(max_backoff_s=10.0, max_after_s=60.0)
    assert policy.delay_s(1, Retry(after_s=2.5)) == 2.5
    assert policy.delay_s(1, Retry(after_s=30.0)) == 30.0  # longer than max_backoff_s: asked for, honoured
    assert policy.delay_s(1, Retry(after_s=86_400.0)) == 60.0  # a day: cut to max_after_s
    assert RetryPolicy.from_config(RetryConfig(max_after_s=5.0)).delay_s(1, Retry(after_s=9.0)) == 5.0


async def test_aclose_cancelled_twice_still_closes_everything_and_later_calls_return(
    make_runner: RunnerFactory,
) -> None:
    bus = MemoryBus()
    runner = make_runner({"runner": {"shutdown_grace_s": 5.0}}, bus=bus)
    started = asyncio.Event()

    @runner.agent("t", concurrency=1)
    async def slow(event: Event, ctx: object) -> None:
        started.set()
        await asyncio.sleep(30)

    await runner.start()
    await runner.emit("t", 1)
    await started.wait()
    closing = asyncio.ensure_future(runner.aclose())
    await asyncio.sleep(0.05)  # draining: the handler runs for 30 s, the grace is 5 s
    closing.cancel()  # cuts the drain short
    await asyncio.sleep(0)
    closing.cancel()  # and again, while the cleanup runs
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert runner.state is RunnerState.CLOSED
    async with asyncio.timeout(2):
        await runner.aclose()  # returns at once, it does not wait forever
    stats = runner.statistics()
    assert stats.in_flight == 0 and stats.returned == 1  # the running event went back to the bus
    assert bus.statistics().buffered == 1
    await bus.aclose()
