"""WorkerPool on its own (slots, FIFO hand-over, cancellation safety) and through a Runner (limits, timeouts)."""

from __future__ import annotations

import asyncio
import random
import re
from typing import TYPE_CHECKING, Any

import pytest

from agentflow import Context, DeadLetteredError, Event, WorkerPool

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 5.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def hold(pool: WorkerPool) -> None:
    if not pool.try_acquire():
        await pool.acquire()


# ---- the pool alone ----------------------------------------------------------------------------------------


async def test_slot_limit_is_never_exceeded_under_many_acquirers() -> None:
    pool = WorkerPool(4, max_queued=1000)
    rng = random.Random(7)
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        await hold(pool)
        try:
            running += 1
            peak = max(peak, running)
            assert pool.busy <= pool.size
            await asyncio.sleep(rng.choice([0, 0, 0.001, 0.002]))
        finally:
            running -= 1
            pool.release()

    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*(work() for _ in range(300)))
    assert peak == 4
    s = pool.statistics()
    assert (s.busy, s.waiting, s.size) == (0, 0, 4)


async def test_slots_are_handed_over_fifo() -> None:
    pool = WorkerPool(1, max_queued=10)
    assert pool.try_acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await pool.acquire()
        order.append(i)
        await asyncio.sleep(0)
        pool.release()

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(waiter(i)))
        await settle()
    assert pool.statistics().waiting == 8
    # A newcomer may not jump the queue while others wait, even at the instant a slot frees up.
    pool.release()
    assert not pool.try_acquire()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*tasks)
    assert order == list(range(8))
    assert pool.busy == 0


async def test_cancelled_waiters_never_leak_a_slot() -> None:
    pool = WorkerPool(3, max_queued=1000)
    rng = random.Random(1234)
    finished = 0

    async def work() -> None:
        nonlocal finished
        await hold(pool)
        try:
            await asyncio.sleep(rng.choice([0, 0.0005, 0.001]))
        finally:
            pool.release()
        finished += 1

    tasks = [asyncio.create_task(work()) for _ in range(200)]
    # Cancel at random points: while waiting, just after being handed a slot, while holding it.
    for _ in range(60):
        await asyncio.sleep(rng.choice([0, 0, 0.0005]))
        rng.choice(tasks).cancel()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(t.cancelled() for t in tasks) > 0
    assert finished > 0
    s = pool.statistics()
    assert (s.busy, s.waiting) == (0, 0)
    assert all(pool.try_acquire() for _ in range(3)), "every slot can be taken again"
    assert not pool.try_acquire()


async def test_a_waiter_cancelled_right_after_the_hand_over_passes_the_slot_on() -> None:
    pool = WorkerPool(1, max_queued=10)
    assert pool.try_acquire()
    w1 = asyncio.create_task(pool.acquire())
    await settle()
    w2 = asyncio.create_task(pool.acquire())
    await settle()
    pool.release()  # hands the slot to w1 ...
    w1.cancel()  # ... which is cancelled before it runs
    async with asyncio.timeout(TIMEOUT_S):
        await w2
    assert w1.cancelled()
    assert pool.busy == 1
    pool.release()
    assert pool.statistics().busy == 0


async def test_statistics_and_repr_show_live_state() -> None:
    pool = WorkerPool(2, max_queued=16)
    assert repr(pool) == "<WorkerPool busy=0/2 queued=0/16 done=0 failed=0>"
    assert pool.try_acquire() and pool.try_acquire()
    waiter = asyncio.create_task(pool.acquire())
    await settle()
    s = pool.statistics()
    assert (s.size, s.busy, s.waiting, s.max_queued, s.timeouts) == (2, 2, 1, 16, 0)
    assert repr(pool).startswith("<WorkerPool busy=2/2 ")
    pool.release()
    await waiter
    pool.release()
    pool.release()
    assert repr(pool) == "<WorkerPool busy=0/2 queued=0/16 done=0 failed=0>"


def test_pool_needs_a_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        WorkerPool(0, max_queued=1)


# ---- the pool inside a Runner ------------------------------------------------------------------------------


