"""What happens when a handler fails: timeouts, retries with back-off, and dead letters — one slow path shared by
the per-event and the batch worker.

A failure is handled for a *unit*: one event, or one batch (its events fail and are retried together). The loop
is the same for both: a watchdog cancellation becomes :class:`~agentflow.errors.HandlerTimeoutError`; ``Skip``
acknowledges the unit; ``Reject`` dead-letters it at once, and so do the failures that another attempt cannot
cure (:data:`TERMINAL`: a model stuck repeating tool calls, a state value over ``max_state_bytes``, a workflow
past its deadline, a join that timed out); any other exception is retried per the agent's
:class:`~agentflow.resilience.retry.RetryPolicy` (a single event's retry may be handed to the bus instead, see
``Subscription.defer_retry``) and finally dead-lettered with reason ``timeout`` or ``exhausted``.

State writes gate acknowledgement (docs/state.md): every event carries the :class:`~agentflow.state.Unit` its
handler's ``ctx.state`` writes went into (None when it wrote nothing), and :meth:`FailurePath._committed` is the
one wait for them before an event is acknowledged, whichever way it finishes. A commit that fails after a
successful attempt (or a ``Skip``) fails that attempt: the event is retried per its policy, its writes made again
into a fresh unit. Dead-lettered events and events handed to a retry topic wait for their writes too; a failed
commit there is logged, since the dead letter (or the retry) runs the handler again.

Dead letters are written before the events are acknowledged; a write that fails is retried with capped back-off
for as long as it takes (the event stays unacknowledged meanwhile), so nothing is acknowledged that is not
recorded somewhere. A shutdown cancels the wait, and the worker gives the events back to the bus.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from ..bus.base import Item, Subscription
from ..errors import (
    HandlerTimeoutError,
    JoinTimeoutError,
    Reject,
    Retry,
    Skip,
    StateError,
    StateTooLargeError,
    ToolLoopError,
    WorkflowDeadlineError,
)
from ..events import DeadLetter, Event, RawEvent, bounded_dead_letter
from ..metrics import AgentMetrics
from ..pool import Slot, WorkerPool
from ..resilience.retry import RetryPolicy
from ..state.unit import Unit
from .spec import Host

__all__ = ["TERMINAL", "FailurePath", "Units"]

#: The state units of a unit's events, in order (None: the event's handler made no state write).
Units = list[Unit | None]

#: Failures another attempt cannot cure, and the dead-letter reason of each: not retried.
TERMINAL: tuple[tuple[type[BaseException], str], ...] = (
    (StateTooLargeError, "state_too_large"),
    (WorkflowDeadlineError, "deadline_exceeded"),
    (JoinTimeoutError, "join_timeout"),
    (ToolLoopError, "tool_loop"),
)

logger = logging.getLogger("agentflow.agents")

#: At most this many dead letters are logged one by one per agent per second.
LOG_BURST = 10
# A failed dead-letter write is retried after 0.1 s, doubling up to 5 s: a broker that comes back is noticed
# within seconds, and a long outage costs one attempt per 5 s per waiting event.
DLQ_RETRY_FIRST_S = 0.1
DLQ_RETRY_MAX_S = 5.0


def _log_fields(agent: str, event_id: str | None, event: Event | None, topic: str) -> dict[str, Any]:
    """What a log record carries for structured output (``agentcli --log-format json``)."""
    return {
        "agent": agent,
        "event_id": event_id,
        "correlation_id": event.correlation_id if event is not None else None,
        "topic": topic,
    }


class FailurePath(abc.ABC):
    """The slow path of an agent worker. Subclasses say how a unit is called and how its success is recorded."""

    name: str
    topic: str
    timeout_s: float
    policy: RetryPolicy
    inflight: int
    dead_letters_failing: int
    _m: AgentMetrics
    _pool: WorkerPool
    _sub: Subscription
    _host: Host
    _log_window: float
    _log_count: int
    _log_suppressed: int

    @abc.abstractmethod
    async def _invoke(self, events: list[Event], units: Units) -> Any:
        """Call the handler on a unit (one event, or a batch) and return what the unit's success records.

        ``units`` holds each event's state unit from earlier attempts (None: none yet); on return, and when the
        handler raised, it holds the units this attempt's contexts made or used."""

    @abc.abstractmethod
    def _succeeded_all(self, events: list[Event], items: list[Item], slot: Slot, result: Any) -> None:
        """Bookkeeping after the unit succeeded and its state writes are committed: count, acknowledge, reply."""

    @abc.abstractmethod
    def _finish_all(self, items: Sequence[Item]) -> None:
        """Acknowledge the unit's items (they will not be delivered again)."""

    @abc.abstractmethod
    def _reply_all(self, events: list[Event], results: Any) -> None:
        """Answer the requests among the unit's events; ``results`` None answers each with None."""

    # ---- the retry loop --------------------------------------------------------------------------------

    async def _failed(
        self, events: list[Event], items: list[Item], slot: Slot, exc: BaseException, units: Units
    ) -> None:
        """Classify ``exc`` (raised by the unit's handler), back off and retry, and finally dead-letter."""
        m = self._m
        n = len(events)
        attempt = max(e.attempt for e in events)
        what = f"event {events[0].id}" if n == 1 else f"a batch of {n} events starting with {events[0].id}"
        while True:
            exc = self._as_timeout(exc, slot, what, attempt)
            if isinstance(exc, Skip):
                not_committed = await self._committed(units)
                if not_committed is None:
                    m.skipped += n
                    slot.current = None
                    self._finish_all(items)
                    self._reply_all(events, None)
                    return
                exc, units = not_committed, [None] * n  # the skip's writes did not commit: the attempt failed
            if isinstance(exc, Reject):
                await self._dead_all(events, items, "rejected", exc, attempt, units)
                return
            if not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt, SystemExit: not ours to swallow
            kind = "timeout" if isinstance(exc, HandlerTimeoutError) else "error"
            for _ in range(n):
                m.failed(kind)
            # Another attempt would fail the same way (a model repeating tool calls would replay the same
            # conversation): the event goes to the dead-letter queue at once.
            terminal = next((reason for tp, reason in TERMINAL if isinstance(exc, tp)), None)
            if terminal is not None:
                await self._dead_all(events, items, terminal, exc, attempt, units)
                return
            if not self.policy.should_retry(attempt):
                reason = "timeout" if kind == "timeout" else "exhausted"
                await self._dead_all(events, items, reason, exc, attempt, units)
                return
            # A bus that can park the retry outside this worker (Kafka retry topics) takes it over: the event is
            # finished here, so a long back-off holds neither a slot nor the partition's commit.
            if n == 1 and await self._sub.defer_retry(events[0], attempt, exc):
                m.retries += 1
                slot.current = None
                await self._settle_terminal(events, units, "handed to a retry topic")
                self._finish_all(items)
                return
            delay = self.policy.delay_s(attempt, exc)
            m.retries += n
            if not isinstance(exc, Retry):
                logger.debug(
                    "Agent %r: attempt %d of %s failed (%r); retrying in %.3f s",
                    self.name,
                    attempt,
                    what,
                    exc,
                    delay,
                    extra=_log_fields(self.name, events[0].id, events[0], events[0].topic) if n == 1 else None,
                )
            await asyncio.sleep(delay)
            attempt += 1
            events = [msgspec.structs.replace(ev, attempt=attempt) for ev in events]
            for unit in units:
                if unit is not None:
                    unit.begin_attempt()  # its once-writes are numbered from the start again
            result, error = await self._call_in_slot(slot, events, units)
            if error is None:
                error = await self._committed(units)
                if error is None:
                    self._succeeded_all(events, items, slot, result)
                    return
                units = [None] * n  # the next attempt writes into fresh units: a failed one stays failed
            exc = error

    async def _completed(self, events: list[Event], items: list[Item], slot: Slot, units: Units, result: Any) -> None:
        """The unit's handler returned (its attempt's bookkeeping done): once its state writes are committed,
        count, acknowledge and reply; a commit that failed fails the attempt instead."""
        error = await self._committed(units)
        if error is None:
            self._succeeded_all(events, items, slot, result)
        else:
            await self._failed(events, items, slot, error, [None] * len(events))

    @staticmethod
    async def _committed(units: Units) -> StateError | None:
        """Wait until every state write of these units is committed: the one wait an event's acknowledgement
        goes through. Returns the error of a commit that failed (None: everything is in, or nothing was written)."""
        for unit in units:
            if unit is not None and unit.pending:
                try:
                    await unit.committed()
                except StateError as exc:
                    return exc
        return None

    async def _settle_terminal(self, events: list[Event], units: Units, how: str) -> None:
        """Before acknowledging events that will run again elsewhere (a dead letter, a retry topic): wait for
        their writes; a failed commit is logged, since the next run makes them again."""
        error = await self._committed(units)
        if error is not None:
            logger.warning(
                "Agent %r: the state writes of event %s (%s) were not committed: %s",
                self.name,
                events[0].id,
                how,
                error,
            )

    async def _call_in_slot(self, slot: Slot, events: list[Event], units: Units) -> tuple[Any, BaseException | None]:
        """One retry attempt: take a pool slot, run the unit under the watchdog, and return (result, None), or
        (None, what it raised); the slot is released either way."""
        pool = self._pool
        if not pool.try_acquire():
            await pool.acquire()
        t0 = time.perf_counter()
        slot.deadline = t0 + self.timeout_s
        try:
            result = await self._invoke(events, units)
        except BaseException as exc:  # noqa: BLE001 - the caller classifies it
            self._attempt_failed(slot, t0)
            return None, exc
        self._attempt_done(slot, t0)
        return result, None

    def _attempt_done(self, slot: Slot, t0: float) -> None:
        """Bookkeeping after a handler returned: disarm the watchdog, free the pool slot, record the duration."""
        slot.deadline = 0.0
        if slot.timed_out:
            self._swallowed_timeout(slot)
        self._pool.release()
        self._m.duration.observe(time.perf_counter() - t0)

    def _attempt_failed(self, slot: Slot, t0: float) -> None:
        """Bookkeeping after a handler raised: disarm the watchdog, free the pool slot, record the duration."""
        slot.deadline = 0.0
        self._pool.release()
        self._m.duration.observe(time.perf_counter() - t0)

    def _as_timeout(self, exc: BaseException, slot: Slot, what: str, attempt: int) -> BaseException:
        """The watchdog's cancellation as a HandlerTimeoutError; a real cancellation (shutdown) is re-raised
        so the caller gives its events back."""
        if not isinstance(exc, asyncio.CancelledError):
            return exc
        task = asyncio.current_task()
        if not (slot.timed_out and task is not None and task.uncancel() == 0):
            slot.timed_out = False
            raise exc
        slot.timed_out = False
        return HandlerTimeoutError(
            f"Agent {self.name!r} took longer than {self.timeout_s:g} s on {what} "
            f"(attempt {attempt}) and was cancelled; raise its timeout_s or make the handler faster."
        )

    @staticmethod
    def _swallowed_timeout(slot: Slot) -> None:
        # The handler caught the watchdog's CancelledError and returned anyway: take the cancellation back.
        slot.timed_out = False
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()

    # ---- dead letters ----------------------------------------------------------------------------------

    def _letter(self, item: Item, ev: Event | None, reason: str, exc: BaseException, attempts: int) -> DeadLetter:
        return bounded_dead_letter(
            DeadLetter(
                topic=self.topic,
                agent=self.name,
                reason=reason,
                error_type=type(exc).__name__,
                error=str(exc),
                attempts=attempts,
                failed_at=time.time(),
                event=ev,
                raw=item.data if isinstance(item, RawEvent) else None,
            )
        )

    async def _dead(self, item: Item, ev: Event | None, reason: str, exc: BaseException, attempts: int) -> None:
        """Dead-letter one item (an event, or bytes that never decoded when ``ev`` is None), then acknowledge it."""
        letter = self._letter(item, ev, reason, exc, attempts)
        await self._record(letter)
        self._dead_done(item, ev, letter)

    async def _dead_all(
        self,
        events: list[Event],
        items: list[Item],
        reason: str,
        exc: BaseException,
        attempts: int,
        units: Units | None = None,
    ) -> None:
        # Every letter is written before any event is acknowledged: a shutdown that cancels a write gives the
        # whole unit back (a letter written twice is at-least-once), never part of it.
        letters = [self._letter(item, ev, reason, exc, attempts) for ev, item in zip(events, items, strict=True)]
        for letter in letters:
            await self._record(letter)
        if units:
            await self._settle_terminal(events, units, f"dead-lettered as {reason}")
        for ev, item, letter in zip(events, items, letters, strict=True):
            self._dead_done(item, ev, letter)

    async def _record(self, letter: DeadLetter) -> None:
        """Write ``letter`` to the dead-letter queue, retrying with capped back-off until it is written.

        The caller acknowledges the event only afterwards: while the queue cannot be written the event stays
        unacknowledged, so the partition's commit cannot pass it and the in-flight bound pauses fetching.
        Shutdown cancels the wait; the caller then gives the event back to the bus.
        """
        try:
            await self._host._dead_letter(letter)
            return
        except Exception as exc:  # noqa: BLE001 - any failure to record is retried, never fatal
            error: Exception = exc
        self.dead_letters_failing += 1
        delay = DLQ_RETRY_FIRST_S
        failures = 1
        try:
            while True:
                if failures & (failures - 1) == 0:  # 1st, 2nd, 4th, 8th ... failure: a long outage logs little
                    logger.warning(
                        "Agent %r could not write dead letter %s (%s) to the dead-letter queue (attempt %d): %s: %s "
                        "Retrying in %.1f s; the event stays unacknowledged until it is written. Check that the "
                        "brokers are reachable.",
                        self.name,
                        letter.id,
                        letter.reason,
                        failures,
                        type(error).__name__,
                        error,
                        delay,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, DLQ_RETRY_MAX_S)
                try:
                    await self._host._dead_letter(letter)
                except Exception as exc:  # noqa: BLE001 - retried
                    error = exc
                    failures += 1
                    continue
                logger.warning(
                    "Agent %r wrote dead letter %s after %d failed attempt(s).", self.name, letter.id, failures
                )
                return
        finally:
            self.dead_letters_failing -= 1

    def _dead_done(self, item: Item, ev: Event | None, letter: DeadLetter) -> None:
        """After the dead letter was written: count, log, acknowledge, and answer a request."""
        self._m.dead_letter(letter.reason)
        self._log_dead(letter)
        self._finish_all((item,))
        if ev is not None and ev.reply_to is not None:
            self._host._reply(ev, None, letter)

    def _log_dead(self, letter: DeadLetter) -> None:
        # At most LOG_BURST warnings per agent per second: a failure storm must not become a log storm.
        now = time.monotonic()
        if now - self._log_window >= 1.0:
            if self._log_suppressed:
                logger.warning(
                    "Agent %r: %d more dead letters in the last second were not logged one by one.",
                    self.name,
                    self._log_suppressed,
                )
            self._log_window, self._log_count, self._log_suppressed = now, 0, 0
        if self._log_count < LOG_BURST:
            self._log_count += 1
            logger.warning(
                "Agent %r dead-lettered event %s as %s (%s): %s: %s",
                self.name,
                letter.event_id or "(undecodable)",
                letter.id,
                letter.reason,
                letter.error_type,
                letter.error,
                extra=_log_fields(self.name, letter.event_id, letter.event, letter.topic),
            )
        else:
            self._log_suppressed += 1
