"""Callers of ``emit`` and ``request`` waiting for room in the bus: bounded, and each released in O(1).

A caller whose event does not fit at once waits inside ``bus.publish`` in its own task; the bus keeps waiting
publishers in a FIFO, so a wake-up costs the same however many wait. The runner must also release them when it
closes (or when a request's deadline passes first). It does that without touching the other waiters: the
waiting tasks are kept in an insertion-ordered dict, and releasing one cancels its task with the reason
recorded, which the caller turns into that error. Nothing is registered on a future shared by all waiters — a
shared future makes every departure scan the whole list of callbacks, O(waiters²) under overload::

    waiting = WaitingEmits(10_000, refused)   # refused["max_waiting_emits"] counts the callers turned away
    await waiting.publish(bus, "orders", events, key=event_id)    # BackpressureError beyond the limit
    waiting.release(event_id, make_error)    # that caller raises make_error(topic)
    waiting.release_all(make_error)          # every caller does (the runner closes)

A task cancelled from elsewhere at the same time still ends in ``CancelledError`` (the ``uncancel`` protocol
``asyncio.timeout`` follows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from .bus.base import Bus, Item
from .errors import BackpressureError

__all__ = ["WaitingEmits"]

#: The config key this bounds (``[runner]``), and the key of its count in ``refused``.
LIMIT = "max_waiting_emits"
#: Builds the error a released caller raises, from the topic it was publishing to.
MakeError = Callable[[str], BaseException]


class WaitingEmits:
    """Tasks blocked in ``bus.publish`` on behalf of emit/request callers; see the module docstring."""

    __slots__ = ("_refused", "_tasks", "_why", "limit")

    def __init__(self, limit: int, refused: dict[str, int]) -> None:
        self.limit = limit
        self._refused = refused
        self._tasks: dict[Hashable, asyncio.Task[Any]] = {}
        self._why: dict[asyncio.Task[Any], MakeError] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __repr__(self) -> str:
        return f"<WaitingEmits waiting={len(self._tasks)}/{self.limit} refused={self._refused[LIMIT]}>"

    async def publish(self, bus: Bus, topic: str, events: Sequence[Item], key: Hashable | None = None) -> None:
        """``bus.publish(topic, events)`` as a registered waiter; ``key`` (default: the task) names it for
        :meth:`release`. Raises BackpressureError at once when ``limit`` callers already wait."""
        tasks = self._tasks
        if len(tasks) >= self.limit:
            self._refused[LIMIT] = self._refused.get(LIMIT, 0) + 1
            raise BackpressureError(
                f"{len(tasks)} callers already wait for room in the bus, the limit of runner.max_waiting_emits; "
                f"the emit to {topic!r} was refused and nothing was published. Retry later, slow down, or raise "
                "runner.max_waiting_emits."
            )
        task = asyncio.current_task()
        assert task is not None, "emit and request run inside a task"
        if key is None:
            key = task
        tasks[key] = task
        try:
            await bus.publish(topic, events)
        except asyncio.CancelledError:
            make = self._why.pop(task, None)
            if make is None or task.uncancel() > 0:
                raise  # cancelled by someone else too: their cancellation wins
            raise make(topic) from None
        finally:
            del tasks[key]
        if self._why.pop(task, None) is not None:
            task.uncancel()  # released too late to stop the publish: the event is out, and the caller goes on

    def release(self, key: Hashable, make: MakeError) -> bool:
        """Stop the caller waiting under ``key``: it raises ``make(topic)``. False if none waits under it."""
        task = self._tasks.get(key)
        if task is None or task in self._why:
            return False
        self._why[task] = make
        task.cancel()
        return True

    def release_all(self, make: MakeError) -> int:
        """Stop every waiting caller (each raises ``make(topic)``); return how many were released."""
        n = 0
        why = self._why
        for task in self._tasks.values():
            if task not in why:
                why[task] = make
                task.cancel()
                n += 1
        return n
