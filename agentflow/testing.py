"""Fakes and helpers for testing your own agents (layer L6: built on agentflow's public API only).

Test a handler alone, without a runner, bus or event loop plumbing::

    from agentflow.testing import run_handler

    async def test_summarize_emits_a_summary():
        result = await run_handler(summarize, {"text": "a long text"})
        assert result.error is None
        assert result.emitted == [("summaries", {"summary": "a long text"}, None)]

Or run a whole workflow on a real :class:`~agentflow.Runner` and watch a topic with an :class:`EventRecorder`::

    recorder = EventRecorder()
    runner.agent("summaries", name="recorder")(recorder.handler)
    async with runner:
        await runner.emit("texts", {"text": "a long text"})
        [event] = await recorder.wait_for(1)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from agentflow import Context, Event, StateError, new_event_id
from agentflow.llm.mock import Faults, LatencyModel, MockLLMServer
from agentflow.state import ConversationMemory, StateHandle, StateStore, Unit

#: An in-process OpenAI-compatible server for tests of agents that use ``ctx.llm``; point
#: ``[llm.NAME] base_url`` at ``server.url``::
#:
#:     async with MockLLM(latency=LatencyModel(base_ms=5), faults=Faults(error_rate=0.1)) as server:
#:         runner = Runner(config_from_dict({"llm": {"mock": {"base_url": server.url, "default_model": "m"}}}))
#:         ...
#:         assert server.stats().requests == 10
#:
#: With ``tools`` in the request, ``[[call NAME {json}]]`` in the user's message makes it answer with that tool
#: call, and ``[[loop NAME {json}]]`` with the same call every turn (docs/llm.md, "Tool calls from the mock").
MockLLM = MockLLMServer

__all__ = [
    "Emitted",
    "EventRecorder",
    "Faults",
    "HandlerResult",
    "LatencyModel",
    "MockLLM",
    "RecordingContext",
    "make_event",
    "run_handler",
]


def make_event(
    topic: str = "test",
    payload: Any = None,
    *,
    key: str | None = None,
    headers: dict[str, str] | None = None,
    attempt: int = 1,
    depth: int = 0,
    correlation_id: str | None = None,
) -> Event:
    """Build an event as ``runner.emit`` would: a fresh id, ``created_at`` now, and, unless given, a
    ``correlation_id`` equal to the event's own id (the start of a workflow)::

        event = make_event("orders", {"id": 7}, key="customer-1", attempt=2)
        assert event.correlation_id == event.id
    """
    eid = new_event_id()
    return Event(
        topic=topic,
        payload=payload,
        key=key,
        id=eid,
        headers=dict(headers) if headers else None,
        created_at=time.time(),
        attempt=attempt,
        correlation_id=eid if correlation_id is None else correlation_id,
        depth=depth,
    )


class Emitted(NamedTuple):
    """One follow-up event a handler emitted.

    It is a named tuple, so it compares equal to the plain tuple ``(topic, payload, key)``::

        assert result.emitted == [("invoices", {"order": 7}, "customer-1")]
        assert result.emitted[0].topic == "invoices"
    """

    topic: str
    payload: Any
    key: str | None


class _StateOwner:
    """What a real :class:`~agentflow.Context` needs to give a handler its state, outside a runner: the state
    parts of a RecordingContext are those of a real Context, so they behave the same."""

    def __init__(self, name: str, store: StateStore) -> None:
        self.name = name
        self._store = store

    @property
    def state_store(self) -> StateStore:
        return self._store

    def new_unit(self, event: Event) -> Unit:
        return self._store.unit(scope=f"{self.name}:{event.id}" if event.id else None)

    def llm_for(self, event: Event | None) -> Any:
        raise TypeError("RecordingContext gives no ctx.llm; run the handler on a Runner with an [llm.*] provider.")

    def tools_for(self, event: Event | None) -> Any:
        raise TypeError("RecordingContext gives no ctx.tools; run the handler on a Runner with its tools.")

    async def emit_follow_up(
        self,
        parent: Event,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
        start: int,
    ) -> list[str]:
        raise TypeError("RecordingContext records emits itself.")


class RecordingContext:
    """A stand-in for :class:`~agentflow.Context` that records follow-up events instead of publishing them.

    It offers the same public surface (``event``, ``agent``, ``attempt``, ``correlation_id``, ``emit``,
    ``emit_many``, and with a ``state`` store ``state``, ``workflow_state`` and ``memory``). Each follow-up is
    recorded twice: as ``(topic, payload, key)`` in ``emitted``, and in ``follow_ups`` as the
    :class:`~agentflow.Event` the runner would publish (same ``correlation_id``, ``depth + 1``, headers kept).
    ``max_workflow_depth`` is not applied: nothing is dead-lettered here::

        ctx = RecordingContext(make_event("orders", {"id": 7}), agent="place")
        await place(ctx.event, ctx)
        assert ctx.emitted == [("invoices", {"order": 7}, None)]
        assert ctx.follow_ups[0].depth == 1

    ``state`` is a started :class:`~agentflow.state.StateStore` (``async with StateStore() as store``, the
    memory backend by default); ``await ctx.committed()`` waits until the handler's writes are in it.
    """

    def __init__(self, event: Event, *, agent: str = "test", state: StateStore | None = None) -> None:
        self.event = event
        self._agent = agent
        self.emitted: list[Emitted] = []
        self.follow_ups: list[Event] = []
        self._store = state
        self._context: Context | None = None

    def _stateful(self) -> Context:
        if self._store is None:
            raise StateError(
                "This RecordingContext has no state store; pass state=store (a started StateStore, e.g. from "
                "`async with StateStore() as store`) to run_handler or RecordingContext to use ctx.state, "
                "ctx.workflow_state or ctx.memory."
            )
        if self._context is None:
            self._context = Context(self.event, _StateOwner(self._agent, self._store))
        return self._context

    @property
    def state(self) -> StateHandle[Any]:
        """As :attr:`agentflow.Context.state`: the event key's state in this agent's namespace."""
        return self._stateful().state

    @property
    def workflow_state(self) -> StateHandle[Any]:
        """As :attr:`agentflow.Context.workflow_state`: keyed by the correlation id."""
        return self._stateful().workflow_state

    @property
    def memory(self) -> ConversationMemory:
        """As :attr:`agentflow.Context.memory`: the conversation of the event's key."""
        return self._stateful().memory

    async def committed(self) -> None:
        """Wait until the state writes made through this context are committed to the store."""
        unit = self._context._unit if self._context is not None else None
        if unit is not None:
            await unit.committed()

    def __repr__(self) -> str:
        return (
            f"<RecordingContext agent={self._agent!r} event={self.event.id} attempt={self.event.attempt} "
            f"emitted={len(self.emitted)}>"
        )

    @property
    def agent(self) -> str:
        return self._agent

    @property
    def attempt(self) -> int:
        return self.event.attempt

    @property
    def correlation_id(self) -> str | None:
        return self.event.correlation_id

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str | None:
        """Record one follow-up event; return its id, as :meth:`agentflow.Context.emit` does."""
        return self._record(topic, [payload], key, headers)[0]

    async def emit_many(
        self, topic: str, payloads: Sequence[Any], *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Record several follow-up events; return their ids, as :meth:`agentflow.Context.emit_many` does."""
        return self._record(topic, list(payloads), key, headers)

    def _record(self, topic: str, payloads: list[Any], key: str | None, headers: dict[str, str] | None) -> list[str]:
        ids: list[str] = []
        for payload in payloads:
            event = make_event(
                topic,
                payload,
                key=key,
                headers=headers,
                depth=self.event.depth + 1,
                correlation_id=self.event.correlation_id,
            )
            self.emitted.append(Emitted(topic, payload, key))
            self.follow_ups.append(event)
            ids.append(event.id)
        return ids


class HandlerResult(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`run_handler` saw: the handler's return ``value`` (None when it raised), the ``error`` it
    raised (None when it returned), the follow-ups it ``emitted`` as ``(topic, payload, key)`` tuples, the
    same follow-ups as ``follow_ups`` events, and the ``event`` it was given::

        result = await run_handler(place, {"id": 7})
        assert result.error is None and result.value == "placed"
    """

    value: Any
    error: Exception | None
    emitted: list[Emitted]
    follow_ups: list[Event]
    event: Event


async def run_handler(
    handler: Callable[[Event, Any], Awaitable[Any]],
    event_or_payload: Any,
    *,
    topic: str = "test",
    agent: str = "test",
    state: StateStore | None = None,
) -> HandlerResult:
    """Call ``async def handler(event, ctx)`` once, outside any runner, with a :class:`RecordingContext`.

    ``event_or_payload`` is an :class:`~agentflow.Event` (use :func:`make_event` to set ``attempt``, ``key``
    and the rest), or a payload, wrapped in a new event on ``topic``. An exception the handler raises,
    including the outcomes ``Retry``, ``Skip`` and ``Reject``, is returned in ``error`` rather than raised;
    there is no timeout, retry or dead-lettering here. With ``state`` (a started
    :class:`~agentflow.state.StateStore`) the handler has ``ctx.state``, and its writes are committed to the
    store before this returns (when it returned without raising)::

        async def test_place_retries_when_the_stock_service_is_down():
            result = await run_handler(place, make_event("orders", {"id": 7}, attempt=3))
            assert isinstance(result.error, Retry)
            assert result.emitted == []
    """
    event = event_or_payload if isinstance(event_or_payload, Event) else make_event(topic, event_or_payload)
    ctx = RecordingContext(event, agent=agent, state=state)
    value: Any = None
    error: Exception | None = None
    try:
        value = await handler(event, ctx)
        await ctx.committed()
    except Exception as exc:  # noqa: BLE001 - the caller asserts on it; cancellation still propagates
        error = exc
    return HandlerResult(value=value, error=error, emitted=ctx.emitted, follow_ups=ctx.follow_ups, event=event)


class EventRecorder:
    """Captures the events that reach a topic, for end-to-end tests on a real runner.

    Register its ``handler`` (an ``async def`` method, as ``runner.agent`` requires) on the topic to watch,
    under a name of its own; it becomes one more agent, so it sees every event on the topic without taking
    any from the other agents there::

        recorder = EventRecorder()
        runner.agent("invoices", name="invoice-recorder")(recorder.handler)
        async with runner:
            await runner.emit("orders", {"id": 7})
            [invoice] = await recorder.wait_for(1)
        assert recorder.payloads == [{"order": 7}]
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<EventRecorder events={len(self.events)} waiting={len(self._waiters)}>"

    def __len__(self) -> int:
        return len(self.events)

    @property
    def payloads(self) -> list[Any]:
        """The payloads of the recorded events, in arrival order."""
        return [e.payload for e in self.events]

    async def handler(self, event: Event, ctx: object) -> None:
        """The agent handler: record ``event`` and wake whoever waits for this many events."""
        self.events.append(event)
        n = len(self.events)
        for wanted, fut in self._waiters:
            if wanted <= n and not fut.done():
                fut.set_result(None)

    async def wait_for(self, n: int, timeout_s: float = 5.0) -> list[Event]:
        """Wait until at least ``n`` events have arrived and return the first ``n``.

        Raises TimeoutError when fewer than ``n`` arrive within ``timeout_s``.
        """
        if len(self.events) >= n:
            return self.events[:n]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (n, fut)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except TimeoutError:
            raise TimeoutError(
                f"EventRecorder received {len(self.events)} of the {n} events expected within {timeout_s:g} s; "
                "check that an agent emits to the recorded topic, or raise timeout_s."
            ) from None
        finally:
            self._waiters.remove(waiter)
        return self.events[:n]
