"""The runner's view of the dead-letter queue: list entries (in pages) and replay them to the agent that failed them."""

from __future__ import annotations

import base64
import binascii
import itertools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import msgspec

from .bus.base import DeadLetterPosition, dead_letter_position
from .events import DeadLetter, Event

if TYPE_CHECKING:
    from .runner import Runner

__all__ = ["DeadLetterPage", "DeadLetters"]

#: Which end of the queue a listing starts from: ``oldest`` or ``newest`` (by ``failed_at``, then id).
Order: TypeAlias = Literal["oldest", "newest"]

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100
# Letters replayed per read of the queue: a replay of n letters reads it about 2 * ceil(n / REPLAY_CHUNK) + 1
# times (select, then remove, per chunk), and holds at most ~2 * REPLAY_CHUNK letters at once.
REPLAY_CHUNK: Final = 1000
_MAX_CURSOR_CHARS: Final = 2048

_cursor_enc = msgspec.msgpack.Encoder()
_cursor_dec = msgspec.msgpack.Decoder(tuple[Literal["oldest", "newest"], float, str])


class DeadLetterPage(msgspec.Struct, frozen=True):
    """One page of a dead-letter listing. ``next_cursor`` fetches the next page (same order), None after the
    last; a cursor stays valid however the queue changes meanwhile (it marks a position, not an offset)."""

    dead_letters: list[DeadLetter]
    next_cursor: str | None = None


def _bad_cursor(cursor: str) -> ValueError:
    shown = cursor if len(cursor) <= 40 else cursor[:37] + "..."
    return ValueError(
        f"The cursor {shown!r} is not one a dead-letter listing returned; pass the next_cursor of the previous "
        f"page unchanged, or leave the cursor out to start from the first page."
    )


