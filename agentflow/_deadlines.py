"""Timeouts of pending requests with one event-loop timer, not one per request.

A timer per request costs ~2 µs to arm and cancel on uvloop (aiohttp's per-request timer context ~4 µs), a third
of a whole in-process ``runner.request``. Requests with the same timeout expire in the order they were made, so an
insertion-ordered dict of them, oldest first, needs a single timer armed at the oldest deadline::

    deadlines = Deadlines(30.0, on_expire)    # on_expire(key, tag, timeout_s) is called once a request is due
    deadlines.add(loop, eid, "topic", 30.0)   # the default timeout: the shared timer
    deadlines.tag(eid)                        # "topic", while it waits (None once discarded or due)
    deadlines.discard(eid)                    # answered in time

A request with another timeout gets a timer of its own (rare: an explicit ``timeout_s``). Used for
``runner.request`` (:class:`~agentflow.requests.PendingRequests` is a ``Deadlines``; key: the event id, tag: the
request's future and topic), and, with :class:`TimedTask`, for LLM HTTP requests and tool calls: the timer
cancels the task that waits, and the task turns that cancellation into its own timeout error, as
``asyncio.timeout`` does::

    timed = TimedTask(asyncio.current_task())
    deadlines = Deadlines(30.0, expire_task)
    deadlines.add(loop, timed, None, 30.0)
    try:
        await work()
    except asyncio.CancelledError:
        if timed.timed_out():      # our timer, not a cancellation from outside
            raise MyTimeoutError(...) from None
        raise
    else:
        timed.settle()             # finished as the timer fired: take its cancellation back
    finally:
        deadlines.discard(timed)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Deadlines", "TimedTask", "expire_task"]


class Deadlines:
    """Pending requests by id, with one timer for the default timeout; see the module docstring."""

    __slots__ = ("_default", "_on_expire", "_others", "_timer", "_waits")

    def __init__(self, default_s: float, on_expire: Callable[[Any, Any, float], None]) -> None:
        self._default = default_s
        self._on_expire = on_expire
        # key -> (deadline, tag); insertion order is deadline order, since they share one timeout.
        self._waits: dict[Hashable, tuple[float, Any]] = {}
        self._others: dict[Hashable, tuple[asyncio.TimerHandle, Any]] = {}
        # Invariant: armed, at or before the oldest deadline in _waits, whenever _waits is not empty.
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._waits) + len(self._others)

    def add(self, loop: asyncio.AbstractEventLoop, key: Hashable, tag: Any, timeout_s: float) -> None:
        if timeout_s != self._default:
            self._others[key] = (loop.call_later(timeout_s, self._expire_other, key, tag, timeout_s), tag)
            return
        deadline = loop.time() + timeout_s
        self._waits[key] = (deadline, tag)
        if self._timer is None:  # _waits was empty: this one is the oldest
            self._timer = loop.call_at(deadline, self._fire, loop)

    def discard(self, key: Hashable) -> None:
        if self._waits.pop(key, None) is None:
            other = self._others.pop(key, None)
            if other is not None:
                other[0].cancel()

    def tag(self, key: Hashable) -> Any:
        """The tag ``key`` was added with; None when it is not waiting (never added, discarded, or due)."""
        entry = self._waits.get(key)
        if entry is not None:
            return entry[1]
        other = self._others.get(key)
        return other[1] if other is not None else None

    def tags(self) -> list[Any]:
        """The tags of every key still waiting."""
        return [tag for _, tag in self._waits.values()] + [tag for _, tag in self._others.values()]

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for timer, _ in self._others.values():
            timer.cancel()
        self._others.clear()
        self._waits.clear()

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        due: list[tuple[Hashable, Any]] = []
        for key, (deadline, tag) in self._waits.items():
            if deadline > now:
                self._timer = loop.call_at(deadline, self._fire, loop)
                break
            due.append((key, tag))
        for key, tag in due:
            del self._waits[key]
            self._on_expire(key, tag, self._default)

    def _expire_other(self, key: Hashable, tag: Any, timeout_s: float) -> None:
        if self._others.pop(key, None) is not None:
            self._on_expire(key, tag, timeout_s)


class TimedTask:
    """A task bounded by a :class:`Deadlines` timer: what to cancel when it is due, and how to tell that
    cancellation from one that came from outside (the ``uncancel`` protocol of ``asyncio.timeout``)."""

    __slots__ = ("cancelling", "expired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.expired = False

    def timed_out(self) -> bool:
        """After the task caught a cancellation: True when the timer caused it and nothing else cancelled the
        task too (then the cancellation is taken back and the caller raises its timeout error instead)."""
        return self.expired and self.task.uncancel() <= self.cancelling

    def settle(self) -> None:
        """After the work finished: if the timer fired meanwhile and its cancellation was swallowed, take it back."""
        if self.expired:
            self.task.uncancel()


def expire_task(timed: TimedTask, tag: object, timeout_s: float) -> None:
    """The ``on_expire`` of a :class:`Deadlines` whose keys are :class:`TimedTask` s: cancel the task."""
    timed.expired = True
    timed.task.cancel()
