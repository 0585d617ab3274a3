"""The raw baseline: the same work shape as the noop scenario on a bare asyncio.Queue, no framework.

It is what a careful engineer would write by hand, sized like the runner it is compared with:

* throughput and latency modes: one producer ``await q.put(item)`` per item into
  ``asyncio.Queue(maxsize=runner.event_buffer_size)``, and ``runner.worker_pool_size`` consumer tasks each
  looping ``item = await q.get(); await handler(item); q.task_done()``; the end is ``await q.join()``.
  It stays an item-by-item pipeline even when agentflow is run with ``--batch-size``: the ratio then says
  what batching buys over the pipeline a careful engineer writes item by item.
* closed mode: each virtual user puts ``(payload, future)`` and awaits the future; a consumer runs the
  handler and sets the future's result.

The handler does exactly what the noop agent does in the same mode: nothing (closed), record
``time.time() - created_at`` (throughput), or record ``perf_counter() - intended`` (latency).

The bare pipeline (:meth:`RawPipeline.run_bare`, side ``bare``, throughput mode) is the same queue and consumers
with no per-event work at all: the producer puts the payload and each consumer only takes and marks it done. It is
the ceiling of an asyncio pipeline on this machine; the ``raw`` side adds the measurement work agentflow's noop
agent does (a clock read at emit and a histogram record per event), which costs about as much as the queue itself.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from time import perf_counter, time
from typing import Any

from rich.progress import Progress

from agentflow import LatencyHistogram, RunnerConfig

from .measure import (
    REFRESH_LATENCY_S,
    Limits,
    RunResult,
    Tally,
    Ticker,
    closed_loop,
    cpu_seconds,
    flood,
    paced,
    planned_events,
)

__all__ = ["RawPipeline"]

LABEL = "raw"
BARE_LABEL = "bare"


class RawPipeline:
    """Runs the baseline in one of the three modes; each ``run_*`` builds a fresh queue and consumers."""

    def __init__(self, config: RunnerConfig, progress: Progress | None) -> None:
        self.buffer_size = config.event_buffer_size
        self.consumers = config.worker_pool_size
        self._progress = progress

    async def _consume(self, q: asyncio.Queue[Any], handler: Callable[[Any], Awaitable[None]]) -> None:
        get = q.get
        done = q.task_done
        while True:
            item = await get()
            await handler(item)
            done()

    async def run_closed(self, payload: Any, users: int, limits: Limits, label: str = LABEL) -> RunResult:
        q: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue(maxsize=self.buffer_size)
        loop = asyncio.get_running_loop()

        async def handler(_payload: Any) -> Any:
            return None

        async def consume() -> None:
            get = q.get
            while True:
                item, fut = await get()
                result = await handler(item)
                if not fut.done():
                    fut.set_result(result)

        async def request() -> Any:
            fut = loop.create_future()
            await q.put((payload, fut))
            return await fut

        tally = Tally()
        gc.collect()
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(consume()) for _ in range(self.consumers)]
            async with Ticker(self._progress, label, limits, tally.finished):
                cpu0, t0 = cpu_seconds(), perf_counter()
                hist = await closed_loop(request, users, limits, (), tally)
                duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
            for w in workers:
                w.cancel()
        return RunResult(label, tally.issued, tally.completed, tally.errors, duration, cpu, hist)

    async def run_throughput(self, payload: Any, limits: Limits, label: str = LABEL) -> RunResult:
        q: asyncio.Queue[tuple[Any, float]] = asyncio.Queue(maxsize=self.buffer_size)
        hist = LatencyHistogram()

        async def handler(item: tuple[Any, float]) -> None:
            hist.record(time() - item[1])

        put = q.put

        def emit(p: Any) -> Awaitable[None]:
            return put((p, time()))

        tally = Tally()
        gc.collect()
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(self._consume(q, handler)) for _ in range(self.consumers)]
            async with Ticker(self._progress, label, limits, lambda: hist.count):
                cpu0, t0 = cpu_seconds(), perf_counter()
                await flood(emit, None, 1, payload, limits, tally)
                await q.join()
                duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
            for w in workers:
                w.cancel()
        return RunResult(label, tally.issued, hist.count, 0, duration, cpu, hist)

    async def run_bare(self, payload: Any, limits: Limits, label: str = BARE_LABEL) -> RunResult:
        """Throughput of the queue alone: no clock read, no record; ``q.join()`` says every item was consumed."""
        q: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.buffer_size)
        taken = [0]

        async def consume() -> None:
            get, done = q.get, q.task_done
            n = 0
            try:
                while True:
                    await get()
                    done()
                    n += 1
            finally:
                taken[0] += n  # counted once, when cancelled: no per-event work

        tally = Tally()
        gc.collect()
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(consume()) for _ in range(self.consumers)]
            async with Ticker(self._progress, label, limits, lambda: tally.issued):
                cpu0, t0 = cpu_seconds(), perf_counter()
                await flood(q.put, None, 1, payload, limits, tally)
                await q.join()
                duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
            for w in workers:
                w.cancel()
        return RunResult(label, tally.issued, taken[0], 0, duration, cpu, None)

    async def run_latency(
        self, limits: Limits, load_fraction: float, saturation_limits: Limits, label: str = LABEL
    ) -> RunResult:
        q: asyncio.Queue[float] = asyncio.Queue(maxsize=self.buffer_size)
        hists = [LatencyHistogram()]

        async def handler(intended: float) -> None:
            hists[-1].record(perf_counter() - intended)

        tally = Tally()
        gc.collect()
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(self._consume(q, handler)) for _ in range(self.consumers)]
            async with Ticker(self._progress, f"{label} saturation", saturation_limits, lambda: hists[-1].count):
                t0 = perf_counter()
                await flood(q.put, None, 1, None, saturation_limits, tally, stamp=True)
                await q.join()
                saturation = tally.issued / (perf_counter() - t0)
            rate = saturation * load_fraction
            hists.append(LatencyHistogram())
            tally = Tally()
            desc = f"{label} at {rate:,.0f}/s"
            async with Ticker(self._progress, desc, limits, lambda: hists[-1].count, REFRESH_LATENCY_S):
                cpu0, t0 = cpu_seconds(), perf_counter()
                await paced(q.put, None, 1, rate, limits, tally)
                await q.join()
                duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
            for w in workers:
                w.cancel()
        hist = hists[-1]
        planned = planned_events(limits, rate) / rate
        return RunResult(
            label,
            tally.issued,
            hist.count,
            0,
            duration,
            cpu,
            hist,
            saturation_per_s=saturation,
            rate_per_s=rate,
            planned_s=planned,
        )
