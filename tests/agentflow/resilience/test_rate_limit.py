"""Rate limiter: the sliding-window math on a fake clock, then real asyncio: 500 concurrent callers, priority
order, the bounded queue, cancellation, token estimates corrected by adjust(), close."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentflow import LifecycleError, Metrics, RateLimiter, RateLimitQueueFullError, RateLimitTooLargeError


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_counts_requests_and_tokens_over_the_period() -> None:
    clock = Clock()
    lim = RateLimiter(rpm=3, tpm=100, clock=clock)
    for _ in range(3):
        assert lim.try_acquire(10)
        clock.now += 10
    assert not lim.try_acquire(1)  # a fourth request in the minute
    clock.now += 29.9
    assert not lim.try_acquire(1)
    clock.now += 0.1  # the first grant is a full period old: it leaves the window, the other two stay
    assert lim.try_acquire(70)
    assert not lim.try_acquire(1)
    s = lim.statistics()
    assert (s.window_requests, s.window_tokens, s.granted) == (3, 90, 4)


def test_token_limit_alone_and_too_large_calls() -> None:
    clock = Clock()
    lim = RateLimiter(tpm=1000, clock=clock, name="emb")
    assert lim.try_acquire(600)
    assert not lim.try_acquire(600)
    assert lim.try_acquire(400)
    with pytest.raises(RateLimitTooLargeError, match="1001 tokens can never fit rate limiter 'emb'"):
        lim.try_acquire(1001)
    with pytest.raises(ValueError):  # also a ValueError
        lim.try_acquire(5000)


def test_adjust_corrects_the_estimate_both_ways() -> None:
    clock = Clock()
    lim = RateLimiter(tpm=1000, clock=clock)
    assert lim.try_acquire(500)
    lim.adjust(+300)  # the call used 800
    assert not lim.try_acquire(300)
    lim.adjust(-700)  # takes back from the newest charges, never below zero
    assert lim.statistics().window_tokens == 100
    lim.adjust(-5000)
    assert lim.statistics().window_tokens == 0
    assert lim.try_acquire(1000)


async def test_500_concurrent_callers_never_exceed_the_limit_in_any_window() -> None:
    period = 0.1
    rpm = 50
    lim = RateLimiter(rpm=rpm, period_s=period, max_queue=1000, name="load")
    grants: list[float] = []

    async def caller() -> None:
        await lim.acquire()
        grants.append(time.monotonic())

    await asyncio.gather(*(caller() for _ in range(500)))
    assert len(grants) == 500
    s = lim.statistics()
    assert (s.granted, s.queued, s.rejected) == (500, 0, 0)
    # Callers record their time when they resume, a little after the grant; a window shortened by that slack
    # must still never hold more than rpm grants. Grants come in waves one period apart.
    slack = period * 0.3
    grants.sort()
    j = 0
    worst = 0
    for i, t in enumerate(grants):
        while grants[j] <= t - (period - slack):
            j += 1
        worst = max(worst, i - j + 1)
    assert worst <= rpm
    assert grants[-1] - grants[0] >= (500 // rpm - 1) * period * 0.99  # ten waves cannot take less than nine periods


async def test_waiters_are_served_in_priority_order_then_fifo() -> None:
    lim = RateLimiter(rpm=1, period_s=0.02)
    await lim.acquire()
    order: list[str] = []

    async def caller(tag: str, prio: int) -> None:
        await lim.acquire(priority=prio)
        order.append(tag)

    tasks = []
    for tag, prio in [("low-1", 5), ("high-1", 0), ("mid", 3), ("high-2", 0), ("low-2", 5)]:
        tasks.append(asyncio.create_task(caller(tag, prio)))
        await asyncio.sleep(0)  # enqueue in this order
    await asyncio.gather(*tasks)
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


async def test_the_queue_is_bounded_and_a_full_queue_refuses_at_once() -> None:
    metrics = Metrics()
    lim = RateLimiter(rpm=1, period_s=30, max_queue=2, name="tiny", metrics=metrics)
    await lim.acquire()
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(RateLimitQueueFullError, match="max_queue=2"):
        await lim.acquire()
    s = lim.statistics()
    assert (s.queued, s.rejected) == (2, 1)
    assert 'agentflow_rate_limit_queued{limiter="tiny"} 2.0' in metrics.render().decode()
    await lim.aclose()
    for w in waiters:
        with pytest.raises(LifecycleError, match="closed while this call waited"):
            await w
    with pytest.raises(LifecycleError):
        await lim.acquire()
    await lim.aclose()  # idempotent


async def test_a_cancelled_waiter_leaves_the_queue_and_consumes_nothing() -> None:
    lim = RateLimiter(rpm=2, period_s=0.05)
    await lim.acquire()
    await lim.acquire()
    first = asyncio.create_task(lim.acquire(priority=0))
    second = asyncio.create_task(lim.acquire(priority=1))
    await asyncio.sleep(0)
    assert lim.statistics().queued == 2
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert lim.statistics().queued == 1
    await second
    s = lim.statistics()
    assert (s.granted, s.cancelled, s.queued) == (3, 1, 0)
    assert "rpm=" in repr(lim) and "granted=3" in repr(lim)


async def test_a_waiter_cancelled_after_its_grant_gives_the_capacity_back() -> None:
    clock = Clock()
    lim = RateLimiter(rpm=1, clock=clock)
    assert lim.try_acquire()
    waiter = asyncio.create_task(lim.acquire())
    await asyncio.sleep(0)
    clock.now += 60
    lim.adjust(-1)  # any nudge re-checks the queue; the head is granted ...
    waiter.cancel()  # ... and cancelled before it resumed
    with pytest.raises(asyncio.CancelledError):
        await waiter
    s = lim.statistics()
    assert (s.window_requests, s.granted) == (0, 1)
    assert lim.try_acquire()


async def test_a_refunded_grant_leaves_the_window_and_lets_a_waiter_through() -> None:
    lim = RateLimiter(rpm=1, tpm=100, period_s=3600)
    grant = await lim.acquire(40)
    waiter = asyncio.create_task(lim.acquire(10))
    await asyncio.sleep(0)
    assert not waiter.done()
    lim.refund(grant)  # the call was never sent
    await asyncio.wait_for(waiter, 5)
    s = lim.statistics()
    assert (s.window_requests, s.window_tokens, s.granted) == (1, 10, 1)
    lim.refund(grant)  # a second refund of the same grant changes nothing
    assert lim.statistics().window_requests == 1


async def test_negative_adjust_lets_token_waiters_through_at_once() -> None:
    lim = RateLimiter(tpm=100, period_s=3600)
    await lim.acquire(90)
    waiter = asyncio.create_task(lim.acquire(50))
    await asyncio.sleep(0)
    assert not waiter.done()
    lim.adjust(-60)  # the first call used 30 tokens, not 90
    await asyncio.wait_for(waiter, 5)
    assert lim.statistics().window_tokens == 80
