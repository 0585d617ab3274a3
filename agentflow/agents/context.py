"""The context a handler gets beside its event: who it is, how to emit follow-up events, call LLMs, use tools and
keep state.

The state parts (``ctx.state``, ``ctx.workflow_state``, ``ctx.memory``) are made on first use: a handler that
never touches them costs nothing more. The first use makes the event's :class:`~agentflow.state.Unit`, and the
worker acknowledges the event only once the writes made through it are committed (docs/state.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..errors import StateError
from ..events import Event
from ..state.conversation import ConversationMemory
from ..state.handle import MEMORY_NAMESPACE_PREFIX, WORKFLOW_NAMESPACE, StateHandle
from ..state.store import StateStore
from ..state.unit import Unit

if TYPE_CHECKING:
    from ..llm.hub import AgentLLM
    from ..tools import ToolBox

__all__ = ["Context", "ContextOwner"]


class ContextOwner(Protocol):
    """What a :class:`Context` needs from the agent worker that made it."""

    name: str

    def llm_for(self, event: Event | None) -> AgentLLM: ...

    def tools_for(self, event: Event | None) -> ToolBox: ...

    async def emit_follow_up(
        self,
        parent: Event,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
        start: int,
    ) -> list[str]: ...

    @property
    def state_store(self) -> StateStore: ...

    def new_unit(self, event: Event) -> Unit: ...


class Context(msgspec.Struct, gc=False):
    """What a handler gets beside its event: who it is, how to emit follow-up events, and its state.

    Follow-up events carry the event's ``correlation_id`` and ``depth + 1``, and ids derived from the event's id
    and their position among its emits; one that would exceed ``max_workflow_depth`` goes to the dead-letter
    queue (reason ``depth_exceeded``) instead::

        @runner.agent("orders")
        async def place(event, ctx):
            total = await ctx.state.update(lambda n: n + event.payload["amount"], default=0, once=True)
            await ctx.emit("invoices", {"order": event.payload["id"], "total": total}, key=event.key)
    """

    event: Event
    _worker: ContextOwner
    _unit: Unit | None = None
    _emits: int = 0
    _state: StateHandle[Any] | None = None  # ctx.state, made on first use

    def __repr__(self) -> str:
        return f"<Context agent={self._worker.name!r} event={self.event.id} attempt={self.event.attempt}>"

    @property
    def agent(self) -> str:
        return self._worker.name

    @property
    def attempt(self) -> int:
        return self.event.attempt

    @property
    def correlation_id(self) -> str | None:
        return self.event.correlation_id

    @property
    def llm(self) -> AgentLLM:
        """The LLM providers of ``[llm.*]``; calls are attributed to this agent and this workflow, and use the
        agent's ``provider``, ``model``, ``temperature`` and ``cache_ttl_s`` when they give none::

        reply = await ctx.llm.chat([{"role": "user", "content": "hi"}], model="gpt-4o-mini")
        """
        return self._worker.llm_for(self.event)

    @property
    def tools(self) -> ToolBox:
        """The agent's tools (``@runner.agent(..., tools=[...])``), for this event: calls of stateful MCP servers
        follow its key and workflow; :meth:`~agentflow.tools.ToolBox.call_many` runs at most the agent's
        ``max_parallel_tools`` at once::

            run = await ctx.llm.run(messages, tools=ctx.tools)
            result = await ctx.tools.call("get_weather", {"city": "Oslo"})
        """
        return self._worker.tools_for(self.event)

    # ---- state -----------------------------------------------------------------------------------------

    def _state_unit(self) -> Unit:
        unit = self._unit
        if unit is None:
            unit = self._unit = self._worker.new_unit(self.event)
        return unit

    @property
    def state(self) -> StateHandle[Any]:
        """The state of the event's key in this agent's namespace; ``ctx.state.of(namespace, key)`` for any other
        key (docs/state.md)::

        count = await ctx.state.update(lambda n: n + 1, default=0)
        profile = await ctx.state.of("profiles", user_id).typed(Profile).get()
        """
        handle = self._state
        if handle is None:
            key = self.event.key
            store = self._worker.state_store
            if key is None:
                handle = _Keyless(store, self._worker.name, self.event.id, self._state_unit())
            else:
                handle = StateHandle(store, self._worker.name, key, self._state_unit())
            self._state = handle
        return handle

    @property
    def workflow_state(self) -> StateHandle[Any]:
        """State shared by every agent of this workflow run: keyed by the correlation id."""
        ev = self.event
        return StateHandle(self._worker.state_store, WORKFLOW_NAMESPACE, ev.correlation_id or ev.id, self._state_unit())

    @property
    def memory(self) -> ConversationMemory:
        """The conversation history of the event's key for this agent (``[memory] conversation_*``)::

        await ctx.memory.append({"role": "user", "content": text}, once=True)
        history = await ctx.memory.window(max_tokens=3000)
        """
        key = self.event.key
        if key is None:
            raise StateError(
                f"Event {self.event.id or '(no id)'} has no key, so ctx.memory has no conversation to name; emit "
                "it with key=<conversation id>."
            )
        store = self._worker.state_store
        cfg = store.config
        handle: StateHandle[Any] = StateHandle(
            store, MEMORY_NAMESPACE_PREFIX + self._worker.name, key, self._state_unit()
        )
        return ConversationMemory(handle, max_messages=cfg.conversation_max_messages, ttl_s=cfg.conversation_ttl_s)

    # ---- emitting --------------------------------------------------------------------------------------

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str | None:
        """Emit one follow-up event; return its id, or None when it was dead-lettered for depth."""
        start = self._emits
        self._emits = start + 1
        ids = await self._worker.emit_follow_up(self.event, topic, [payload], key, headers, start)
        return ids[0] if ids else None

    async def emit_many(
        self, topic: str, payloads: Sequence[Any], *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Emit several follow-up events at once; return their ids (empty when dead-lettered for depth)."""
        items = list(payloads)
        start = self._emits
        self._emits = start + len(items)
        return await self._worker.emit_follow_up(self.event, topic, items, key, headers, start)


class _Keyless(StateHandle[Any], gc=False):
    """``ctx.state`` of an event without a key: ``of(namespace, key)`` works, the event's own key does not."""

    def _refuse(self) -> StateError:
        return StateError(
            f"Event {self.key or '(no id)'} has no key, so ctx.state has no key of its own; emit the event with "
            "key=..., or name a key with ctx.state.of(namespace, key)."
        )

    async def get(self, default: Any = None) -> Any:
        raise self._refuse()

    async def set(self, value: Any, ttl_s: float | None = None, *, once: bool = False) -> None:
        raise self._refuse()

    async def update(self, fn: Any, *, default: Any = None, ttl_s: float | None = None, once: bool = False) -> Any:
        raise self._refuse()

    async def delete(self) -> None:
        raise self._refuse()

    def typed(self, tp: Any) -> Any:
        raise self._refuse()
