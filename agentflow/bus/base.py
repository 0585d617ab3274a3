"""The bus contract, written for Kafka semantics so the memory and Kafka buses are interchangeable.

* A topic is split into partitions by key; events with the same key land in the same partition, in order.
* Each consumer group gets every event of the topics it subscribes to (fan-out across groups); the members of
  one group share the partitions between them. agentflow gives every agent its own group.
* Delivery is at-least-once: a subscriber takes events, and acknowledges each once it is finished with it
  (handled, or recorded in the dead-letter queue). Anything taken and not acknowledged when the subscription
  closes — or given back with :meth:`Subscription.requeue` — is delivered again, in its original order.
* Buffers are bounded: :meth:`Bus.publish` waits while a subscriber's buffer is full,
  :meth:`Bus.publish_nowait` raises :class:`~agentflow.errors.BackpressureError` instead.
* Dead letters are kept by the bus (memory: a bounded list; Kafka: ``<topic>.dlq`` topics).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence
from typing import TypeAlias

import msgspec

from ..events import DeadLetter, Event, RawEvent

__all__ = ["Bus", "BusStatistics", "Item", "Subscription", "SubscriptionStatistics"]

#: What a subscription yields: an event, or raw bytes for the consumer to decode (and dead-letter when they
#: are not a valid event).
Item: TypeAlias = Event | RawEvent


class SubscriptionStatistics(msgspec.Struct, frozen=True):
    """Live counts of one subscription: ``buffered`` (waiting in the bus) and ``unacked`` (taken)."""

    topic: str
    group: str
    partitions: tuple[int, ...]
    buffered: int
    unacked: int
    taken: int
    acked: int
    requeued: int


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


class Bus(abc.ABC):
    """An event bus: publish, subscribe, and keep dead letters."""

    backend: str

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; idempotent."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every subscription and release resources; idempotent."""

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
    async def dead_letters(self, *, topic: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first, optionally only those of ``topic``."""

    @abc.abstractmethod
    async def remove_dead_letters(self, ids: Sequence[str]) -> int:
        """Forget the dead letters with these ids (after a replay); return how many were removed."""

    @abc.abstractmethod
    def statistics(self) -> BusStatistics:
        """Live counts of this bus."""
