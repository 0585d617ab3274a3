"""The bus contract, written for Kafka semantics so the memory and Kafka buses are interchangeable.

* A topic is split into partitions by key; events with the same key land in the same partition, in order.
* Each consumer group gets every event of the topics it subscribes to (fan-out across groups); the members of
  one group share the partitions between them. agentflow gives every agent its own group.
* Delivery is at-least-once: a subscriber takes events, and acknowledges each once it is finished with it
  (handled, or recorded in the dead-letter queue). Anything taken and not acknowledged when the subscription
  closes — or given back with :meth:`Subscription.requeue` — is delivered again, in its original order.
* Buffers are bounded: :meth:`Bus.publish` waits while a subscriber's buffer is full,
  :meth:`Bus.publish_nowait` raises :class:`~agentflow.errors.BackpressureError` instead.
* Dead letters are kept by the bus (memory: a bounded list; Kafka: ``<topic>.dlq`` topics). Each has its own id;
  they are listed in *position* order, ``(failed_at, id)`` — a total order, so a listing can be paged by the
  position of the last entry seen, exactly once per entry, in either direction.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeAlias

import msgspec

from ..events import DeadLetter, Event, RawEvent
from ..lifecycle import Lifecycle

__all__ = ["Bus", "BusStatistics", "Item", "Subscription", "SubscriptionStatistics"]

#: What a subscription yields: an event, or raw bytes for the consumer to decode (and dead-letter when they
#: are not a valid event).
Item: TypeAlias = Event | RawEvent

#: Where a dead letter sorts: ``(failed_at, id)``. Dead-letter ids are unique, so no two entries share one.
DeadLetterPosition: TypeAlias = tuple[float, str]


def dead_letter_position(letter: DeadLetter) -> DeadLetterPosition:
    return (letter.failed_at, letter.id)


class _Selection:
    """The first ``limit`` dead letters in position order (or reverse) past ``after`` and up to ``until``.

    Fed one letter at a time from a scan in any order; holds at most ``2 * limit`` letters, trimming by a sort
    whenever it fills, so a page costs O(n log limit) time and O(limit) memory whatever the queue's size.
    """

    __slots__ = ("_after", "_buf", "_cap", "_limit", "_newest", "_until")

    def __init__(
        self,
        limit: int | None,
        newest_first: bool,
        after: DeadLetterPosition | None,
        until: DeadLetterPosition | None,
    ) -> None:
        self._limit = limit
        self._cap = None if limit is None else 2 * limit + 16
        self._newest = newest_first
        self._after = after
        self._until = until
        self._buf: list[DeadLetter] = []

    def add(self, letter: DeadLetter) -> None:
        p = (letter.failed_at, letter.id)
        after, until = self._after, self._until
        if self._newest:
            if (after is not None and p >= after) or (until is not None and p < until):
                return
        elif (after is not None and p <= after) or (until is not None and p > until):
            return
        self._buf.append(letter)
        if self._cap is not None and len(self._buf) >= self._cap:
            self._trim()

    def _trim(self) -> None:
        self._buf.sort(key=dead_letter_position, reverse=self._newest)
        if self._limit is not None:
            del self._buf[self._limit :]

    def result(self) -> list[DeadLetter]:
        self._trim()
        return self._buf


class SubscriptionStatistics(msgspec.Struct, frozen=True):
    """Live counts of one subscription: ``buffered`` (waiting in the bus) and ``unacked`` (taken); ``lag`` is the
    events not yet finished — on Kafka the distance from the committed position to the end of each assigned
    partition, as far as the last fetch knows it (None before the first fetch)."""

    topic: str
    group: str
    partitions: tuple[int, ...]
    buffered: int
    unacked: int
    taken: int
    acked: int
    requeued: int
    lag: int | None = None


class BusStatistics(msgspec.Struct, frozen=True):
    """Live counts of a bus."""

    backend: str
    published: int
    unrouted: int
    buffered: int
    unacked: int
    dead_letters: int
    dead_letters_evicted: int
    publishers_waiting: int
    subscriptions: tuple[SubscriptionStatistics, ...]
    #: ``unrouted`` by topic (bounded: beyond MAX_UNROUTED_TOPICS names, under "_other"); memory bus only
    unrouted_by_topic: dict[str, int] = msgspec.field(default_factory=dict)


class Subscription(abc.ABC):
    """One consumer's view of a topic within a consumer group."""

    topic: str
    group: str

    @abc.abstractmethod
    def take_nowait(self, max_n: int) -> list[Item]:
        """Take up to ``max_n`` items without waiting (possibly none), in partition order."""

    @abc.abstractmethod
    async def wait(self) -> bool:
        """Wait until items may be available; return False once the subscription is closed."""

    @abc.abstractmethod
    def ack(self, item: Item) -> None:
        """Mark a taken item finished; it will not be delivered again."""

    async def defer_retry(self, event: Event, attempt: int, exc: BaseException) -> bool:
        """Take over the retry of ``event`` after failed attempt ``attempt``, outside the worker.

        True means the bus keeps the event for a later attempt (the Kafka bus's retry topics) and the worker
        acknowledges the original; False (the default) means the worker retries in-process.
        """
        return False

    def set_listener(self, listener: Callable[[], bool] | None) -> bool:
        """Ask to be called synchronously when items arrive while a ``wait()`` is pending; True if supported.

        The listener may take items at once (no wake-up of the waiting task, so one event-loop turn less per
        event); it returns True when it took everything it could, or False to have ``wait()`` return as usual.
        Buses that cannot call back (the default) return False, and consumers rely on ``wait()`` alone.
        """
        return False

    def set_rebalance_listener(self, listener: Callable[[], None] | None) -> bool:
        """Ask to be called whenever partitions are assigned to this member or taken from it (after the revoked
        partitions' commit); True if supported. Whoever caches what the keys of its partitions hold (the state
        store) forgets it then. Buses whose partitions never move to another process return False."""
        return False

    def ack_many(self, items: Sequence[Item]) -> None:
        """Mark several taken items finished (what a batch agent finishes at once); same as ``ack`` on each."""
        for item in items:
            self.ack(item)

    @abc.abstractmethod
    def requeue(self, items: Sequence[Item]) -> None:
        """Give taken, unfinished items back for redelivery ahead of newer ones, keeping their order."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Leave the group; every unacknowledged item is delivered again. Idempotent."""

    @abc.abstractmethod
    def statistics(self) -> SubscriptionStatistics:
        """Live counts of this subscription."""


