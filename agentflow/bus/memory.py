"""The embedded in-memory bus: bounded, partitioned, at-least-once, with Kafka's group semantics.

Events travel as objects (no encoding). Each (topic, consumer group) pair owns ``partitions`` deques for keyed
events (by the key's hash) and one deque, the keyless lane, for events without a key, holding at most
``buffer_size`` events between them; a publisher waits (FIFO) while any group on the topic is full. The lane is
shared by every member of the group and taken from in emit order, so a keyless event waits behind the keyless
events emitted before it and no others, however long a flood runs; a member takes from its partitions and the
lane in turn, so neither starves the other.
Events of a topic no group has subscribed to are dropped, as a pub/sub topic without subscribers would, but
never silently: they are counted per topic (``unrouted``; ``agentflow_events_unrouted_total{topic}`` on the
runner's metrics) and logged (at most one warning every ``UNROUTED_LOG_EVERY_S``). With
``refuse_unrouted=True`` (``[bus] refuse_unrouted``) the publish raises :class:`~agentflow.errors.BusError`
instead and nothing is published — subscribe before you publish.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from itertools import repeat, starmap

from ..errors import BackpressureError, BusError, LifecycleError
from ..events import DeadLetter, RawEvent
from .base import Bus, BusStatistics, Item, Subscription, SubscriptionStatistics, WakeUps

__all__ = ["MemoryBus", "MemorySubscription"]

_key_of = operator.attrgetter("key")
#: Topics counted by name among the unrouted events; the others are counted under "_other" (bounded labels).
MAX_UNROUTED_TOPICS = 1000
#: At most one warning about unrouted events this often; it says how many were dropped since the last one.
UNROUTED_LOG_EVERY_S = 10.0

logger = logging.getLogger(__name__)


class _Group:
    __slots__ = ("capacity", "lane", "members", "name", "owners", "partitions", "size", "sleepers", "topic")

    def __init__(self, topic: str, name: str, partitions: int, capacity: int) -> None:
        self.topic = topic
        self.name = name
        self.partitions: list[deque[Item]] = [deque() for _ in range(partitions)]
        self.lane: deque[Item] = deque()  # keyless events, in emit order
        self.owners: list[MemorySubscription | None] = [None] * partitions
        self.members: list[MemorySubscription] = []
        self.capacity = capacity
        self.size = 0
        #: Members waiting in wait() and not woken yet: a keyless publish with none to wake looks at no member.
        self.sleepers = 0

    def assign(self) -> None:
        """Share partitions among members round-robin (join order), waking whoever gained work."""
        for m in self.members:
            m._parts = []
            m._part_ids = []
        self.owners = [None] * len(self.partitions)
        if not self.members:
            return
        for p, dq in enumerate(self.partitions):
            m = self.members[p % len(self.members)]
            m._parts.append(dq)
            m._part_ids.append(p)
            self.owners[p] = m
        for m in self.members:
            m._parts.append(self.lane)  # taken in turn with the member's partitions (take_nowait rotates)
            m._next = 0
            m._wake()

    def wake_lane(self) -> None:
        """Keyless events arrived: wake the first member waiting for work (any member may take them)."""
        for m in self.members:
            if m._asleep:
                m._wake()
                return


class MemorySubscription(WakeUps, Subscription):
    """A member of a consumer group on the memory bus."""

    def __init__(self, bus: MemoryBus, group: _Group) -> None:
        self.topic = group.topic
        self.group = group.name
        self._bus = bus
        self._g = group
        self._parts: list[deque[Item]] = []
        self._part_ids: list[int] = []
        self._next = 0
        self._unacked: dict[int, Item] = {}
        self._closed = False
        self._taken = 0
        self._requeued = 0
        #: In wait() and not woken yet (counted in the group's sleepers).
        self._asleep = False

    def __repr__(self) -> str:
        return (
            f"<MemorySubscription topic={self.topic!r} group={self.group!r} partitions={self._part_ids} "
            f"buffered={self._buffered()} unacked={len(self._unacked)}>"
        )

    def _buffered(self) -> int:
        """Events this member may take: its partitions' and the group's keyless lane (shared by the members)."""
        return sum(map(len, self._parts))

    def take_nowait(self, max_n: int) -> list[Item]:
        g = self._g
        if not g.size or self._closed or max_n < 1:
            return []
        lane = g.lane
        if len(lane) == g.size:  # only keyless events wait: no partition to look at
            return self._take_from(lane, max_n)
        parts = self._parts
        n = len(parts)
        start = self._next
        for j in range(n):
            dq = parts[(start + j) % n]
            if dq:
                # Drain one partition per call and rotate, so a busy partition cannot starve the others.
                self._next = (start + j + 1) % n
                return self._take_from(dq, max_n)
        return []

    def _take_from(self, dq: deque[Item], max_n: int) -> list[Item]:
        """Take up to ``max_n`` items (at least one) from ``dq``, one of this member's partitions or the lane."""
        k = len(dq)
        if k == 1:  # one event at a time is the common case under light load: no zip/map machinery
            item = dq.popleft()
            items = [item]
            self._unacked[id(item)] = item
        else:
            if k <= max_n:
                items = list(dq)
                dq.clear()
            else:
                items = list(starmap(dq.popleft, repeat((), max_n)))  # max_n poplefts in C
                k = max_n
            self._unacked.update(zip(map(id, items), items, strict=True))
        g = self._g
        g.size -= k
        self._taken += k
        if self._bus._putters.get(g.topic):
            self._bus._wake_putters(g.topic, k)
        return items

    async def wait(self) -> bool:
        if self._closed:
            return False
        for dq in self._parts:
            if dq:
                return True
        self._g.sleepers += 1
        self._asleep = True
        try:
            return await self._sleep()
        finally:
            self._woken()  # cancelled, or the bus closed: no longer asleep either way

    def _woken(self) -> None:
        if self._asleep:
            self._asleep = False
            self._g.sleepers -= 1

    def ack(self, item: Item) -> None:
        self._unacked.pop(id(item), None)

    def ack_many(self, items: Sequence[Item]) -> None:
        # unacked.pop(id(item), None) for each item, in C
        deque(map(self._unacked.pop, map(id, items), repeat(None)), maxlen=0)

    def requeue(self, items: Sequence[Item]) -> None:
        g = self._g
        back = [it for it in items if self._unacked.pop(id(it), None) is not None]
        nparts = len(g.partitions)
        for it in reversed(back):
            key = it.key
            (g.lane if key is None else g.partitions[hash(key) % nparts]).appendleft(it)
        g.size += len(back)
        self._requeued += len(back)
        for m in g.members:
            m._wake()

    async def aclose(self) -> None:
        if self._closed:
            return
        pending = list(self._unacked.values())
        self.requeue(pending)
        self._closed = True
        if self in self._g.members:
            self._g.members.remove(self)
            self._g.assign()
        self._wake()

    def statistics(self) -> SubscriptionStatistics:
        buffered = self._buffered()
        return SubscriptionStatistics(
            topic=self.topic,
            group=self.group,
            partitions=tuple(self._part_ids),
            buffered=buffered,
            unacked=len(self._unacked),
            taken=self._taken,
            acked=self._taken - self._requeued - len(self._unacked),
            requeued=self._requeued,
            lag=buffered + len(self._unacked),
        )


