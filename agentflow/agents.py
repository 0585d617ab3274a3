"""Agents: the handler a user registers, the context it gets, and the loop that feeds it from the bus.

Each agent is its own consumer group. One dispatcher task per agent takes events from the agent's
subscription in batches (never more than the agent's in-flight bound) into a local deque; ``concurrency``
worker coroutines pop from it. A worker that pops an event whose key is already running parks it behind that
key; the worker running the key handles the parked events next, so one key is handled in emit order while
different keys run concurrently. Each handler run takes a slot of the shared :class:`~agentflow.pool.WorkerPool`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import msgspec

from .bus.base import Item, Subscription
from .context import Context, Handler, _Host
from .errors import EventDecodeError, EventError, EventTooLargeError, HandlerTimeoutError, Reject, Retry, Skip
from .events import DeadLetter, Event, EventCodec, RawEvent, bounded_dead_letter, convert_payload
from .metrics import MAX_OBSERVED_S, AgentMetrics
from .pool import Slot, WorkerPool
from .resilience.retry import RetryPolicy

__all__ = ["AgentWorker"]

logger = logging.getLogger(__name__)

_MISSING: Any = object()
_LOG_BURST = 10
# A failed dead-letter write is retried after 0.1 s, doubling up to 5 s: a broker that comes back is noticed
# within seconds, and a long outage costs one attempt per 5 s per waiting event.
_DLQ_RETRY_FIRST_S = 0.1
_DLQ_RETRY_MAX_S = 5.0


class AgentWorker:
    """Runs one agent: dispatcher, workers, ordering by key, timeouts, retries, dead letters, acks."""

    def __init__(
        self,
        *,
        name: str,
        handler: Handler,
        sub: Subscription,
        pool: WorkerPool,
        metrics: AgentMetrics,
        host: _Host,
        codec: EventCodec,
        concurrency: int,
        timeout_s: float,
        policy: RetryPolicy,
        max_inflight: int,
        payload_type: Any = None,
    ) -> None:
        self.name = name
        self.topic = sub.topic
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.policy = policy
        self.max_inflight = max_inflight
        self._handler = handler
        self._sub = sub
        self._pool = pool
        self._m = metrics
        self._host = host
        self._codec = codec
        self._payload_type = payload_type
        self._local: deque[Item] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        # A worker was woken and has not run yet: it takes over the queue (and wakes the next if it must), so a
        # burst of arrivals wakes one worker, not one per event.
        self._waking = False
        self._active: dict[str, deque[tuple[Event, Item]] | None] = {}
        self._room: asyncio.Future[None] | None = None
        self.inflight = 0
        self.returned = 0
        #: Dead letters whose write to the dead-letter queue failed and is being retried (readiness is false).
        self.dead_letters_failing = 0
        self._log_window = 0.0
        self._log_count = 0
        self._log_suppressed = 0
        # wall clock = perf_counter + offset; refreshed at every take, so queue wait costs no extra clock read
        self._wall_offset = time.time() - time.perf_counter()
        self._stopping = False
        self._dispatcher: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._slots: list[Slot] = []

    def __repr__(self) -> str:
        m = self._m
        return (
            f"<AgentWorker {self.name!r} topic={self.topic!r} inflight={self.inflight}/{self.max_inflight} "
            f"handled={m.handled} dead_lettered={sum(m.dead_lettered.values())}>"
        )

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self, tg: asyncio.TaskGroup) -> None:
        self._dispatcher = tg.create_task(self._dispatch(), name=f"agentflow-dispatch-{self.name}")
        self._sub.set_listener(self._pump)
        for i in range(self.concurrency):
            slot = self._pool.slot()
            task = tg.create_task(self._work(slot), name=f"agentflow-worker-{self.name}-{i}")
            slot.task = task
            self._slots.append(slot)
            self._workers.append(task)

    async def stop_intake(self) -> None:
        """Stop taking events; give back the ones taken but not started."""
        self._stopping = True
        self._sub.set_listener(None)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._local:
            items = list(self._local)
            self._local.clear()
            self._give_back(items)
        while self._idle:
            fut = self._idle.popleft()
            if not fut.done():
                fut.set_result(None)

    async def cancel(self) -> None:
        """Cancel workers still busy after the grace period; their events go back to the bus."""
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for s in self._slots:
            self._pool.forget(s)

    def _give_back(self, items: list[Item]) -> None:
        if items:
            self._sub.requeue(items)
            self.returned += len(items)
            self.inflight -= len(items)

    # ---- dispatcher ------------------------------------------------------------------------------------

    async def _dispatch(self) -> None:
        sub = self._sub
        loop = asyncio.get_running_loop()
        while True:
            room = self.max_inflight - self.inflight
            if room <= 0:
                fut = self._room = loop.create_future()
                try:
                    await fut
                finally:
                    self._room = None
                continue
            if self._take(room):
                continue
            if not await sub.wait():
                return

    def _take(self, room: int) -> bool:
        """Move up to ``room`` items from the subscription to the workers' queue and wake one worker."""
        items = self._sub.take_nowait(room)
        if not items:
            return False
        self.inflight += len(items)
        self._wall_offset = time.time() - time.perf_counter()
        self._local.extend(items)
        if not self._waking:
            self._wake_one()
        return True

    def _wake_one(self) -> None:
        """Wake one idle worker, if there is one."""
        idle = self._idle
        while idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                self._waking = True
                return

    def _pump(self) -> bool:
        """The subscription's listener: called as events arrive while the dispatcher waits for them.

        Takes them at once, as the dispatcher would, so an event reaches a worker in one event-loop turn less
        (the dispatcher is not woken). False leaves the work to the dispatcher: when stopping, when
        ``max_inflight`` is reached (it then waits for room), and when a worker is already on its way — a burst
        then gathers in the bus and the dispatcher takes it in one go on the next turn.
        """
        if self._stopping or self._waking:
            return False
        while True:
            room = self.max_inflight - self.inflight
            if room <= 0:
                return False
            if not self._take(room):
                return True

    def _finished(self, item: Item) -> None:
        self._sub.ack(item)
        self.inflight -= 1
        self._room_freed()

    # ---- workers ---------------------------------------------------------------------------------------

    async def _work(self, slot: Slot) -> None:
        # The hot path, inlined on purpose: a plain event whose key is free is handled right here with no
        # further Python calls but the handler's (each call costs ~0.06 µs of a ~1 µs budget). Anything
        # else — raw bytes, typed payloads, failures, parked keys — takes the slow path in other methods.
        local, idle = self._local, self._idle
        loop = asyncio.get_running_loop()
        handler = self._handler
        pool = self._pool
        waiters = pool._waiters
        m = self._m
        qw, du = m.queue_wait, m.duration
        qwc, duc = qw.counts, du.counts
        perf = time.perf_counter
        timeout = self.timeout_s
        active = self._active
        ack = self._sub.ack
        typed = self._payload_type is not None
        while True:
            if not local:
                if self._stopping:
                    return
                fut = loop.create_future()
                idle.append(fut)
                try:
                    await fut
                finally:
                    self._waking = False
                continue
            item = local.popleft()
            if local and idle and not self._waking:
                # Chain wake-ups: if this handler suspends, another worker is already on its way.
                self._wake_one()
            if typed or type(item) is not Event:
                await self._process(item, slot)
                continue
            ev = item
            key = ev.key
            if key is not None:
                if key in active:
                    parked = active[key]
                    if parked is None:
                        parked = active[key] = deque()
                    parked.append((ev, item))
                    continue
                active[key] = None
            slot.current = ev
            if pool.busy < pool.size and not waiters:
                pool.busy += 1
            else:
                await self._acquire(slot, key)
            t0 = perf()
            wait = t0 + self._wall_offset - ev.created_at
            if wait < 0.0:
                wait = 0.0
            elif wait > MAX_OBSERVED_S:
                wait = MAX_OBSERVED_S
            qwc[int(wait * 1_000_000).bit_length()] += 1
            qw.sum += wait
            slot.deadline = t0 + timeout
            try:
                result = await handler(ev, Context(ev, self))
            except BaseException as exc:  # noqa: BLE001 - classified in _failed
                slot.deadline = 0.0
                pool.release()
                du.observe(perf() - t0)
                try:
                    await self._failed(ev, item, slot, exc)
                    if key is not None:
                        await self._drain_key(key, slot)
                except asyncio.CancelledError:
                    self._abandon_key(slot, key)
                    raise
                continue
            slot.deadline = 0.0
            if slot.timed_out:
                self._swallowed_timeout(slot)
            if waiters:
                pool.release()
            else:
                pool.busy -= 1
            d = perf() - t0
            duc[int(d * 1_000_000).bit_length()] += 1
            du.sum += d
            m.handled += 1
            slot.current = None
            ack(item)
            self.inflight -= 1
            if self._room is not None:
                self._room_freed()
            if ev.reply_to is not None:
                self._host._reply(ev, result, None)
            if key is not None:
                if active[key] is None:
                    del active[key]
                else:
                    try:
                        await self._drain_key(key, slot)
                    except asyncio.CancelledError:
                        self._abandon_key(slot, key)
                        raise

    @staticmethod
    def _swallowed_timeout(slot: Slot) -> None:
        # The handler caught the watchdog's CancelledError and returned anyway: take the cancellation back.
        slot.timed_out = False
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()

    async def _acquire(self, slot: Slot, key: str | None) -> None:
        try:
            await self._pool.acquire()
        except asyncio.CancelledError:
            self._abandon_key(slot, key)
            raise

    def _room_freed(self) -> None:
        room = self._room
        if room is not None:
            self._room = None  # one wake-up per wait; later finishes skip this call
            if not room.done():
                room.set_result(None)

    async def _drain_key(self, key: str, slot: Slot) -> None:
        """Handle the events parked behind ``key`` in order, then release the key."""
        active = self._active
        while True:
            parked = active[key]
            if not parked:
                break
            ev, item = parked.popleft()
            await self._handle(ev, item, slot)
        del active[key]

    def _claim(self, key: str, ev: Event, item: Item) -> bool:
        """Take ``key`` for this worker, or park the event behind the worker that has it (False).

        The hot path in ``_work`` inlines this same logic.
        """
        active = self._active
        if key in active:
            parked = active[key]
            if parked is None:
                parked = active[key] = deque()
            parked.append((ev, item))
            return False
        active[key] = None
        return True

    def _abandon_key(self, slot: Slot, key: str | None) -> None:
        rest = self._active.pop(key, None) if key is not None else None
        self._abandon(slot, [it for _, it in rest] if rest else [])

    async def _process(self, item: Item, slot: Slot) -> None:
        """The general path: decode raw bytes, park behind a busy key, handle, then drain the key."""
        ev: Event
        if type(item) is RawEvent:
            slot.current = item  # given back to the bus if shutdown cancels its dead-letter write
            try:
                decoded = await self._decode(item)
            except asyncio.CancelledError:
                self._abandon(slot, [])
                raise
            slot.current = None
            if decoded is None:
                return
            ev = decoded
        else:
            ev = item  # type: ignore[assignment]
        key = ev.key
        if key is not None and not self._claim(key, ev, item):
            return
        try:
            await self._handle(ev, item, slot)
            if key is not None:
                await self._drain_key(key, slot)
        except asyncio.CancelledError:
            self._abandon_key(slot, key)
            raise

    def _abandon(self, slot: Slot, parked: list[Item]) -> None:
        current = slot.current
        slot.current = None
        slot.deadline = 0.0
        items: list[Item] = [current] if isinstance(current, Event | RawEvent) else []
        self._give_back(items + parked)

    async def _decode(self, raw: RawEvent) -> Event | None:
        got = self._raw_event(raw)
        if isinstance(got, Event):
            return got
        await self._dead(raw, None, got[0], got[1], 0)
        return None

    def _raw_event(self, raw: RawEvent) -> Event | tuple[str, Exception]:
        """The event in raw bytes from the bus, or the dead-letter reason and error when there is none.

        Never raises: bytes that break the decoder in any way (a payload nested past the recursion limit
        included) are ``undecodable``, so no record can stop the agent.
        """
        exc: Exception
        if raw.error is not None:
            exc = raw.error  # the bus could not read the record (a damaged header, over the fetch size)
        else:
            try:
                ev = self._codec.decode(raw.data)
            except EventError as err:
                exc = err
            except Exception as err:  # noqa: BLE001 - whatever the bytes do to the decoder, dead-letter them
                exc = EventDecodeError(f"Received bytes that could not be decoded: {type(err).__name__}: {err}.")
            else:
                if ev.topic != raw.topic:
                    ev = msgspec.structs.replace(ev, topic=raw.topic)  # the topic it arrived on is the truth
                return ev
        return ("too_large" if isinstance(exc, EventTooLargeError) else "undecodable"), exc

    async def _handle(self, ev: Event, item: Item, slot: Slot) -> None:
        m = self._m
        slot.current = item
        if self._payload_type is not None:
            try:
                ev = msgspec.structs.replace(ev, payload=convert_payload(ev.payload, self._payload_type))
            except EventDecodeError as exc:
                await self._dead(item, ev, "wrong_schema", exc, 0)
                return
        ctx = Context(ev, self)
        pool = self._pool
        if not pool.try_acquire():
            await pool.acquire()
        t0 = time.perf_counter()
        m.queue_wait.observe(t0 + self._wall_offset - ev.created_at)  # emit → start, slot wait included
        slot.deadline = t0 + self.timeout_s
        try:
            result = await self._handler(ev, ctx)
        except BaseException as exc:  # noqa: BLE001 - classified in _failed
            slot.deadline = 0.0
            pool.release()
            m.duration.observe(time.perf_counter() - t0)
            await self._failed(ev, item, slot, exc)
            return
        self._succeeded(ev, item, slot, t0, result)

    def _succeeded(self, ev: Event, item: Item, slot: Slot, t0: float, result: Any) -> None:
        """Bookkeeping after a handler returned, on the slow paths (the hot path in ``_work`` inlines it)."""
        slot.deadline = 0.0
        if slot.timed_out:
            self._swallowed_timeout(slot)
        self._pool.release()
        self._m.duration.observe(time.perf_counter() - t0)
        self._m.handled += 1
        slot.current = None
        self._finished(item)
        if ev.reply_to is not None:
            self._host._reply(ev, result, None)

    async def _failed(self, ev: Event, item: Item, slot: Slot, exc: BaseException) -> None:
        """The slow path: classify, back off, retry, and finally dead-letter."""
        m = self._m
        attempt = ev.attempt
        while True:
            exc = self._as_timeout(exc, slot, f"event {ev.id}", attempt)
            if isinstance(exc, Skip):
                m.skipped += 1
                slot.current = None
                self._finished(item)
                if ev.reply_to is not None:
                    self._host._reply(ev, None, None)
                return
            if isinstance(exc, Reject):
                await self._dead(item, ev, "rejected", exc, attempt)
                return
            if not isinstance(exc, Exception):
                raise exc  # KeyboardInterrupt, SystemExit: not ours to swallow
            kind = "timeout" if isinstance(exc, HandlerTimeoutError) else "error"
            m.failed(kind)
            if not self.policy.should_retry(attempt):
                await self._dead(item, ev, "timeout" if kind == "timeout" else "exhausted", exc, attempt)
                return
            # A bus that can park the retry outside this worker (Kafka retry topics) takes it over: the event is
            # finished here, so a long back-off holds neither a slot nor the partition's commit.
            if await self._sub.defer_retry(ev, attempt, exc):
                m.retries += 1
                slot.current = None
                self._finished(item)
                return
            delay = self.policy.delay_s(attempt, exc)
            m.retries += 1
            if not isinstance(exc, Retry):
                self._log_retry(f"event {ev.id}", attempt, exc, delay)
            await asyncio.sleep(delay)
            attempt += 1
            ev = msgspec.structs.replace(ev, attempt=attempt)
            t0, result, error = await self._call_in_slot(slot, self._handler, ev, Context(ev, self))
            if error is not None:
                exc = error
                continue
            self._succeeded(ev, item, slot, t0, result)
            return

    async def _call_in_slot(self, slot: Slot, fn: Any, *args: Any) -> tuple[float, Any, BaseException | None]:
        """One retry attempt on the slow path: take a pool slot, run ``fn(*args)`` under the watchdog, and
        return (start time, result, None), or (start time, None, what it raised) with the slot released."""
        pool = self._pool
        if not pool.try_acquire():
            await pool.acquire()
        t0 = time.perf_counter()
        slot.deadline = t0 + self.timeout_s
        try:
            return t0, await fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - the caller classifies it
            slot.deadline = 0.0
            pool.release()
            self._m.duration.observe(time.perf_counter() - t0)
            return t0, None, exc

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

    def _log_retry(self, what: str, attempt: int, exc: BaseException, delay: float) -> None:
        logger.debug("Agent %r: attempt %d of %s failed (%r); retrying in %.3f s", self.name, attempt, what, exc, delay)

    def _log_dead(self, letter: DeadLetter) -> None:
        # At most _LOG_BURST warnings per agent per second: a failure storm must not become a log storm.
        now = time.monotonic()
        if now - self._log_window >= 1.0:
            if self._log_suppressed:
                logger.warning(
                    "Agent %r: %d more dead letters in the last second were not logged one by one.",
                    self.name,
                    self._log_suppressed,
                )
            self._log_window, self._log_count, self._log_suppressed = now, 0, 0
        if self._log_count < _LOG_BURST:
            self._log_count += 1
            logger.warning(
                "Agent %r dead-lettered event %s as %s (%s): %s: %s",
                self.name,
                letter.event_id or "(undecodable)",
                letter.id,
                letter.reason,
                letter.error_type,
                letter.error,
            )
        else:
            self._log_suppressed += 1

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
        letter = self._letter(item, ev, reason, exc, attempts)
        await self._record(letter)
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
        delay = _DLQ_RETRY_FIRST_S
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
                delay = min(delay * 2, _DLQ_RETRY_MAX_S)
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
        self._finished(item)
        if ev is not None and ev.reply_to is not None:
            self._host._reply(ev, None, letter)
