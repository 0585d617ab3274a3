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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..bus.base import Item, Subscription
from ..errors import EventDecodeError, EventError, EventTooLargeError
from ..events import Event, EventCodec, RawEvent, convert_payload
from ..metrics import MAX_OBSERVED_S, AgentMetrics
from ..pool import Slot, WorkerPool
from ..resilience.retry import RetryPolicy
from ..state.store import StateStore
from ..state.unit import Unit
from .context import Context
from .failures import FailurePath
from .spec import Handler, Host

if TYPE_CHECKING:
    from ..llm.hub import AgentLLM
    from ..tools import ToolBox

__all__ = ["AgentWorker"]

logger = logging.getLogger(__name__)


class AgentWorker(FailurePath):
    """Runs one agent: dispatcher, workers, ordering by key, timeouts, retries, dead letters, acks."""

    def __init__(
        self,
        *,
        name: str,
        handler: Handler,
        sub: Subscription,
        pool: WorkerPool,
        metrics: AgentMetrics,
        host: Host,
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

    async def close_subscription(self) -> None:
        """Leave the agent's consumer group: whatever it has not acknowledged is delivered again."""
        await self._sub.aclose()

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

    # ---- workers ---------------------------------------------------------------------------------------

    async def _work(self, slot: Slot) -> None:  # noqa: C901 - the measured per-event hot path, kept in one frame
        # The hot path: a plain event whose key is free is handled right here, with the steps of _begin,
        # _attempt_done and _succeeded_all (the slow path's) written out around the handler call. A handler whose
        # state writes still wait for their flush goes on through _completed, the slow path's, as failures do.
        # Each algorithm they use — the key claim, the pool's slot accounting, the histograms, the ack — is one
        # method, bound to a local here;
        # tests/agentflow/agents/test_hot_path.py drives the same scenarios through both paths and compares what
        # they record.
        # Anything else — raw bytes, typed payloads, failures, parked keys — takes the slow path.
        local, idle = self._local, self._idle
        loop = asyncio.get_running_loop()
        handler = self._handler
        claim = self._claim
        pool = self._pool
        # pool.try_acquire() and pool.release() are written out below for the common case, nobody waiting for a
        # slot (two calls fewer per event); with waiters the pool's own methods run.
        release, waiters = pool.release, pool.waiters
        m = self._m
        # Pow2Histogram.observe is written out below for these two (two calls fewer per event);
        # test_hot_path.py checks the hot path files every value, NaN and out-of-range ones too, where observe does.
        waits, runs = m.queue_wait, m.duration
        wait_counts, run_counts = waits.counts, runs.counts
        perf = time.perf_counter
        timeout = self.timeout_s
        active = self._active
        ack = self._sub.ack
        reply = self._host._reply
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
            if key is not None and not claim(key, ev, item):
                continue
            slot.current = ev
            if pool.busy < pool.size and not waiters:  # pool.try_acquire(), written out
                pool.busy += 1
            else:
                await self._acquire(slot, key)
            t0 = perf()  # _begin
            w = t0 + self._wall_offset - ev.created_at  # waits.observe(w), written out
            if not 0.0 <= w <= MAX_OBSERVED_S:  # NaN and inf too
                w = 0.0 if w < 0.0 else MAX_OBSERVED_S
            wait_counts[int(w * 1_000_000).bit_length()] += 1
            waits.sum += w
            slot.deadline = t0 + timeout
            ctx = Context(ev, self)
            try:
                result = await handler(ev, ctx)
            except BaseException as exc:  # noqa: BLE001 - classified in _failed
                self._attempt_failed(slot, t0)
                try:
                    await self._failed([ev], [item], slot, exc, [ctx._unit])
                    if key is not None:
                        await self._drain_key(key, slot)
                except asyncio.CancelledError:
                    self._abandon_key(slot, key)
                    raise
                continue
            slot.deadline = 0.0  # _attempt_done
            if slot.timed_out:
                self._swallowed_timeout(slot)
            if waiters:
                release()  # hands the slot to the oldest waiter
            else:
                pool.busy -= 1  # pool.release() with nobody waiting, written out
            took = perf() - t0  # runs.observe(took), written out: perf_counter differences are finite and >= 0
            run_counts[int(took * 1_000_000).bit_length()] += 1
            runs.sum += took
            if ctx._unit is not None and ctx._unit.pending:
                # State writes wait for their flush: the slow path acknowledges the event once they are in.
                try:
                    await self._completed([ev], [item], slot, [ctx._unit], result)
                    if key is not None:
                        await self._drain_key(key, slot)
                except asyncio.CancelledError:
                    self._abandon_key(slot, key)
                    raise
                continue
            m.handled += 1  # _succeeded_all
            slot.current = None
            ack(item)
            self.inflight -= 1
            if self._room is not None:
                self._room_freed()
            if ev.reply_to is not None:
                reply(ev, result, None)
            if key is not None:
                if active[key] is None:
                    del active[key]
                else:
                    try:
                        await self._drain_key(key, slot)
                    except asyncio.CancelledError:
                        self._abandon_key(slot, key)
                        raise

    def _begin(self, ev: Event, slot: Slot) -> float:
        """A handler run starts (its pool slot taken): record the queue wait, arm the watchdog; the start time."""
        t0 = time.perf_counter()
        self._m.queue_wait.observe(t0 + self._wall_offset - ev.created_at)  # emit → start, slot wait included
        slot.deadline = t0 + self.timeout_s
        return t0

    def _succeeded(self, ev: Event, item: Item, slot: Slot, result: Any) -> None:
        """Bookkeeping once a handler returned ``result`` and its state writes are in: count, acknowledge, reply."""
        m = self._m
        m.handled += 1
        slot.current = None
        self._sub.ack(item)
        self.inflight -= 1
        if self._room is not None:
            self._room_freed()
        if ev.reply_to is not None:
            self._host._reply(ev, result, None)

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
        """Take ``key`` for this worker, or park the event behind the worker that has it (False)."""
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
        """The slow path's handler run: convert a typed payload, take a slot, run, then succeed or fail."""
        slot.current = item
        if self._payload_type is not None:
            try:
                ev = msgspec.structs.replace(ev, payload=convert_payload(ev.payload, self._payload_type))
            except EventDecodeError as exc:
                await self._dead(item, ev, "wrong_schema", exc, 0)
                return
        pool = self._pool
        if not pool.try_acquire():
            await pool.acquire()
        t0 = self._begin(ev, slot)
        units: list[Unit | None] = [None]
        try:
            result = await self._invoke([ev], units)
        except BaseException as exc:  # noqa: BLE001 - classified in _failed
            self._attempt_failed(slot, t0)
            await self._failed([ev], [item], slot, exc, units)
            return
        self._attempt_done(slot, t0)
        await self._completed([ev], [item], slot, units, result)

    # ---- the unit of the slow path (FailurePath): one event ---------------------------------------------

    async def _invoke(self, events: list[Event], units: list[Unit | None]) -> Any:
        ev = events[0]
        ctx = Context(ev, self, units[0])
        try:
            return await self._handler(ev, ctx)
        finally:
            units[0] = ctx._unit

    def _succeeded_all(self, events: list[Event], items: list[Item], slot: Slot, result: Any) -> None:
        self._succeeded(events[0], items[0], slot, result)

    def _finish_all(self, items: Sequence[Item]) -> None:
        if len(items) == 1:
            self._sub.ack(items[0])
        else:
            self._sub.ack_many(items)
        self.inflight -= len(items)
        self._room_freed()

    def _reply_all(self, events: list[Event], results: Any) -> None:
        reply = self._host._reply
        for ev in events:
            if ev.reply_to is not None:
                reply(ev, None, None)

    # ---- what a Context needs (ContextOwner) -------------------------------------------------------------

    def llm_for(self, event: Event | None) -> AgentLLM:
        return self._host._llm_for(self.name, event)

    def tools_for(self, event: Event | None) -> ToolBox:
        return self._host._tools_for(self.name, event)

    async def emit_follow_up(
        self,
        parent: Event,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
        start: int = 0,
    ) -> list[str]:
        return await self._host._emit_follow_up(parent, self.name, topic, payloads, key, headers, start)

    @property
    def state_store(self) -> StateStore:
        return self._host.state_store

    def new_unit(self, event: Event) -> Unit:
        """The state unit of ``event`` (all its attempts): once-writes are scoped by this agent and the event's id."""
        return self._host.state_store.unit(scope=f"{self.name}:{event.id}" if event.id else None)