def _encode_cursor(order: Order, position: DeadLetterPosition) -> str:
    raw = _cursor_enc.encode((order, position[0], position[1]))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class DeadLetters:
    """The runner's view of the dead-letter queue: list entries, a page at a time, and replay them.

    Every dead letter has its own ``id`` (``letter.event_id`` is the event's). Listings are ordered by
    ``failed_at`` (then ``id``), oldest or newest first. Replay re-delivers an event to the agent that failed
    it (not to every agent on the topic), starting again at attempt 1, and removes that dead letter; if the
    event fails again, it is a new dead letter, listed like any other::

        page = await runner.dlq.page(agent="summarize", order="newest", limit=50)
        for letter in page.dead_letters:
            print(letter.id, letter.reason, letter.error)
        if page.next_cursor is not None:  # None on the last page
            more = await runner.dlq.page(agent="summarize", cursor=page.next_cursor)
        await runner.dlq.replay(agent="summarize")
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def list(
        self,
        *,
        topic: str | None = None,
        agent: str | None = None,
        limit: int | None = None,
        order: Order = "oldest",
    ) -> list[DeadLetter]:
        """Every matching dead letter (or the first ``limit``), in ``order``. For a large queue use
        :meth:`page`: this holds the whole list."""
        _check_order(order)
        return await self._runner.bus.dead_letters(
            topic=topic, agent=agent, limit=limit, newest_first=order == "newest"
        )

    async def page(
        self,
        *,
        topic: str | None = None,
        agent: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
        order: Order | None = None,
    ) -> DeadLetterPage:
        """Up to ``limit`` (1 to ``MAX_PAGE``) matching dead letters after ``cursor``, in ``order``.

        ``order`` defaults to ``oldest``, or to the order the cursor was made for. Raises ValueError with a
        sentence for a bad limit, order or cursor. Pass the same ``topic``/``agent`` with each cursor.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"The page limit {limit!r} is not a whole number from 1 to {MAX_PAGE}.")
        if order is not None:
            _check_order(order)
        after: DeadLetterPosition | None = None
        if cursor is not None:
            order, after = self._parse_cursor(cursor, order)
        elif order is None:
            order = "oldest"
        # One more than asked says whether a next page exists, without a second read.
        letters = await self._runner.bus.dead_letters(
            topic=topic, agent=agent, limit=limit + 1, newest_first=order == "newest", after=after
        )
        if len(letters) <= limit:
            return DeadLetterPage(letters)
        del letters[limit:]
        return DeadLetterPage(letters, _encode_cursor(order, dead_letter_position(letters[-1])))

    @staticmethod
    def check_cursor(cursor: str, order: Order | None = None) -> Order:
        """Return the order ``cursor`` pages in; ValueError with a sentence when it is not a cursor a listing
        returned, or was made for the other ``order``. Lets a caller refuse a bad cursor before any read."""
        return DeadLetters._parse_cursor(cursor, order)[0]

    @staticmethod
    def _parse_cursor(cursor: str, order: Order | None) -> tuple[Order, DeadLetterPosition]:
        if not cursor or len(cursor) > _MAX_CURSOR_CHARS:
            raise _bad_cursor(cursor)
        try:
            raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
            made_for, failed_at, letter_id = _cursor_dec.decode(raw)
        except (binascii.Error, ValueError, msgspec.DecodeError):
            raise _bad_cursor(cursor) from None
        if not math.isfinite(failed_at):
            raise _bad_cursor(cursor)
        if order is not None and order != made_for:
            raise ValueError(
                f"The cursor pages {made_for} first, but order={order!r} was asked for; give order={made_for!r} "
                f"(or none) with this cursor, or leave the cursor out to start {order} first."
            )
        return made_for, (failed_at, letter_id)

    async def replay(
        self, ids: Sequence[str] | None = None, *, topic: str | None = None, agent: str | None = None
    ) -> int:
        """Re-deliver the matching dead letters that hold a decoded event; return how many were replayed.

        ``ids`` are dead-letter ids (``letter.id``), not event ids: one event can have several dead letters
        (one per agent that failed it, and a new one each time it fails again after a replay). Without ``ids``
        every match of ``topic``/``agent`` that is in the queue when the call starts is replayed, oldest first,
        a chunk at a time; dead letters written meanwhile (events that fail again at once) stay for the next
        replay.
        """
        r = self._runner
        r._check_accepting()
        bus = r.bus
        if ids is not None:
            wanted = set(ids)
            if not wanted:
                return 0
            found = [
                d
                async for d in bus.iter_dead_letters(topic=topic)
                if d.id in wanted and (agent is None or d.agent == agent)
            ]
            found.sort(key=dead_letter_position)
            return await self._replay(found)
        newest = await bus.dead_letters(topic=topic, agent=agent, limit=1, newest_first=True)
        if not newest:
            return 0
        until = dead_letter_position(newest[0])
        after: DeadLetterPosition | None = None
        n = 0
        while True:
            chunk = await bus.dead_letters(topic=topic, agent=agent, limit=REPLAY_CHUNK, after=after, until=until)
            n += await self._replay(chunk)
            if len(chunk) < REPLAY_CHUNK:
                return n
            after = dead_letter_position(chunk[-1])

    async def _replay(self, letters: Sequence[DeadLetter]) -> int:
        bus = self._runner.bus
        now = time.time()
        runs = itertools.groupby((d for d in letters if d.event is not None), key=lambda d: (d.topic, d.agent))
        done: list[str] = []
        try:
            for (topic, agent), run in runs:
                batch = list(run)
                events: list[Event] = []
                for d in batch:
                    assert d.event is not None
                    events.append(msgspec.structs.replace(d.event, attempt=1, created_at=now))
                await self._runner.workflows.replaying(events)  # their runs are running again
                await bus.publish(topic, events, group=agent)
                done.extend(d.id for d in batch)
        finally:
            # What was published leaves the queue even if a later publish failed, so it is not sent twice.
            if done:
                await bus.remove_dead_letters(done)
        return len(done)


def _check_order(order: str) -> None:
    if order not in ("oldest", "newest"):
        raise ValueError(f"The order {order!r} is neither 'oldest' nor 'newest'.")
