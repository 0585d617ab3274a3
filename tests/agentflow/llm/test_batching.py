"""Micro-batcher with real asyncio: a lone caller never waits, items wait only while a batch is in flight; size,
token, time and deadline flushes; cancellation before dispatch; one failed batch fails only its callers;
wrong-length results; adaptive mode; close; metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agentflow import BatchError, BatchItemTooLargeError, LifecycleError, Metrics, MicroBatcher


class Upstream:
    """A dispatch function that records its batches; ``gate`` holds dispatches until set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: set[int] = set()
        self.short = False
        self.arrived = asyncio.Event()

    async def until(self, n: int) -> None:
        """Until ``n`` batches have been dispatched."""
        while len(self.batches) < n:
            self.arrived.clear()
            await self.arrived.wait()

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.batches.append(list(items))
        self.arrived.set()
        await self.gate.wait()
        if self.fail_on & set(items):
            raise RuntimeError(f"upstream rejected batch {items}")
        out = [i * 10 for i in items]
        return out[:-1] if self.short else out


async def busy(b: MicroBatcher[int, int], up: Upstream, item: int = -1) -> asyncio.Task[int]:
    """Hold one batch in flight (``up.gate`` cleared), so the items submitted next wait for a batch of their own."""
    up.gate.clear()
    sent = len(up.batches)
    first = asyncio.create_task(b.submit(item))
    await up.until(sent + 1)
    return first


async def test_a_lone_caller_is_sent_at_once_not_after_max_wait() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=32, max_wait_ms=60_000) as b:
        for i in range(3):  # one at a time: nobody else is waiting, so waiting could only add latency
            assert await asyncio.wait_for(b.submit(i), 5) == i * 10
        s = b.statistics()
    assert up.batches == [[0], [1], [2]]
    assert s.flushes["idle"] == 3 and s.flushes["time"] == 0 and s.mean_queue_wait_s < 1.0


async def test_concurrent_callers_share_a_batch_and_those_arriving_during_a_dispatch_share_the_next() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=32, max_wait_ms=60_000) as b:
        together = await asyncio.wait_for(asyncio.gather(*(b.submit(i) for i in range(8))), 5)
        assert together == [i * 10 for i in range(8)]
        first = await busy(b, up, 100)
        later = [asyncio.create_task(b.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        assert up.batches[-1] == [100] and b.statistics().pending == 3  # they wait for the batch in flight
        up.gate.set()  # it comes back: the three go out together, without waiting out max_wait_ms
        assert await asyncio.wait_for(asyncio.gather(*later), 5) == [0, 10, 20] and await first == 1000
    assert up.batches == [list(range(8)), [100], [0, 1, 2]]
    assert b.statistics().flushes["idle"] == 3


async def test_a_full_batch_goes_out_at_once_without_waiting() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=4, max_wait_ms=60_000) as b:
        results = await asyncio.gather(*(b.submit(i) for i in range(8)))
    assert results == [i * 10 for i in range(8)]
    assert up.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]
    s = b.statistics()
    assert (s.batches, s.items, s.mean_batch_size, s.mean_fill_ratio, s.flushes["size"]) == (2, 8, 4.0, 1.0, 2)
    assert s.batch_size_histogram == ((4, 2),)


async def test_a_partial_batch_goes_out_after_max_wait_while_another_is_in_flight() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=100, max_wait_ms=5) as b:
        first = await busy(b, up, 0)
        waiting = asyncio.gather(b.submit(1), b.submit(2))
        await up.until(2)  # the first batch is still out: only max_wait_ms sends these
        assert b.statistics().flushes["time"] == 1
        up.gate.set()
        assert await waiting == [10, 20] and await first == 0
        s = b.statistics()
    assert up.batches == [[0], [1, 2]] and s.mean_fill_ratio == 0.015


