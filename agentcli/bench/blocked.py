"""Part 2 of ``agentcli benchmark --scenario overload``: blocked emitters, agentflow against a bare asyncio.Queue.

A noop agent is held (its handlers wait on a gate) and its topic's buffer filled; then ``emitters`` tasks each
``await runner.emit(...)`` and block. The gate opens and the agent drains everything. Timed: first emitter
created → every emitter returned, split into *block* and *release*. The baseline does the same on a bare
``asyncio.Queue(maxsize=buffer)`` with ``worker_pool_size`` consumers held the same way and ``emitters`` blocked
``q.put`` putters. Each round runs both sides, the order alternating; the ratio is ``blocked_vs_raw``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

from rich.console import Console

from agentflow import BackpressureError, Context, Event, Runner, config_from_dict

from .measure import cpu_seconds
from .report import by_duration, median_run, round_sides
from .schema import BlockedFigures, Run

__all__ = ["BLOCKED_BUFFER", "SIDES", "blocked_emitters"]

TOPIC = "agentcli.overload"
#: The buffer both sides fill before the emitters start.
BLOCKED_BUFFER = 1000
SIDES = ("raw", "agentflow")


async def _fill(try_put: Callable[[int], object], full: type[BaseException]) -> int:
    """Put until the side refuses three times in a row with the consumers given time to take their share."""
    n = stalls = 0
    while stalls < 3:
        try:
            try_put(n)
        except full:
            stalls += 1
            await asyncio.sleep(0.005)
            continue
        n += 1
        stalls = 0
    return n


async def _blocked(
    put: Callable[[int], Awaitable[Any]], n: int, gate: asyncio.Event, check: Callable[[], None] | None = None
) -> tuple[float, float]:
    """Start ``n`` putters that all block, open the gate, wait for all of them; (block, release) seconds."""
    t0 = perf_counter()
    tasks = [asyncio.ensure_future(put(i)) for i in range(n)]
    await asyncio.sleep(0)  # every task runs its first step, up to where it blocks, before this returns
    t1 = perf_counter()
    if check is not None:
        check()
    gate.set()
    await asyncio.gather(*tasks)
    return t1 - t0, perf_counter() - t1


async def _blocked_raw(n: int, consumers: int) -> tuple[float, float]:
    q: asyncio.Queue[int] = asyncio.Queue(maxsize=BLOCKED_BUFFER)
    gate = asyncio.Event()

    async def consume() -> None:
        get, done = q.get, q.task_done
        while True:
            await get()
            if not gate.is_set():
                await gate.wait()
            done()

    workers = [asyncio.ensure_future(consume()) for _ in range(consumers)]
    try:
        await _fill(q.put_nowait, asyncio.QueueFull)
        block, release = await _blocked(q.put, n, gate)
        await q.join()
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return block, release


async def _blocked_agentflow(n: int, consumers: int, warnings: list[str]) -> tuple[float, float]:
    config = config_from_dict(
        {"runner": {"event_buffer_size": BLOCKED_BUFFER, "worker_pool_size": consumers, "max_waiting_emits": n}},
        source="agentcli benchmark --scenario overload",
    )
    runner = Runner(config)
    gate = asyncio.Event()

    @runner.agent(TOPIC, name="noop")
    async def noop(event: Event, ctx: Context) -> None:
        if not gate.is_set():
            await gate.wait()

    async with runner:
        await _fill(lambda i: runner.emit_nowait(TOPIC, i), BackpressureError)

        def check() -> None:
            waiting = runner.statistics().waiting_emits
            if waiting != n:
                warnings.append(f"Only {waiting:,} of {n:,} emitters were waiting when the agent was released.")

        block, release = await _blocked(lambda i: runner.emit(TOPIC, i), n, gate, check)
        await runner.drain()
    return block, release


async def _blocked_round(side: str, emitters: int, consumers: int, warnings: list[str]) -> tuple[float, float, float]:
    """(block, release, cpu) seconds of one side's round."""
    # Both sides start from a collected heap whose objects the collector then leaves alone (freeze): a full
    # collection during the run walks only what the run allocated, not what part 1 left behind.
    gc.collect()
    gc.freeze()
    try:
        cpu0 = cpu_seconds()
        if side == "raw":
            block, release = await _blocked_raw(emitters, consumers)
        else:
            block, release = await _blocked_agentflow(emitters, consumers, warnings)
        return block, release, cpu_seconds() - cpu0
    finally:
        gc.unfreeze()


async def blocked_emitters(
    emitters: int, repeat: int, consumers: int, console: Console, warnings: list[str]
) -> tuple[BlockedFigures, list[Run], list[dict[str, float]]]:
    """``repeat`` rounds of both sides, the order alternating: the figures, every run, and each round's ratio."""
    runs: list[Run] = []
    ratios: list[dict[str, float]] = []
    split: dict[int, tuple[float, float]] = {}
    for r in range(1, repeat + 1):
        totals: dict[str, float] = {}
        for side in round_sides(SIDES, r):
            block, release, cpu = await _blocked_round(side, emitters, consumers, warnings)
            total = totals[side] = block + release
            if side == "agentflow":
                split[r] = (block, release)
            runs.append(
                Run(
                    side=side,
                    label=f"{side} {r}/{repeat}",
                    round=r,
                    completed=emitters,
                    errors=0,
                    duration_s=total,
                    throughput_per_s=emitters / total if total > 0 else 0.0,
                    latency_ms=None,
                    cpu_s=cpu,
                )  # fmt: skip
            )
            console.print(f"  blocked emitters, {side} {r}/{repeat}: {total:.3f} s", highlight=False)
        ratios.append({"blocked_vs_raw": totals["agentflow"] / totals["raw"]} if totals["raw"] > 0 else {})
    ours = median_run(runs, "agentflow", by_duration)
    raw = median_run(runs, "raw", by_duration)
    assert ours is not None and raw is not None
    figures = BlockedFigures(
        emitters=emitters, buffer=BLOCKED_BUFFER, consumers=consumers, agentflow_median_s=ours.duration_s,
        raw_median_s=raw.duration_s, block_s=[split[n][0] for n in sorted(split)],
        release_s=[split[n][1] for n in sorted(split)],
    )  # fmt: skip
    return figures, sorted(runs, key=lambda x: (x.round, x.side != "raw")), ratios
