"""Batch agents: one handler call for up to ``batch_size`` events at once.

``@runner.agent("docs", batch_size=64)`` registers ``async def handler(events, ctx)``: ``events`` is a list of
:class:`~agentflow.events.Event` in delivery order and ``ctx`` a :class:`BatchContext`. A worker takes the
events already delivered to the agent, up to ``batch_size``, and never waits to fill a batch, so a batch agent
adds no latency at light load and amortises the per-call cost under heavy load (embedding a batch of documents
with one upstream request, bulk writes).

Everything else follows the per-event agent (:mod:`agentflow.agents`):

* Ordering: events with the same key run in order. A key in one worker's batch is held by that worker until the
  batch ends; other workers park that key's events behind it, and the holder handles them in its next batch.
* Outcome: the batch succeeds or fails as a whole. A failure (or timeout of the whole call) retries the whole
  batch per the agent's retry policy; after the last attempt every event in it goes to the dead-letter queue.
  ``Skip`` acknowledges them all, ``Reject`` dead-letters them all.
* Results: return ``None`` or one result per event (in order); ``runner.request`` receives its event's result.
* Raw bytes that do not decode and payloads that do not fit ``payload=`` go to the dead-letter queue one by one;
  the rest of the batch runs.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from itertools import repeat, starmap
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ..errors import EventDecodeError
from ..events import Event, RawEvent, convert_payload
from ..pool import Slot
from ..state.unit import Unit
from .context import Context
from .worker import AgentWorker

if TYPE_CHECKING:
    from ..llm.hub import AgentLLM
    from ..tools import ToolBox

__all__ = ["BatchAgentWorker", "BatchContext", "BatchHandler"]

# (event, item it came from): item is the Event itself, or the RawEvent it was decoded from
_Pair = tuple[Event, Any]
_Bad = tuple[Any, Event | None, str, Exception]
_key_of = operator.attrgetter("key")
_created_of = operator.attrgetter("created_at")
_reply_to_of = operator.attrgetter("reply_to")


class BatchContext(msgspec.Struct, gc=False):
    """What a batch handler gets beside its events.

    Follow-up events and state writes belong to one event, so ``emit`` names it with ``parent`` and
    ``of(event)`` gives that event's own :class:`~agentflow.agents.context.Context` (its ``state``, ``memory``
    and follow-up ids); the batch is acknowledged once every event's writes are committed::

        @runner.agent("docs", batch_size=64)
        async def embed(events, ctx):
            vectors = await my_model.embed([e.payload["text"] for e in events])
            for ev, vec in zip(events, vectors):
                await ctx.of(ev).state.set(vec)
                await ctx.emit("vectors", {"id": ev.payload["id"], "vector": vec}, parent=ev)
    """

    events: list[Event]
    _worker: AgentWorker
    _units: list[Unit | None] | None = None
    _contexts: dict[int, Context] | None = None

    def __repr__(self) -> str:
        return f"<BatchContext agent={self._worker.name!r} events={len(self.events)} attempt={self.attempt}>"

    @property
    def agent(self) -> str:
        return self._worker.name

    @property
    def attempt(self) -> int:
        """This batch's attempt number (1 on the first call)."""
        return max((e.attempt for e in self.events), default=1)

    @property
    def llm(self) -> AgentLLM:
        """The LLM providers of ``[llm.*]``, with calls attributed to this agent.

        A batch spans several workflows, so these calls count against no workflow's token budget; use
        ``ctx.of(event).llm`` for calls made on behalf of one event's workflow.
        """
        return self._worker.llm_for(None)

    @property
    def tools(self) -> ToolBox:
        """The agent's tools, for the batch as a whole (no event key or workflow: use ``ctx.of(event).tools``
        for calls of stateful MCP servers made on behalf of one event)."""
        return self._worker.tools_for(None)

    def of(self, event: Event) -> Context:
        """The per-event :class:`~agentflow.context.Context` of one event of this batch (the same one on every
        call for the same event, so its follow-ups are numbered in order)."""
        contexts = self._contexts
        if contexts is None:
            contexts = self._contexts = {}
        ctx = contexts.get(id(event))
        if ctx is None:
            unit = None
            units = self._units
            if units is not None:
                i = next((i for i, e in enumerate(self.events) if e is event), None)
                unit = None if i is None else units[i]
            ctx = contexts[id(event)] = Context(event, self._worker, unit)
        return ctx

    def _collect_units(self, units: list[Unit | None]) -> None:
        """Put the units this call's per-event contexts made into ``units`` (parallel to ``events``)."""
        contexts = self._contexts
        if contexts:
            for i, ev in enumerate(self.events):
                ctx = contexts.get(id(ev))
                if ctx is not None and ctx._unit is not None:
                    units[i] = ctx._unit

    async def emit(
        self,
        topic: str,
        payload: Any,
        *,
        parent: Event,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str | None:
        """Emit one follow-up event of ``parent``'s workflow; None when it was dead-lettered for depth."""
        return await self.of(parent).emit(topic, payload, key=key, headers=headers)

    async def emit_many(
        self,
        topic: str,
        payloads: Sequence[Any],
        *,
        parent: Event,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> list[str]:
        """Emit several follow-up events of ``parent``'s workflow at once."""
        return await self.of(parent).emit_many(topic, payloads, key=key, headers=headers)


BatchHandler = Callable[[list[Event], BatchContext], Awaitable[Any]]


class BatchAgentWorker(AgentWorker):
    """An :class:`AgentWorker` whose workers call the handler with lists of events.

    A batch travels as two parallel lists, the events and the bus items they came from (the same objects
    unless raw bytes were decoded), so the common case — plain events without keys — costs a few C-level
    list operations per batch rather than Python work per event.
    """

    def __init__(self, *, batch_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self._call = cast(BatchHandler, self._handler)

    async def _work(self, slot: Slot) -> None:
        local, idle = self._local, self._idle
        loop = asyncio.get_running_loop()
        carry: list[_Pair] = []  # events of keys this worker holds: they go first in its next batch
        mine: set[str] = set()  # keys this worker holds
        items: list[Any] = []
        bad: list[_Bad] = []  # items going to the dead-letter queue, in order; given back if cancelled meanwhile
        try:
            while True:
                if not carry and not local:
                    if self._stopping:
                        return
                    fut = loop.create_future()
                    idle.append(fut)
                    try:
                        await fut
                    finally:
                        self._waking = False
                    continue
                events, items, carry, bad = self._collect(carry, mine)
                if local and idle and not self._waking:
                    self._wake_one()
                while bad:
                    await self._dead(*bad[0], 0)
                    del bad[0]
                if events:
                    await self._run(events, items, slot)
                items = []
                if mine:
                    carry += self._release_keys(mine, carry)
        except asyncio.CancelledError:
            parked = [it for key in mine for _, it in (self._active.pop(key, None) or ())]
            slot.deadline = 0.0
            self._give_back(items + [it for _, it in carry] + parked + [b[0] for b in bad])
            raise

    def _collect(self, carry: list[_Pair], mine: set[str]) -> tuple[list[Event], list[Any], list[_Pair], list[_Bad]]:
        """Take up to ``batch_size`` events, ``carry`` first, claiming keys and parking busy ones.

        Returns the batch (events, items), the part of ``carry`` that did not fit (it stays first in line for
        this worker, its keys still held), and the items that go to the dead-letter queue.
        """
        n = self.batch_size
        events = [ev for ev, _ in carry[:n]]
        items = [it for _, it in carry[:n]]
        rest = carry[n:]
        local = self._local
        bad: list[_Bad] = []
        while len(events) < n and local:
            chunk: list[Any] = list(starmap(local.popleft, repeat((), min(n - len(events), len(local)))))
            k = len(chunk)
            if (
                self._payload_type is None
                and list(map(type, chunk)).count(Event) == k
                and list(map(_key_of, chunk)).count(None) == k
            ):
                events += chunk
                items += chunk
            else:
                self._sort(chunk, events, items, mine, bad)
        return events, items, rest, bad

    def _sort(self, chunk: list[Any], events: list[Event], items: list[Any], mine: set[str], bad: list[_Bad]) -> None:
        """The general path of :meth:`_collect`: decode, convert, and claim or park keys, item by item."""
        for item in chunk:
            prepared = self._prepare(item)
            if not isinstance(prepared, Event):
                bad.append((item, *prepared))
                continue
            ev = prepared
            key = ev.key
            if key is not None and key not in mine:
                if not self._claim(key, ev, item):
                    continue  # parked behind the worker that holds the key
                mine.add(key)
            events.append(ev)
            items.append(item)

    def _prepare(self, item: Any) -> Event | tuple[Event | None, str, Exception]:
        """Decode raw bytes and convert the payload; on failure (event or None, reason, error)."""
        ev: Event = item
        if type(item) is RawEvent:
            got = self._raw_event(item)
            if not isinstance(got, Event):
                return None, *got
            ev = got
        if self._payload_type is not None:
            try:
                ev = msgspec.structs.replace(ev, payload=convert_payload(ev.payload, self._payload_type))
            except EventDecodeError as exc:
                return ev, "wrong_schema", exc
        return ev

    def _release_keys(self, mine: set[str], rest: list[_Pair]) -> list[_Pair]:
        """After a batch: keys with parked events, or with events in ``rest``, stay held (those run next);
        the others are released. Returns the parked events, to go after ``rest``."""
        active = self._active
        keep = {ev.key for ev, _ in rest}
        carry: list[_Pair] = []
        for key in list(mine):
            parked = active[key]
            if parked:
                carry.extend(parked)
                active[key] = None
            elif key not in keep:
                del active[key]
                mine.discard(key)
        return carry

    async def _run(self, events: list[Event], items: list[Any], slot: Slot) -> None:
        pool = self._pool
        if not pool.try_acquire():
            await pool.acquire()
        t0 = time.perf_counter()
        self._queue_waits(events, t0 + self._wall_offset)
        slot.deadline = t0 + self.timeout_s
        units: list[Unit | None] = [None] * len(events)
        try:
            results = await self._invoke(events, units)
        except BaseException as exc:  # noqa: BLE001 - classified in _failed
            self._attempt_failed(slot, t0)
            await self._failed(events, items, slot, exc, units)
            return
        self._attempt_done(slot, t0)
        await self._completed(events, items, slot, units, results)

    def _queue_waits(self, events: list[Event], now: float) -> None:
        """Observe emit → start for each event; events emitted together (equal created_at) cost one step."""
        qw = self._m.queue_wait
        created = list(map(_created_of, events))
        first = created[0]
        n = len(created)
        if created.count(first) == n:
            qw.observe_many(now - first, n)
        else:
            for c in created:
                qw.observe(now - c)

    def _results(self, result: Any, n: int) -> Sequence[Any] | None:
        if result is None:
            return None
        if isinstance(result, list | tuple) and len(result) == n:
            return result
        got = f"{len(result)} results" if isinstance(result, list | tuple) else f"a {type(result).__name__}"
        raise TypeError(
            f"Batch agent {self.name!r} returned {got} for {n} events; return None or a list with one result "
            "per event, in order."
        )

    # ---- the unit of the slow path (FailurePath): one batch ---------------------------------------------

    async def _invoke(self, events: list[Event], units: list[Unit | None]) -> Sequence[Any] | None:
        bctx = BatchContext(events, self, units if any(u is not None for u in units) else None)
        try:
            return self._results(await self._call(events, bctx), len(events))
        finally:
            bctx._collect_units(units)

    def _succeeded_all(self, events: list[Event], items: list[Any], slot: Slot, results: Sequence[Any] | None) -> None:
        self._m.handled += len(events)
        self._finish_all(items)
        self._reply_all(events, results)

    def _reply_all(self, events: list[Event], results: Sequence[Any] | None) -> None:
        n = len(events)
        if list(map(_reply_to_of, events)).count(None) == n:
            return
        reply = self._host._reply
        for i, ev in enumerate(events):
            if ev.reply_to is not None:
                reply(ev, None if results is None else results[i], None)