class MemoryBus(Bus):
    """The default bus: everything in this process, bounded, no encoding.

    Create one yourself to share it between runners (for example to see events that one runner left pending
    picked up by the next); a runner closes only a bus it created::

        bus = MemoryBus(partitions=8, buffer_size=10_000)
        async with Runner(config, bus=bus) as runner:
            ...
    """

    backend = "memory"
    started_when_created = True  # nothing to connect: usable as soon as it exists

    def __init__(
        self,
        *,
        partitions: int = 8,
        buffer_size: int = 10_000,
        dlq_max_entries: int = 10_000,
        refuse_unrouted: bool = False,
    ) -> None:
        if partitions < 1 or buffer_size < 1 or dlq_max_entries < 1:
            raise ValueError("partitions, buffer_size and dlq_max_entries must all be at least 1.")
        self.partitions = partitions
        self.buffer_size = buffer_size
        #: raise BusError for events of a topic nobody subscribes to, instead of counting and dropping them
        self.refuse_unrouted = refuse_unrouted
        self._unrouted_by_topic: dict[str, int] = {}
        self._unrouted_logged_at = -math.inf
        self._unrouted_unlogged = 0
        self._topics: dict[str, list[_Group]] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._putters: dict[str, deque[asyncio.Future[None]]] = {}
        # Per topic: publishers woken for room that have not run yet. Each will use at least one event's room,
        # so the turn is passed on only when room remains beyond theirs (no wake-up that finds the room gone).
        self._woken: dict[str, int] = {}
        self._dead: deque[DeadLetter] = deque()
        self._dlq_max = dlq_max_entries
        self._dlq_evicted = 0
        self._published = 0
        self._unrouted = 0
        self._closed = False

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<MemoryBus topics={len(self._topics)} groups={len(self._groups)} buffered={s.buffered} "
            f"unacked={s.unacked} published={s.published} dead_letters={s.dead_letters}>"
        )

    async def _close(self) -> None:
        self._closed = True
        for g in self._groups.values():
            for m in list(g.members):
                await m.aclose()
        for topic in self._putters:
            self._wake_putters(topic, len(self._putters[topic]))

    @staticmethod
    def _fits(groups: list[_Group], n: int, headroom: int = 0) -> bool:
        for g in groups:
            if g.size + n > g.capacity + headroom:
                return False
        return True

    def _wake_putters(self, topic: str, k: int) -> None:
        putters = self._putters.get(topic)
        woken = 0
        while putters and woken < k:
            fut = putters.popleft()
            if not fut.done():
                fut.set_result(None)
                woken += 1
        if woken:
            self._woken[topic] = self._woken.get(topic, 0) + woken

    def offer(self, topic: str, events: Sequence[Item]) -> bool:
        if self._closed or self._putters.get(topic):
            return False
        groups = self._topics.get(topic)
        if groups is None:
            self._drop_unrouted(topic, len(events))
            return True
        if len(events) == 1:  # the single-emit hot path, inlined
            for g in groups:
                if g.size >= g.capacity:
                    return False
            e = events[0]
            self._published += 1
            key = e.key
            if key is None:
                for g in groups:
                    g.size += 1
                    g.lane.append(e)
                    if g.sleepers:
                        g.wake_lane()
                return True
            p = hash(key) % self.partitions
            for g in groups:
                g.size += 1
                g.partitions[p].append(e)
                owner = g.owners[p]
                if owner is not None and owner._waiter is not None:
                    owner._wake()
            return True
        if not self._fits(groups, len(events)):
            return False
        self._append(groups, events)
        return True

    def _append(self, groups: list[_Group], events: Sequence[Item]) -> None:
        n = len(events)
        self._published += n
        nparts = self.partitions
        key0 = events[0].key
        same_key = n == 1 or list(map(_key_of, events)).count(key0) == n
        for g in groups:
            g.size += n
            if same_key and key0 is None:
                g.lane.extend(events)
                for m in g.members:  # a batch may keep several members busy
                    m._wake()
            elif same_key:
                p = hash(key0) % nparts
                g.partitions[p].extend(events)
                owner = g.owners[p]
                if owner is not None:
                    owner._wake()
            else:
                parts, lane = g.partitions, g.lane
                for e in events:
                    key = e.key
                    (lane if key is None else parts[hash(key) % nparts]).append(e)
                for m in g.members:
                    m._wake()

    def _check_open(self) -> None:
        if self._closed:
            raise LifecycleError("Cannot publish on a MemoryBus once it has been closed.")

    def _drop_unrouted(self, topic: str, n: int, group: str | None = None) -> None:
        """Events nobody reads: refuse them (``refuse_unrouted``), or count them by topic and log, rate-limited."""
        reader = f"agent {group!r}" if group is not None else "agent"
        if self.refuse_unrouted:
            raise BusError(
                f"No {reader} subscribes to topic {topic!r} on this memory bus, so the {n} event(s) would be "
                "dropped; nothing was published. Check the topic's name, register the agent before emitting, or "
                "set [bus] refuse_unrouted = false to count and drop such events instead."
            )
        self._unrouted += n
        counts = self._unrouted_by_topic
        key = topic if topic in counts or len(counts) < MAX_UNROUTED_TOPICS else "_other"
        counts[key] = counts.get(key, 0) + n
        self._unrouted_unlogged += n
        now = time.monotonic()
        if now - self._unrouted_logged_at >= UNROUTED_LOG_EVERY_S:
            logger.warning(
                "Dropped %d event(s) with no subscriber on this memory bus (the latest for topic %r): no %s "
                "reads it. Check the topic's name and register its agent before emitting, or set "
                "[bus] refuse_unrouted = true to make emit raise instead.",
                self._unrouted_unlogged,
                topic,
                reader,
                extra={"topic": topic},
            )
            self._unrouted_logged_at, self._unrouted_unlogged = now, 0

    def _route(self, topic: str, group: str | None) -> list[_Group] | None:
        if group is None:
            return self._topics.get(topic)
        g = self._groups.get((topic, group))
        return [g] if g is not None else None

    async def publish(
        self, topic: str, events: Sequence[Item], *, group: str | None = None, follow_up: bool = False
    ) -> None:
        self._check_open()
        if not events:
            return
        groups = self._route(topic, group)
        if not groups:
            self._drop_unrouted(topic, len(events), group)
            return
        # A batch larger than the buffer goes in buffer-sized chunks, each waiting for room in every group.
        step = self.buffer_size
        headroom = self.buffer_size if follow_up else 0
        putters = self._putters.get(topic)
        if putters is None:
            putters = self._putters[topic] = deque()
        for i in range(0, len(events), step):
            chunk = events[i : i + step] if len(events) > step else events
            n = len(chunk)
            if (putters and not follow_up) or not self._fits(groups, n, headroom):
                # FIFO per topic: a publisher queues behind earlier waiting ones even if room just appeared; once
                # woken it keeps its place at the head if the room was not enough. (Inline, not a helper
                # coroutine: under overload every waiting publisher runs this.)
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                putters.append(fut)
                while True:
                    try:
                        await fut
                    except BaseException:
                        if fut.done() and not fut.cancelled():
                            self._woken[topic] -= 1  # woken, then cancelled before it ran
                        else:
                            fut.cancel()
                        if self._fits(groups, 1 + self._woken.get(topic, 0)):
                            self._wake_putters(topic, 1)  # never strand the publishers behind a cancelled one
                        raise
                    self._woken[topic] -= 1
                    self._check_open()
                    if self._fits(groups, n, headroom):
                        break
                    fut = asyncio.get_running_loop().create_future()
                    putters.appendleft(fut)
            self._append(groups, chunk)
            if putters and self._fits(groups, 1 + self._woken.get(topic, 0)):
                self._wake_putters(topic, 1)  # pass the turn on while room remains

    def publish_nowait(self, topic: str, events: Sequence[Item]) -> None:
        self._check_open()
        if not events:
            return
        groups = self._topics.get(topic)
        if not groups:
            self._drop_unrouted(topic, len(events))
            return
        n = len(events)
        if self._putters.get(topic) or not self._fits(groups, n):
            full = [f"{g.name} ({g.size}/{g.capacity})" for g in groups if g.size + n > g.capacity]
            raise BackpressureError(
                f"The buffer of topic {topic!r} is full: no room for {n} event(s) for agent(s) "
                f"{', '.join(full) or 'behind waiting publishers'}; await runner.emit(...) to wait for room, "
                f"slow down, or raise runner.event_buffer_size."
            )
        self._append(groups, events)

    async def publish_raw(self, topic: str, data: bytes, key: str | None = None) -> None:
        await self.publish(topic, [RawEvent(topic, bytes(data), key)])

    async def subscribe(self, topic: str, group: str) -> Subscription:
        self._check_open()
        g = self._groups.get((topic, group))
        if g is None:
            g = _Group(topic, group, self.partitions, self.buffer_size)
            self._groups[(topic, group)] = g
            self._topics.setdefault(topic, []).append(g)
        sub = MemorySubscription(self, g)
        g.members.append(sub)
        g.assign()
        return sub

    def subscriber_count(self, topic: str) -> int | None:
        return len(self._topics.get(topic, ()))

    async def dead_letter(self, letter: DeadLetter) -> None:
        if len(self._dead) >= self._dlq_max:
            old = self._dead.popleft()
            self._dlq_evicted += 1
            logger.warning(
                "Dead-letter list full (%d entries): evicted %s of topic %r; raise dlq.max_entries to keep more.",
                self._dlq_max,
                old.id,
                old.topic,
            )
        self._dead.append(letter)

    async def iter_dead_letters(self, *, topic: str | None = None) -> AsyncIterator[DeadLetter]:
        # A snapshot: dead letters written while the caller iterates (a replayed event failing again) are
        # not part of this pass.
        for d in list(self._dead):
            if topic is None or d.topic == topic:
                yield d

    async def remove_dead_letters(self, ids: Sequence[str]) -> int:
        wanted = set(ids)
        before = len(self._dead)
        self._dead = deque(d for d in self._dead if d.id not in wanted)
        return before - len(self._dead)

    def statistics(self) -> BusStatistics:
        subs = tuple(m.statistics() for g in self._groups.values() for m in g.members)
        return BusStatistics(
            backend=self.backend,
            published=self._published,
            unrouted=self._unrouted,
            unrouted_by_topic=dict(self._unrouted_by_topic),
            buffered=sum(g.size for g in self._groups.values()),
            unacked=sum(s.unacked for s in subs),
            dead_letters=len(self._dead),
            dead_letters_evicted=self._dlq_evicted,
            publishers_waiting=sum(1 for q in self._putters.values() for f in q if not f.done()),
            subscriptions=subs,
        )
