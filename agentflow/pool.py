"""The bounded worker pool: handler slots shared by every agent, and the watchdog that enforces timeouts.

The pool knows nothing about events. Agents' worker coroutines take a slot before running a handler and give
it back after, so at most ``size`` handlers run at once across all agents; ``held`` counts the work items the
agents hold (running, waiting for a slot, waiting behind the same key, backing off).

Timeouts are enforced by one watchdog task instead of an ``asyncio.timeout`` per call: arming the watchdog is
a float store, where ``asyncio.timeout`` costs ~5 µs, five times a whole event's budget. The watchdog wakes
every ``resolution_s`` and cancels a handler whose deadline has passed, exactly as ``asyncio.timeout`` would
(the cancellation is turned into a timeout failure with ``Task.uncancel``), so a timeout fires within
``resolution_s`` of its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import msgspec

__all__ = ["Slot", "WorkerPool", "WorkerPoolStatistics"]


class WorkerPoolStatistics(msgspec.Struct, frozen=True):
    """Live counts of the pool: ``busy``/``size`` handlers running, ``queued``/``max_queued`` work held."""

    size: int
    busy: int
    waiting: int
    queued: int
    max_queued: int
    done: int
    failed: int
    timeouts: int


class Slot:
    """One worker coroutine's timing state, watched by the watchdog. ``deadline`` 0.0 means none."""

    __slots__ = ("current", "deadline", "task", "timed_out")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.deadline = 0.0
        self.timed_out = False
        self.current: object | None = None


class WorkerPool:
    """At most ``size`` handlers at once; cancellation-safe slot hand-over; a timeout watchdog.

    ::

        pool = WorkerPool(size=64, max_queued=1024)
        if not pool.try_acquire():
            await pool.acquire()
        try:
            ...
        finally:
            pool.release()
    """

    def __init__(self, size: int, *, max_queued: int, resolution_s: float = 0.05) -> None:
        if size < 1:
            raise ValueError("A WorkerPool needs at least one slot.")
        self.size = size
        self.max_queued = max_queued
        self.resolution_s = resolution_s
        self.busy = 0
        self.timeouts = 0
        #: Set by the owner: returns (held, done, failed) — work items held, handler runs finished and failed.
        self.usage: Callable[[], tuple[int, int, int]] = lambda: (self.busy, 0, 0)
        #: Acquirers waiting for a slot, oldest first (never replaced: the worker's hot path reads it).
        self.waiters: deque[asyncio.Future[None]] = deque()
        self._slots: list[Slot] = []

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<WorkerPool busy={s.busy}/{s.size} queued={s.queued}/{s.max_queued} done={s.done} failed={s.failed}>"

    def statistics(self) -> WorkerPoolStatistics:
        held, done, failed = self.usage()
        return WorkerPoolStatistics(
            size=self.size,
            busy=self.busy,
            waiting=sum(1 for f in self.waiters if not f.done()),
            queued=max(0, held - self.busy),
            max_queued=self.max_queued,
            done=done,
            failed=failed,
            timeouts=self.timeouts,
        )

    def try_acquire(self) -> bool:
        if self.busy < self.size and not self.waiters:
            self.busy += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on, never leak it
            raise

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the slot over; busy stays the same
                return
        self.busy -= 1

    def timed_out(self, task: asyncio.Task[None]) -> bool:
        """True when the watchdog has cancelled ``task`` for running past its deadline (and it has not ended)."""
        return any(s.task is task and s.timed_out for s in self._slots)

    def slot(self) -> Slot:
        s = Slot()
        self._slots.append(s)
        return s

    def forget(self, slot: Slot) -> None:
        if slot in self._slots:
            self._slots.remove(slot)

    async def watchdog(self) -> None:
        """Cancel handlers past their deadline; runs until cancelled."""
        while True:
            await asyncio.sleep(self.resolution_s)
            now = time.perf_counter()
            for s in self._slots:
                d = s.deadline
                # Cancel once per attempt, as asyncio.timeout does: a handler may await its own cleanup.
                if d and now > d and not s.timed_out and s.task is not None:
                    self.timeouts += 1
                    s.timed_out = True
                    s.task.cancel()
