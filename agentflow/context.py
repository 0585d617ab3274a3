"""What agents are made of before they run: the registration record, the context a handler gets, and the
hooks an agent needs from its runner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from .events import DeadLetter, Event

if TYPE_CHECKING:
    from .agents import AgentWorker
    from .llm.hub import AgentLLM

__all__ = ["AgentSpec", "Context", "Handler"]

Handler = Callable[[Event, "Context"], Awaitable[Any]]


class _Host(Protocol):
    """What an agent needs from its runner."""

    async def _emit_follow_up(
        self,
        parent: Event,
        agent: str,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
    ) -> list[str]: ...

    async def _dead_letter(self, letter: DeadLetter) -> None: ...

    def _reply(self, event: Event, result: Any, dead: DeadLetter | None) -> None: ...

    def _llm_for(self, agent: str, event: Event | None) -> AgentLLM: ...


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An agent as registered with ``@runner.agent`` (before config overrides are applied)."""

    name: str
    topic: str
    handler: Any
    concurrency: int | None = None
    timeout_s: float | None = None
    retry: Any = None
    payload_type: Any = None
    batch_size: int | None = None


class Context(msgspec.Struct, gc=False):
    """What a handler gets beside its event: who it is, and how to emit follow-up events.

    Follow-up events carry the event's ``correlation_id`` and ``depth + 1``; one that would exceed
    ``max_workflow_depth`` goes to the dead-letter queue (reason ``depth_exceeded``) instead::

        @runner.agent("orders")
        async def place(event, ctx):
            await ctx.emit("invoices", {"order": event.payload["id"]}, key=event.key)
    """

    event: Event
    _worker: AgentWorker

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
        return self._worker._host._llm_for(self._worker.name, self.event)

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str | None:
        """Emit one follow-up event; return its id, or None when it was dead-lettered for depth."""
        ids = await self._worker._host._emit_follow_up(self.event, self._worker.name, topic, [payload], key, headers)
        return ids[0] if ids else None

    async def emit_many(
        self, topic: str, payloads: Sequence[Any], *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Emit several follow-up events at once; return their ids (empty when dead-lettered for depth)."""
        return await self._worker._host._emit_follow_up(
            self.event, self._worker.name, topic, list(payloads), key, headers
        )
