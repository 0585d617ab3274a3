"""The runner's view of the dead-letter queue: list entries and replay them to the agent that failed them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from .events import DeadLetter

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["DeadLetters"]


class DeadLetters:
    """The runner's view of the dead-letter queue: list entries and replay them.

    Replay re-delivers an event to the agent that failed it (not to every agent on the topic), starting again
    at attempt 1, and removes it from the queue::

        for letter in await runner.dlq.list(agent="summarize"):
            print(letter.reason, letter.error)
        await runner.dlq.replay(agent="summarize")
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def list(
        self, *, topic: str | None = None, agent: str | None = None, limit: int | None = None
    ) -> list[DeadLetter]:
        letters = await self._runner.bus.dead_letters(topic=topic)
        if agent is not None:
            letters = [d for d in letters if d.agent == agent]
        return letters if limit is None else letters[:limit]

    async def replay(
        self, ids: Sequence[str] | None = None, *, topic: str | None = None, agent: str | None = None
    ) -> int:
        """Re-deliver the matching dead letters that hold a decoded event; return how many were replayed."""
        r = self._runner
        r._check_accepting()
        wanted = set(ids) if ids is not None else None
        done: list[str] = []
        for d in await self.list(topic=topic, agent=agent):
            if (wanted is not None and d.id not in wanted) or d.event is None:
                continue
            ev = msgspec.structs.replace(d.event, attempt=1, created_at=time.time())
            await r.bus.publish(d.topic, [ev], group=d.agent)
            done.append(d.id)
        await r.bus.remove_dead_letters(done)
        return len(done)
