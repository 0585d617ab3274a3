"""A unit: the state writes of one event, and the moment they are all committed (the durability contract)."""

from __future__ import annotations

import asyncio
import hashlib

from ..errors import StateError

__all__ = ["Unit"]


class Unit:
    """The state writes of one event (all its attempts). Made by ``StateStore.unit``; a worker passes it to the
    event's state handles and acknowledges the event only after ``await unit.committed()``::

        unit = store.unit(scope=f"{agent}:{event.id}")
        unit.begin_attempt()                       # before each attempt: once-ids restart
        await handler(event, StateHandle(store, agent, event.key, unit))
        await unit.committed()                     # raises StateUnavailableError if a flush failed
        subscription.ack(event)

    The store counts the flushes (generations of its write-behind buffer) that hold some of the unit's writes,
    and settles one each time such a flush ends.
    """

    __slots__ = ("_error", "_once_seq", "_outstanding", "_waiter", "gen", "scope", "writes")

    def __init__(self, scope: str | None = None) -> None:
        self.scope = scope
        self.writes = 0
        self.gen = -1  # the last buffer generation this unit wrote into
        self._outstanding = 0
        self._error: StateError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._once_seq: dict[str, int] | None = None

    def __repr__(self) -> str:
        status = "failed" if self._error is not None else "pending" if self._outstanding else "committed"
        return f"<Unit scope={self.scope!r} writes={self.writes} {status}>"

    @property
    def done(self) -> bool:
        """True when nothing of this unit waits to be committed (it may have failed: see ``committed``)."""
        return self._outstanding == 0

    @property
    def pending(self) -> bool:
        """True when ``committed()`` would wait or raise: writes wait for a flush, or a flush failed. A unit
        whose writes were all applied at once (the memory backend) or that only read is never pending."""
        return self._outstanding > 0 or self._error is not None

    def begin_attempt(self) -> None:
        """Start a new attempt of the event: once-ids are numbered from the start again, so a retried
        handler that repeats a ``once=True`` write makes the same id and is recognised."""
        self._once_seq = None

    def once_id(self, key: str) -> str:
        """The once-id of the next ``once=True`` write to ``key`` in this attempt: scope, key, position."""
        if self.scope is None:
            raise StateError(
                "once=True needs a unit with a scope (the agent and the event id); use ctx.state inside a handler, "
                "or make the unit with store.unit(scope=...).",
                key=key,
            )
        seq = self._once_seq
        if seq is None:
            seq = self._once_seq = {}
        n = seq.get(key, 0)
        seq[key] = n + 1
        # Hashed to a fixed size: keys and scopes are the user's and may be long.
        return hashlib.blake2b(f"{self.scope}\x1f{key}\x1f{n}".encode(), digest_size=16).hexdigest()

    async def committed(self) -> None:
        """Return once every write of this unit is committed; raise the StateError of a failed flush."""
        if self._error is not None:
            raise self._error
        if self._outstanding == 0:
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = asyncio.get_running_loop().create_future()
        await waiter
        if self._error is not None:
            raise self._error

    def joined(self) -> None:
        """A flush now holds some of this unit's writes."""
        self._outstanding += 1

    def settle(self, error: StateError | None) -> None:
        """One flush holding this unit's writes ended, committed (``error`` None) or not."""
        self._outstanding -= 1
        if error is not None and self._error is None:
            self._error = error
        if (self._outstanding == 0 or error is not None) and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
