"""What an agent is before it runs: the registration record, the handler's type, and what its runner provides."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..events import DeadLetter, Event

if TYPE_CHECKING:
    from ..llm.hub import AgentLLM
    from ..state.store import StateStore
    from ..tools import ToolBox
    from .context import Context

__all__ = ["AgentSpec", "Handler", "Host"]

Handler = Callable[[Event, "Context"], Awaitable[Any]]


class Host(Protocol):
    """What an agent needs from its runner: follow-up emits, the dead-letter queue, replies, the LLMs and the
    state store."""

    async def _emit_follow_up(
        self,
        parent: Event,
        agent: str,
        topic: str,
        payloads: list[Any],
        key: str | None,
        headers: dict[str, str] | None,
        start: int = 0,
    ) -> list[str]: ...

    async def _dead_letter(self, letter: DeadLetter) -> None: ...

    def _reply(self, event: Event, result: Any, dead: DeadLetter | None) -> None: ...

    def _llm_for(self, agent: str, event: Event | None) -> AgentLLM: ...

    def _tools_for(self, agent: str, event: Event | None) -> ToolBox: ...

    @property
    def state_store(self) -> StateStore: ...


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
    tools: tuple[str, ...] | None = None
    max_parallel_tools: int | None = None
    # ctx.llm defaults of this agent; [agents.NAME] overrides them.
    provider: str | None = None
    model: str | None = None
    temperature: float | None = None
    cache_ttl_s: float | None = None