class WakeUps:
    """What both buses' subscriptions share for ``wait()``: the one task waiting for items, and the listener
    (:meth:`Subscription.set_listener`) that may take them instead. Mix it in before :class:`Subscription`; the
    subscription sets ``_closed`` and calls :meth:`_wake` when items arrive, and ``wait()`` ends in :meth:`_sleep`.
    """

    _waiter: asyncio.Future[None] | None = None
    _listener: Callable[[], bool] | None = None
    _closed: bool = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            listener = self._listener
            if listener is not None and not self._closed and listener():
                return  # taken synchronously: the waiting task sleeps on, and the loop saves a turn
            w.set_result(None)
            self._woken()

    def _woken(self) -> None:
        """The waiting task was just woken (it runs on its next turn); a subscription may note it."""

    def set_listener(self, listener: Callable[[], bool] | None) -> bool:
        self._listener = listener
        return True

    async def _sleep(self) -> bool:
        """Wait for the next wake-up; False once the subscription is closed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiter = fut
        try:
            await fut
        finally:
            self._waiter = None
        return not self._closed


class Bus(Lifecycle, abc.ABC):
    """An event bus: publish, subscribe, and keep dead letters.

    Its lifecycle is :class:`~agentflow.lifecycle.Lifecycle`'s: ``start`` connects (a bus shared by several
    runners may be started by each), ``aclose`` closes every subscription and releases resources, once.
    """

    backend: str
    shared = True

    @abc.abstractmethod
    async def publish(
        self, topic: str, events: Sequence[Item], *, group: str | None = None, follow_up: bool = False
    ) -> None:
        """Publish events, waiting while a subscriber's buffer is full.

        ``group`` delivers to that consumer group only (a dead-letter replay for the agent that failed).
        ``follow_up`` marks events emitted by a handler: they may use one extra buffer's worth of room before
        waiting, so agents that emit into busy topics (their own included) cannot deadlock on each other.
        """

    @abc.abstractmethod
    def publish_nowait(self, topic: str, events: Sequence[Item]) -> None:
        """Publish events or raise BackpressureError without publishing any of them."""

    def offer(self, topic: str, events: Sequence[Item]) -> bool:
        """Publish if it can be done without waiting and return True; else publish nothing and return False.

        The emit hot path tries this before awaiting :meth:`publish`; buses may override it with a faster path.
        """
        from ..errors import BackpressureError

        try:
            self.publish_nowait(topic, events)
        except BackpressureError:
            return False
        return True

    @abc.abstractmethod
    async def publish_raw(self, topic: str, data: bytes, key: str | None = None) -> None:
        """Publish bytes as received from outside; subscribers decode them (bad bytes are dead-lettered)."""

    @abc.abstractmethod
    async def subscribe(self, topic: str, group: str) -> Subscription:
        """Join ``group`` on ``topic`` and return the subscription."""

    def subscriber_count(self, topic: str) -> int | None:
        """Number of consumer groups on ``topic`` known to this process, or None when unknowable."""
        return None

    async def topic_exists(self, topic: str) -> bool:
        """Whether ``topic`` exists on the bus: for an in-process bus, whether a consumer group reads it; a
        broker-backed bus asks the brokers. HTTP ingest accepts events only for topics that exist or are allowed."""
        return bool(self.subscriber_count(topic))

    @abc.abstractmethod
    async def dead_letter(self, letter: DeadLetter) -> None:
        """Record a dead letter."""

    @abc.abstractmethod
    def iter_dead_letters(self, *, topic: str | None = None) -> AsyncIterator[DeadLetter]:
        """Every dead letter not removed (only those of ``topic`` if given), in the order the bus stores them.

        Iterate to the end (or ``aclose()`` the iterator): on Kafka it holds a consumer open meanwhile.
        """

    async def dead_letters(
        self,
        *,
        topic: str | None = None,
        agent: str | None = None,
        limit: int | None = None,
        newest_first: bool = False,
        after: DeadLetterPosition | None = None,
        until: DeadLetterPosition | None = None,
    ) -> list[DeadLetter]:
        """Dead letters in position order, oldest first (``newest_first``: the reverse), at most ``limit``.

        ``topic`` and ``agent`` filter; ``after`` starts strictly past that position and ``until`` stops at it
        (inclusive), both in the direction of the order, so the position of a page's last entry as ``after``
        gives the next page. One pass over :meth:`iter_dead_letters`, holding at most about twice ``limit``
        letters.
        """
        pick = _Selection(limit, newest_first, after, until)
        async for letter in self.iter_dead_letters(topic=topic):
            if agent is None or letter.agent == agent:
                pick.add(letter)
        return pick.result()

    @abc.abstractmethod
    async def remove_dead_letters(self, ids: Sequence[str]) -> int:
        """Forget the dead letters with these (dead-letter) ids, after a replay; return how many were removed."""

    @abc.abstractmethod
    def statistics(self) -> BusStatistics:
        """Live counts of this bus."""