class Gauge:
    """Counts handlers running at once inside the handlers themselves."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def run(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def test_worker_pool_size_bounds_handlers_across_agents(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 2}})
    gauge = Gauge()
    per_agent: dict[str, Gauge] = {}

    def register(topic: str) -> None:
        mine = per_agent[topic] = Gauge()

        @runner.agent(topic, name=f"agent-{topic}")
        async def handle(event: Event, ctx: Context) -> None:
            mine.now += 1
            try:
                await gauge.run(0.01)
            finally:
                mine.now -= 1

    for topic in ("a", "b", "c"):
        register(topic)
    async with runner:
        for i in range(10):
            for topic in ("a", "b", "c"):
                await runner.emit(topic, i, key=f"k{i}")
        busy_seen = []
        while runner.statistics().handled < 30:
            busy_seen.append(runner.statistics().pool.busy)
            await asyncio.sleep(0.002)
        await runner.drain(timeout_s=TIMEOUT_S)
        assert gauge.peak == 2
        assert max(busy_seen) <= 2
        assert runner.statistics().pool.busy == 0
        assert runner.statistics().handled == 30


async def test_agent_concurrency_one_runs_one_at_a_time(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 8}, "agents": {"narrowed_agent": {"concurrency": 1}}})
    single, narrowed, wide = Gauge(), Gauge(), Gauge()

    @runner.agent("single", concurrency=1)
    async def single_agent(event: Event, ctx: Context) -> None:
        await single.run(0.005)

    @runner.agent("narrowed", concurrency=4)  # the config says 1
    async def narrowed_agent(event: Event, ctx: Context) -> None:
        await narrowed.run(0.005)

    @runner.agent("wide", concurrency=4)
    async def wide_agent(event: Event, ctx: Context) -> None:
        await wide.run(0.005)

    async with runner:
        for topic in ("single", "narrowed", "wide"):
            await runner.emit_many(topic, list(range(20)))  # no key: nothing else orders them
        await runner.drain(timeout_s=TIMEOUT_S)
        stats = {a.name: a for a in runner.statistics().agents}
    assert single.peak == 1
    assert narrowed.peak == 1
    assert wide.peak > 1, "the contrast agent proves events could have overlapped"
    assert stats["single_agent"].concurrency == 1
    assert stats["narrowed_agent"].concurrency == 1
    assert stats["wide_agent"].concurrency == 4
    assert all(a.handled == 20 for a in stats.values())


@pytest.mark.parametrize("where", ["decorator", "default", "config"])
async def test_timeout_cancels_the_handler_and_counts_a_failed_attempt(
    make_runner: RunnerFactory, eventually: Eventually, where: str
) -> None:
    config: dict[str, Any] = {"retry": {"max_attempts": 2, "initial_backoff_s": 0, "jitter_s": 0}}
    decorator_timeout: float | None = None
    if where == "decorator":
        decorator_timeout = 0.05
    elif where == "default":
        config["runner"] = {"event_timeout_s": 0.05}
    else:  # the config overrides a generous decorator timeout
        decorator_timeout = 30.0
        config["agents"] = {"slow": {"timeout_s": 0.05}}
    runner = make_runner(config)
    saw_cancel: list[int] = []

    @runner.agent("t", timeout_s=decorator_timeout)
    async def slow(event: Event, ctx: Context) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            saw_cancel.append(ctx.attempt)
            raise

    async with runner:
        assert runner.statistics().agents[0].timeout_s == pytest.approx(0.05)
        await runner.emit("t", "x")
        await eventually(lambda: runner.statistics().dead_lettered == 1, what="the timed-out event's dead letter")
        s = runner.statistics()
        [letter] = await runner.dlq.list()
    assert saw_cancel == [1, 2]
    assert s.agents[0].failed_attempts == 2
    assert s.agents[0].retries == 1
    assert s.agents[0].handled == 0
    assert s.pool.timeouts == 2
    assert letter.reason == "timeout" and letter.error_type == "HandlerTimeoutError"
    assert re.search(r"took longer than 0\.05 s", letter.error)


async def test_config_timeout_may_also_lengthen_the_decorator_timeout(make_runner: RunnerFactory) -> None:
    runner = make_runner({"agents": {"patient": {"timeout_s": 5.0}}})

    @runner.agent("t", timeout_s=0.02)
    async def patient(event: Event, ctx: Context) -> str:
        await asyncio.sleep(0.15)
        return "done"

    async with runner:
        assert await runner.request("t", None, timeout_s=TIMEOUT_S) == "done"
        s = runner.statistics()
    assert s.agents[0].timeout_s == 5.0
    assert (s.agents[0].failed_attempts, s.pool.timeouts) == (0, 0)


async def test_a_handler_may_clean_up_asynchronously_after_its_timeout(make_runner: RunnerFactory) -> None:
    # asyncio.timeout semantics: the handler is cancelled once; its cleanup (a finally that awaits, say closing
    # a connection) runs to the end, and the agent keeps working afterwards.
    runner = make_runner({"retry": {"max_attempts": 2, "initial_backoff_s": 0, "jitter_s": 0}})
    log: list[tuple[str, int]] = []

    @runner.agent("t", timeout_s=0.05, concurrency=2)
    async def tidy(event: Event, ctx: Context) -> str:
        if event.payload == "fast":
            return "ok"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            try:
                await asyncio.sleep(0.03)
            except asyncio.CancelledError:
                log.append(("cleanup cancelled", ctx.attempt))
                raise
            log.append(("cleanup done", ctx.attempt))
            raise
        return "unreachable"

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("t", "slow", timeout_s=2.0)
        assert info.value.reason == "timeout"
        assert await runner.request("t", "fast", timeout_s=2.0) == "ok"
        s = runner.statistics()
    assert log == [("cleanup done", 1), ("cleanup done", 2)]
    assert (s.agents[0].failed_attempts, s.pool.timeouts, s.agents[0].returned) == (2, 2, 0)
