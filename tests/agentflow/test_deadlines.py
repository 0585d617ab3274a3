"""Request timeouts with one shared timer (agentflow._deadlines) and through runner.request."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from agentflow import BackpressureError, Context, Event, LifecycleError, RequestTimeoutError
from agentflow._deadlines import Deadlines, TimedTask, expire_task
from agentflow.requests import PendingRequests

if TYPE_CHECKING:
    from conftest import RunnerFactory


async def test_requests_expire_in_order_and_answered_ones_never_do() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, str, float, float]] = []
    d = Deadlines(0.05, lambda eid, topic, t: expired.append((eid, topic, t, loop.time())))
    start = loop.time()
    d.add(loop, "a", "t", 0.05)
    first_timer = d._timer
    await asyncio.sleep(0.02)
    d.add(loop, "b", "t", 0.05)
    d.add(loop, "c", "t", 0.05)
    assert d._timer is first_timer  # one timer for all of them
    d.discard("a")  # answered in time: the timer fires at its deadline, finds b not due, and re-arms
    assert len(d) == 2
    await asyncio.sleep(0.15)
    assert [(e, topic, t) for e, topic, t, _ in expired] == [("b", "t", 0.05), ("c", "t", 0.05)]
    assert all(at >= start + 0.02 + 0.05 for *_, at in expired)  # never before its own deadline
    assert len(d) == 0 and d._timer is None


async def test_other_timeouts_get_their_own_timer_and_close_cancels_everything() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    d = Deadlines(10.0, lambda eid, topic, t: expired.append(f"{eid}:{t:g}"))
    d.add(loop, "short", "t", 0.01)
    d.add(loop, "long", "t", 10.0)
    d.add(loop, "gone", "t", 0.01)
    d.discard("gone")
    await asyncio.sleep(0.05)
    assert expired == ["short:0.01"]
    d.close()
    assert len(d) == 0 and d._timer is None


async def _bounded(deadlines: Deadlines, timeout_s: float, work: asyncio.Future[None] | None = None) -> str:
    """What a bounded wait ends with: "done", "timeout" (our timer) or a CancelledError from outside."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    timed = TimedTask(task)
    deadlines.add(loop, timed, None, timeout_s)
    try:
        await (work if work is not None else asyncio.sleep(10))
    except asyncio.CancelledError:
        if timed.timed_out():
            return "timeout"
        raise
    else:
        timed.settle()
        return "done"
    finally:
        deadlines.discard(timed)


async def test_a_timed_task_tells_its_timer_from_a_cancellation_from_outside() -> None:
    # The one helper behind the LLM client's request timer and every tool's timeout.
    deadlines = Deadlines(0.02, expire_task)
    assert await _bounded(deadlines, 0.02) == "timeout"
    assert await _bounded(deadlines, 0.05) == "timeout"  # a timeout of its own: its own timer, same rule
    task = asyncio.create_task(_bounded(deadlines, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()  # from outside: propagates untouched
    try:
        await task
        raise AssertionError("the cancellation was swallowed")
    except asyncio.CancelledError:
        pass
    assert len(deadlines) == 0


async def test_a_timed_task_that_swallowed_the_timers_cancellation_takes_it_back() -> None:
    deadlines = Deadlines(0.01, expire_task)
    loop = asyncio.get_running_loop()

    async def stubborn() -> tuple[str, int]:
        fut: asyncio.Future[None] = loop.create_future()
        loop.call_later(0.03, fut.set_result, None)
        task = asyncio.current_task()
        assert task is not None
        timed = TimedTask(task)
        deadlines.add(loop, timed, None, 0.01)
        try:
            await asyncio.shield(fut)  # the timer's cancellation lands here ...
        except asyncio.CancelledError:
            await fut  # ... and the work finishes anyway
        timed.settle()
        deadlines.discard(timed)
        return "done", task.cancelling()

    assert await asyncio.create_task(stubborn()) == ("done", 0)


async def test_runner_requests_time_out_with_the_default_and_with_their_own(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"request_timeout_s": 0.1}})
    release = asyncio.Event()

    @runner.agent("slow")
    async def slow(event: Event, ctx: Context) -> str:
        await release.wait()
        return "late"

    @runner.agent("fast")
    async def fast(event: Event, ctx: Context) -> str:
        return "ok"

    async with runner:
        results = await asyncio.gather(
            runner.request("slow", 1),
            runner.request("slow", 2, timeout_s=0.05),
            *(runner.request("fast", i) for i in range(50)),
            return_exceptions=True,
        )
        assert all(isinstance(r, RequestTimeoutError) for r in results[:2])
        assert "within 0.1 s" in str(results[0]) and "within 0.05 s" in str(results[1])
        assert results[2:] == ["ok"] * 50
        assert len(runner._requests) == 0 and runner._requests._timer is None  # nothing waits, no timer armed
        release.set()
        await runner.drain()


async def test_pending_requests_with_the_default_and_their_own_timeouts_resolve_fail_and_close() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    refused: dict[str, int] = {}
    pending = PendingRequests(10.0, 3, refused, lambda eid, exc: expired.append(eid))
    default, own, short = (pending.open(loop, eid, "t", t) for eid, t in (("a", None), ("b", 5.0), ("c", 0.01)))
    assert len(pending) == 3 and "a" in pending and "b" in pending and "x" not in pending
    with pytest.raises(BackpressureError, match="3 requests already wait"):
        pending.open(loop, "d", "t", None)
    assert refused == {"max_pending_requests": 1}
    pending.resolve("a", 1)  # the shared timer's entry
    pending.resolve("b", 2)  # a timer of its own
    assert (await default, await own) == (1, 2)
    await asyncio.sleep(0.05)  # c is due: failed, counted, and no longer waiting; its caller never looked
    assert expired == ["c"] and short.done() and "c" not in pending
    for eid in "abc":
        pending.close_request(eid)
    assert len(pending) == 0
    late = pending.open(loop, "e", "t", 5.0)
    pending.fail_all(lambda: LifecycleError("closed"))
    with pytest.raises(LifecycleError):
        await late
    assert len(pending) == 0