async def test_the_token_budget_splits_batches() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=100, max_wait_ms=60_000, max_batch_tokens=10) as b:
        first = await busy(b, up, 9)
        out = asyncio.gather(*(b.submit(i, tokens=t) for i, t in enumerate([4, 4, 4, 6])))
        with pytest.raises(BatchItemTooLargeError, match="11 tokens is over"):
            await b.submit(99, tokens=11)
        last = asyncio.create_task(b.submit(4, tokens=1))
        await asyncio.sleep(0)
        up.gate.set()
    assert await out == [0, 10, 20, 30] and await last == 40 and await first == 90
    # 4+4 fits and a third 4 would overflow 10, so [0, 1] goes; 4+6 reaches 10, so [2, 3] goes; close sends [4].
    assert up.batches == [[9], [0, 1], [2, 3], [4]]
    assert b.statistics().flushes == {"size": 0, "tokens": 2, "idle": 1, "time": 0, "deadline": 0, "close": 1}


async def test_the_tightest_caller_deadline_flushes_the_batch() -> None:
    up = Upstream()
    loop = asyncio.get_running_loop()
    async with MicroBatcher(up, max_batch_size=100, max_wait_ms=60_000) as b:
        first = await busy(b, up, 0)
        relaxed = asyncio.create_task(b.submit(1, deadline=loop.time() + 3600))
        await asyncio.sleep(0)
        urgent = asyncio.create_task(b.submit(2, deadline=loop.time() + 0.02))
        await up.until(2)
        assert b.statistics().flushes["deadline"] == 1
        up.gate.set()
        assert await asyncio.wait_for(urgent, 10) == 20
        assert relaxed.done() and relaxed.result() == 10 and await first == 0
    assert up.batches == [[0], [1, 2]]


async def test_a_caller_cancelled_before_dispatch_is_left_out_and_does_not_hang_the_batch() -> None:
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=3, max_wait_ms=60_000) as b:
        first = await busy(b, up, 0)
        gone = asyncio.create_task(b.submit(1))
        stays = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.statistics().pending == 1
        results = asyncio.gather(b.submit(3), b.submit(4))  # fills the batch with the one that stayed
        await asyncio.sleep(0)
        up.gate.set()
        assert await results == [30, 40] and await stays == 20 and await first == 0
        first = await busy(b, up, 0)
        lonely = asyncio.create_task(b.submit(5))
        await asyncio.sleep(0)
        lonely.cancel()  # the only pending caller: nothing is dispatched for it, ever
        with pytest.raises(asyncio.CancelledError):
            await lonely
        up.gate.set()
        assert await first == 0
    assert up.batches == [[0], [2, 3, 4], [0]]
    assert b.statistics().cancelled == 2


async def test_a_caller_cancelled_during_dispatch_does_not_disturb_the_others() -> None:
    up = Upstream()
    up.gate.clear()
    async with MicroBatcher(up, max_batch_size=2, max_wait_ms=60_000) as b:
        first = asyncio.create_task(b.submit(1))
        second = asyncio.create_task(b.submit(2))
        await asyncio.sleep(0.01)
        assert up.batches == [[1, 2]]
        first.cancel()
        up.gate.set()
        assert await second == 20
    assert first.cancelled()


async def test_a_failed_dispatch_fails_only_its_own_callers_with_the_real_error() -> None:
    up = Upstream()
    up.fail_on = {3}
    async with MicroBatcher(up, max_batch_size=2, max_wait_ms=60_000) as b:
        results = await asyncio.gather(*(b.submit(i) for i in range(6)), return_exceptions=True)
    assert results[:2] == [0, 10] and results[4:] == [40, 50]
    assert all(isinstance(r, RuntimeError) and "upstream rejected batch [2, 3]" in str(r) for r in results[2:4])
    assert b.statistics().failed_batches == 1


