"""The context a handler gets beside its event: who it is, and how to emit follow-up events, call LLMs and use
tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..events import Event

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
        self, parent: Event, topic: str, payloads: list[Any], key: str | None, headers: dict[str, str] | None
    ) -> list[str]: ...


class Context(msgspec.Struct, gc=False):
    """What a handler gets beside its event: who it is, and how to emit follow-up events.

    Follow-up events carry the event's ``correlation_id`` and ``depth + 1``; one that would exceed
    ``max_workflow_depth`` goes to the dead-letter queue (reason ``depth_exceeded``) instead::

        @runner.agent("orders")
        async def place(event, ctx):
            await ctx.emit("invoices", {"order": event.payload["id"]}, key=event.key)
    """

    event: Event
    _worker: ContextOwner

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
        """The LLM providers of ``[llm.*]``; calls are attributed to this agent and this workflow::

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

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str | None:
        """Emit one follow-up event; return its id, or None when it was dead-lettered for depth."""
        ids = await self._worker.emit_follow_up(self.event, topic, [payload], key, headers)
        return ids[0] if ids else None

    async def emit_many(
        self, topic: str, payloads: Sequence[Any], *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Emit several follow-up events at once; return their ids (empty when dead-lettered for depth)."""
        return await self._worker.emit_follow_up(self.event, topic, list(payloads), key, headers)