async def test_a_dispatch_returning_the_wrong_number_of_results_fails_its_callers_clearly() -> None:
    up = Upstream()
    up.short = True
    async with MicroBatcher(up, max_batch_size=3, max_wait_ms=60_000, name="emb") as b:
        results = await asyncio.gather(*(b.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, BatchError) for r in results)
    assert "dispatch returned 2 results for 3 items" in str(results[0])


async def test_adaptive_mode_sends_a_lone_request_far_sooner_than_max_wait() -> None:
    up = Upstream()
    # max_wait_ms is 20 s: a fixed wait would hold a lone request that long; adaptive mode starts at no wait.
    async with MicroBatcher(up, max_batch_size=64, max_wait_ms=20_000, adaptive=True) as b:
        for i in range(5):
            assert await asyncio.wait_for(b.submit(i), 10) == i * 10  # one at a time: light load
        s = b.statistics()
        assert s.current_wait_ms == 0.0 and s.mean_queue_wait_s < 2.0  # < 10 % of max_wait_ms
        # Under load, batches that gained items by waiting grow the wait toward max_wait_ms.
        # Under load (a batch in flight), batches that gained items by waiting grow the wait toward max_wait_ms.
        first = await busy(b, up, 99)
        rest = asyncio.gather(*(b.submit(i) for i in range(10)))
        await up.until(7)
        up.gate.set()
        await rest
        assert await first == 990
        assert b.statistics().current_wait_ms > 0.0
    assert up.batches[:5] == [[0], [1], [2], [3], [4]]
    assert up.batches[6] == list(range(10))


async def test_adaptive_mode_backs_off_when_over_the_latency_target() -> None:
    async def slow(items: list[int]) -> list[int]:
        await asyncio.sleep(0.02)
        return items

    b: MicroBatcher[int, int] = MicroBatcher(slow, max_wait_ms=100, adaptive=True, target_latency_ms=1)
    b._wait_s = 0.05  # as if load had grown it
    await asyncio.gather(b.submit(1), b.submit(2))
    assert b.statistics().current_wait_ms == 25.0  # halved: the batch took longer than the target
    await b.aclose()


async def test_close_sends_what_is_pending_refuses_new_items_and_is_idempotent() -> None:
    up = Upstream()
    b: MicroBatcher[int, int] = MicroBatcher(up, max_batch_size=100, max_wait_ms=60_000)
    pending = [asyncio.create_task(b.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    await b.aclose()
    assert [await p for p in pending] == [0, 10, 20]
    with pytest.raises(LifecycleError, match="is closed"):
        await b.submit(9)
    await b.aclose()


async def test_close_with_a_hung_dispatch_fails_its_callers_after_the_timeout() -> None:
    up = Upstream()
    up.gate.clear()  # never answers
    b: MicroBatcher[int, int] = MicroBatcher(up, max_batch_size=1, max_wait_ms=0)
    caller = asyncio.create_task(b.submit(1))
    await asyncio.sleep(0.01)
    await b.aclose(timeout_s=0.01)
    with pytest.raises(LifecycleError, match="closed mid-dispatch"):
        await caller


async def test_metrics_render_batch_size_fill_ratio_and_queue_wait() -> None:
    metrics = Metrics()
    up = Upstream()
    async with MicroBatcher(up, max_batch_size=4, max_wait_ms=1, name="embed", metrics=metrics) as b:
        await asyncio.gather(*(b.submit(i) for i in range(5)))
    text = metrics.render().decode()
    assert 'agentflow_batch_size_bucket{batcher="embed",le="1.0"} 1.0' in text
    assert 'agentflow_batch_size_bucket{batcher="embed",le="4.0"} 2.0' in text
    assert 'agentflow_batch_size_sum{batcher="embed"} 5.0' in text
    assert 'agentflow_batch_fill_ratio_bucket{batcher="embed",le="0.3"} 1.0' in text
    assert 'agentflow_batch_queue_wait_seconds_count{batcher="embed"} 5.0' in text
    assert "mean_size=2.5" in repr(b)
