"""A Kafka bus subscription: one aiokafka consumer in the agent's group, its fetcher and committer tasks.

It talks to its bus only through :class:`~agentflow.bus.kafka.link.BusLink`. The fetcher
polls without pause and keeps fetched records per partition, pausing the partitions when buffered + unfinished
reach the bus's ``buffer_size``; the committer commits the contiguous prefix of finished offsets
(:class:`~agentflow.bus.kafka.offsets.OffsetTracker`). With ``[kafka] retry_topics`` the same consumer reads the
agent's retry tiers (:mod:`agentflow.bus.kafka.retry`). See docs/kafka.md.

No record stops the fetcher: one it cannot read (not an event, over the size limit, a damaged header, anything)
is handed on as a :class:`~agentflow.events.RawEvent` the agent dead-letters with the reason
(:mod:`agentflow.bus.kafka.records`). The fetcher is
supervised all the same: if it fails, the subscription reports not ready, and it starts again with back-off from
the offsets it handed on. A rebalance that gives this member back partitions it held keeps their events in flight
(and their buffered ones) instead of fetching and running them a second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
from aiokafka.abc import ConsumerRebalanceListener  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError, RecordTooLargeError  # type: ignore[import-untyped]

from ...errors import BusUnavailableError
from ...events import Event
from ..base import Item, Subscription, SubscriptionStatistics, WakeUps
from .offsets import OffsetTracker, PartitionOffsets
from .records import RecordReader
from .retry import RetryTiers

if TYPE_CHECKING:
    from ...config import KafkaConfig
    from .link import BusLink

__all__ = ["KafkaSubscription"]

logger = logging.getLogger("agentflow.bus.kafka")  # one logger name for the whole Kafka bus

# A fetch loop that failed starts again after 0.1 s, doubling up to 30 s while it keeps failing.
_RESTART_FIRST_S = 0.1
_RESTART_MAX_S = 30.0


#: How often a worker joining a consumer group says it is still waiting for its partitions.
JOIN_PROGRESS_S = 10.0


def join_timeout_s(k: KafkaConfig) -> float:
    """How long a new member waits for its partitions: a join waits for the other members to rejoin, each within
    the rebalance timeout (aiokafka's default: the session timeout), so a few of those are plenty; past it the
    member gives up with an error (a supervised worker is restarted) instead of hanging in its start."""
    return 4 * k.session_timeout_ms / 1000


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, sub: KafkaSubscription) -> None:
        self.sub = sub

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.sub._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.sub._assigned(set(assigned))


async def _stop_consumer(consumer: Any) -> None:
    """``consumer.stop()``, minus a cancellation that is not ours: aiokafka's fetcher awaits the fetch tasks it has
    just cancelled, so stopping while a fetch is backing off (brokers unreachable) raises their CancelledError."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we are being cancelled ourselves
        # stop() gave up before its last step, closing the client's connections: take that step here.
        client = getattr(consumer, "_client", None)
        if client is not None:
            await client.close()


class KafkaSubscription(RecordReader, WakeUps, Subscription):
    """A member of a consumer group on a Kafka topic (one aiokafka consumer)."""

    def __init__(self, bus: BusLink, topic: str, group: str, *, offset_reset: str | None = None) -> None:
        self.topic = topic
        self.group = group
        self._group_bytes = group.encode()
        self._bus = bus
        self._kname = bus.topic_name(topic)
        self._offset_reset = offset_reset or bus.kafka.auto_offset_reset
        self._buf: dict[Any, deque[tuple[Item, int]]] = {}
        self._order: list[Any] = []
        self._next = 0
        self._buffered = 0
        # id(item) -> (item, partition, offset, the partition's offsets): ack marks the offset finished directly.
        self._unacked: dict[int, tuple[Item, Any, int, PartitionOffsets]] = {}
        self._tracker: OffsetTracker[Any] = OffsetTracker()
        # Revoked partitions' buffered events and offsets, kept until the next assignment says whether they
        # came back to this member (restored) or went to another (dropped).
        self._parked: dict[Any, deque[tuple[Item, int]]] = {}
        self._parked_offsets: dict[Any, PartitionOffsets] = {}
        self._paused = False
        self._closed = False
        self.generation = 0
        self._assigned_evt = asyncio.Event()
        # True between an assignment and the next revoke: this member holds its share of the group's partitions.
        self.joined = False
        # False while the fetch loop is down (it failed and waits to start again): the bus is not ready.
        self.fetching = True
        self.fetch_failures = 0
        self.restored = 0  # partitions given back to this member with their events still in flight
        k = bus.kafka
        self._tiers = RetryTiers(self._kname, k.retry_tier_delays_s) if k.retry_topics else None
        self._taken = self._acked = self._requeued = self._skipped = 0
        self._consumer: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._commits: asyncio.Task[None] | None = None
        self._stop_commits = asyncio.Event()
        self._rebalance_listener: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (
            f"<KafkaSubscription topic={self.topic!r} group={self.group!r} partitions={self._partitions()} "
            f"buffered={self._buffered} unacked={len(self._unacked)} paused={self._paused} joined={self.joined}"
            f"{'' if self.fetching else ' fetching=False'}"
            f"{'' if self._tiers is None else f' retry_waiting={len(self._tiers.delayed)}'}>"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def _start(self) -> None:
        bus, k = self._bus, self._bus.kafka
        self._consumer = AIOKafkaConsumer(
            **bus.client_opts,
            group_id=bus.topic_name(self.group),
            enable_auto_commit=False,
            auto_offset_reset=self._offset_reset,
            session_timeout_ms=k.session_timeout_ms,
            heartbeat_interval_ms=k.heartbeat_interval_ms,
            max_poll_interval_ms=k.max_poll_interval_ms,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            fetch_max_bytes=k.fetch_max_bytes,
            max_partition_fetch_bytes=k.max_partition_fetch_bytes,
        )
        # The agent's retry tiers are read by the same consumer, in the same group (docs/kafka.md, retries).
        topics = [self._kname, *(self._tiers.names if self._tiers is not None else ())]
        self._consumer.subscribe(topics, listener=_Listener(self))
        await bus.connect(self._consumer.start, f"join group {self.group!r}")
        loop = asyncio.get_running_loop()
        self._commits = loop.create_task(self._commit_loop(), name=f"agentflow-kafka-commit-{self.topic}-{self.group}")
        self._tasks = [
            loop.create_task(self._fetch_supervised(), name=f"agentflow-kafka-fetch-{self.topic}-{self.group}"),
            self._commits,
        ]
        if not await self._wait_assigned(join_timeout_s(k)):
            await self.aclose()
            raise BusUnavailableError(
                f"Joining consumer group {self.group!r} on topic {self._kname!r} got no partitions within "
                f"{join_timeout_s(k):g} s (4 x kafka.session_timeout_ms); check that the brokers are reachable and "
                f"the group coordinator is healthy."
            )

    async def _wait_assigned(self, timeout_s: float) -> bool:
        """Wait for the first assignment, saying every ``JOIN_PROGRESS_S`` that it is still coming; False after
        ``timeout_s``. A join waits for every other member of the group to rejoin (a rebalance), seconds each."""
        t0 = time.monotonic()
        while True:
            left = timeout_s - (time.monotonic() - t0)
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(min(JOIN_PROGRESS_S, left)):
                    await self._assigned_evt.wait()
                return True
            except TimeoutError:
                waited = time.monotonic() - t0
                if waited < timeout_s:
                    logger.warning(
                        "Still joining consumer group %r on topic %r after %.0f s (the group is rebalancing; "
                        "giving up after %g s).",
                        self.group,
                        self._kname,
                        waited,
                        timeout_s,
                    )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        # The commit loop is asked to stop, not cancelled: aiokafka shields a commit in flight, so cancelling
        # it would leave the commit running on its own and failing unobserved once the consumer stops.
        self._stop_commits.set()
        for t in self._tasks:
            if t is not self._commits:
                t.cancel()
        # Bounded: aiokafka retries a commit until the coordinator answers, so with the brokers unreachable an
        # unbounded close would hang the worker's shutdown. Past the bound the commit is given up (cancelling our
        # wait; aiokafka's shielded request ends with the consumer), and what it covered is delivered again.
        limit = self._bus.kafka.request_timeout_ms / 1000
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=limit)
            for t in stuck:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._consumer is not None:
            try:
                async with asyncio.timeout(limit):
                    await self._commit()
            except TimeoutError:
                logger.warning(
                    "The last offset commit of group %r on %r did not finish within %g s (request_timeout_ms; are "
                    "the brokers reachable?); events handled since the previous commit will be delivered again.",
                    self.group,
                    self._kname,
                    limit,
                )
            finally:
                # Leaving the group hands our partitions to the others from the last commit: everything
                # taken and not acknowledged is delivered again.
                await _stop_consumer(self._consumer)
        self._buf.clear()
        self._parked.clear()
        self._parked_offsets.clear()
        self._unacked.clear()
        self._buffered = 0
        peers = self._bus.member_left(self)
        if not self._bus.closed:
            # The contract: once aclose returns, the rest of the group (in this process) owns our partitions.
            await self._bus.settle({p: p.generation for p in peers})

    # ---- rebalance -------------------------------------------------------------------------------------

    def set_rebalance_listener(self, listener: Callable[[], None] | None) -> bool:
        self._rebalance_listener = listener
        return True

    def _rebalanced(self) -> None:
        listener = self._rebalance_listener
        if listener is not None:
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener must not break the rebalance
                logger.exception("A rebalance listener of group %r failed", self.group)

    def _assigned(self, parts: set[Any]) -> None:
        for tp in sorted(parts, key=lambda tp: tp.partition):
            self._buf.setdefault(tp, deque())
        self._restore(parts)
        self._order = sorted(self._buf, key=lambda tp: tp.partition)
        self._next = 0
        self.generation += 1
        self.joined = True
        self._assigned_evt.set()
        if self._tiers is not None:
            self._tiers.forget()  # positions restart from the committed offsets; waits are found again
        # A new assignment starts unpaused: pause it again only if there is still no room (a flag left set here
        # would stall these partitions forever).
        if self._paused:
            if self._buffered + len(self._unacked) < self._bus.buffer_size:
                self._paused = False
            else:
                self._set_paused(True)
        self._rebalanced()
        self._wake()

    def _restore(self, parts: set[Any]) -> None:
        """Partitions held before the rebalance: take back those assigned again, with their events in flight,
        finished and buffered, and fetch on from one past the last offset taken — so an event still running is
        not fetched and run a second time. Forget those that went to another member (it fetches them from the
        committed offset; acknowledgements of their events still running here are ignored)."""
        gone: set[Any] = set()
        for tp, po in self._parked_offsets.items():
            if tp not in parts:
                gone.add(tp)
                continue
            self._tracker.adopt(tp, po)
            dq = self._parked.pop(tp, None)
            if dq:
                self._buf[tp] = dq
                self._buffered += len(dq)
            resume_at = po.next_offset()
            if resume_at is not None:
                self._consumer.seek(tp, resume_at)
            self.restored += 1
        self._parked.clear()
        self._parked_offsets.clear()
        if gone:
            for key in [k for k, e in self._unacked.items() if e[1] in gone]:
                del self._unacked[key]

    async def _revoked(self, parts: set[Any]) -> None:
        self.joined = False
        if self._tiers is not None:
            self._tiers.forget(parts)
        # 1. stop handing out events of these partitions; their buffered events wait aside (if the partition
        #    comes back they are handed out then; if it goes to another member, it fetches them again).
        for tp in parts:
            dq = self._buf.pop(tp, None)
            if dq is not None:
                self._buffered -= len(dq)
                self._parked[tp] = dq
        self._order = sorted(self._buf, key=lambda tp: tp.partition)
        self._next = 0
        # 2. let the events in flight finish, within a bound, so their offsets can be committed.
        if not self._closed:
            deadline = time.monotonic() + self._bus.kafka.rebalance_grace_s
            while True:
                left = sum(1 for e in self._unacked.values() if e[1] in parts)
                if not left:
                    break
                if time.monotonic() >= deadline:
                    logger.warning(
                        "Rebalance of group %r: %d event(s) still running after %.1f s (kafka.rebalance_grace_s); "
                        "if their partitions go to another member, it handles them again.",
                        self.group,
                        left,
                        self._bus.kafka.rebalance_grace_s,
                    )
                    break
                await asyncio.sleep(0.005)
        # 3. commit, then put the offsets aside until the new assignment (_restore): acknowledgements of the
        #    events still running go on marking them finished meanwhile.
        await self._commit()
        self._parked_offsets.update(self._tracker.revoke(parts))
        self._rebalanced()
        self._resume_if_room()

    # ---- fetching --------------------------------------------------------------------------------------

    async def _fetch_supervised(self) -> None:
        """The fetch loop, started again whenever it fails.

        Records cannot make it fail (each one that cannot be read becomes a RawEvent for the dead-letter queue),
        so a failure is a bug or a batch the Kafka client itself cannot parse: it is logged with its cause, the
        bus reports not ready (``fetching``), and the loop starts again with back-off, fetching on from what it
        had handed on (:meth:`_rewind`) so nothing is skipped.
        """
        delay = 0.0
        while True:
            started = time.monotonic()
            try:
                if not self.fetching:
                    await self._rewind()
                    self.fetching = True
                    logger.warning("The Kafka fetch loop of group %r on %r is running again.", self.group, self._kname)
                await self._fetch()
            except Exception as exc:  # noqa: BLE001 - logged, and the loop starts again
                self.fetching = False
                self.fetch_failures += 1
                # Back-off doubles while it keeps failing; a loop that had been running fine starts from the bottom.
                fresh = not delay or time.monotonic() - started > _RESTART_MAX_S
                delay = _RESTART_FIRST_S if fresh else min(delay * 2, _RESTART_MAX_S)
                logger.error(
                    "The Kafka fetch loop of group %r on %r failed (%s: %s); it starts again in %.1f s from the "
                    "last offsets it handed on, and the bus reports not ready until then.",
                    self.group,
                    self._kname,
                    type(exc).__name__,
                    exc,
                    delay,
                    exc_info=exc,
                )
                await asyncio.sleep(delay)

    async def _rewind(self) -> None:
        """Before the fetch loop starts again: forget offsets it took and lost when it failed (fetched, neither
        buffered nor handed out), and point each held partition at one past the last offset still accounted for,
        so those records are fetched again and nothing buffered or in flight is fetched twice."""
        consumer = self._consumer
        held: dict[Any, set[int]] = {}
        for _, tp, off, _ in self._unacked.values():
            held.setdefault(tp, set()).add(off)
        for tp, dq in self._buf.items():
            held.setdefault(tp, set()).update(off for _, off in dq)
        self._buffered = sum(map(len, self._buf.values()))
        assigned = consumer.assignment()
        for tp in self._order:
            if tp not in assigned:
                continue
            po = self._tracker.partition(tp)
            po.untake_tail(held.get(tp, set()))
            resume_at = po.next_offset()
            if resume_at is None:  # nothing taken here yet: from the committed offset, as after an assignment
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                elif self._offset_reset == "earliest":
                    await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, resume_at)

    async def _fetch(self) -> None:
        consumer, bus = self._consumer, self._bus
        cap = bus.buffer_size
        group = self.group
        tiers = self._tiers
        hand_on = self._hand_on
        backoff = 0.1
        while True:
            room = cap - self._buffered - len(self._unacked)
            if room <= 0 and not self._paused:
                self._paused = True
                self._set_paused(True)
            poll_ms = 200
            if tiers is not None:
                for tp in tiers.due():
                    if not self._paused and tp in self._buf:
                        consumer.resume(tp)
                poll_ms = tiers.wait_ms(poll_ms)
            try:
                # Polls go on while paused: they keep the membership alive (max_poll_interval_ms) and heartbeats
                # run beside them, so a slow handler never triggers a rebalance loop.
                batches = await consumer.getmany(timeout_ms=poll_ms, max_records=max(room, 1))
                backoff = 0.1
            except RecordTooLargeError as exc:
                self._too_large(exc)
                continue
            except KafkaError as exc:
                logger.warning("Kafka fetch for group %r failed (%s); retrying in %.1f s.", group, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception as exc:  # noqa: BLE001 - the client could not parse what it fetched
                await self._unparsable(exc)
                continue
            if batches:
                hand_on(batches)

    async def _commit_loop(self) -> None:
        interval = self._bus.kafka.commit_interval_ms / 1000
        while True:
            try:
                async with asyncio.timeout(interval):
                    await self._stop_commits.wait()
                return  # aclose makes the last commit itself
            except TimeoutError:
                await self._commit()

    async def _commit(self) -> None:
        pending = self._tracker.pending_commits()
        if not pending or self._consumer is None:
            return
        assigned = self._consumer.assignment()
        pending = {tp: off for tp, off in pending.items() if tp in assigned}
        if not pending:
            return
        try:
            await self._consumer.commit(pending)
        except KafkaError as exc:
            self._tracker.uncommit(pending)
            logger.warning("Commit for group %r failed (%s); it is retried with the next commit.", self.group, exc)

    # ---- the Subscription contract ---------------------------------------------------------------------

    def _partitions(self) -> list[int]:
        return [tp.partition for tp in self._order if tp.topic == self._kname]  # not the retry tiers

    def take_nowait(self, max_n: int) -> list[Item]:
        if not self._buffered or self._closed:
            return []
        order = self._order
        n = len(order)
        start = self._next
        for j in range(n):
            tp = order[(start + j) % n]
            dq = self._buf[tp]
            if not dq:
                continue
            # One partition per call, rotating, so a busy partition cannot starve the others.
            self._next = (start + j + 1) % n
            k = min(len(dq), max_n)
            pop = dq.popleft
            unacked = self._unacked
            po = self._tracker.partition(tp)
            items: list[Item] = []
            add = items.append
            for _ in range(k):
                item, off = pop()
                unacked[id(item)] = (item, tp, off, po)
                add(item)
            self._buffered -= k
            self._taken += k
            return items
        return []

    async def wait(self) -> bool:
        if self._closed:
            return False
        if self._buffered:
            return True
        return await self._sleep()

    def ack(self, item: Item) -> None:
        entry = self._unacked.pop(id(item), None)
        if entry is None:
            return
        entry[3].finished(entry[2])
        self._acked += 1
        if self._paused:
            self._resume_if_room()

    def _resume_if_room(self) -> None:
        if self._paused and self._buffered + len(self._unacked) < self._bus.buffer_size:
            self._paused = False
            self._set_paused(False)

    def _set_paused(self, pause: bool) -> None:
        """Pause or resume this member's partitions (those it still holds: aiokafka refuses others)."""
        consumer = self._consumer
        held = consumer.assignment()
        if pause:
            consumer.pause(*[tp for tp in self._order if tp in held])
        else:
            waiting = self._tiers.delayed if self._tiers is not None else ()
            consumer.resume(*[tp for tp in self._order if tp in held and tp not in waiting])

    async def defer_retry(self, event: Event, attempt: int, exc: BaseException) -> bool:
        """Hand the retry after failed attempt ``attempt`` to the retry tiers (``[kafka] retry_topics``).

        True when it was written to ``<topic>.retry.N`` — the caller then acknowledges the original, so the
        partition's commit moves on. False when retry topics are off or the write failed: retry in-process.
        """
        if self._tiers is None or self._closed:
            return False
        return await self._tiers.send(self._bus, self.topic, self.group, event, attempt, exc)

    def requeue(self, items: Sequence[Item]) -> None:
        back: list[tuple[Item, Any, int, PartitionOffsets]] = []
        for it in items:
            entry = self._unacked.pop(id(it), None)
            if entry is not None:
                back.append(entry)
        # Offsets stay unfinished in the tracker: putting them back ahead of newer records keeps their order.
        for item, tp, off, _ in sorted(back, key=lambda e: e[2], reverse=True):
            dq = self._buf.get(tp)
            if dq is not None:
                dq.appendleft((item, off))
                self._buffered += 1
            elif tp in self._parked:  # revoked, maybe coming back: with the buffered events put aside
                self._parked[tp].appendleft((item, off))
        self._requeued += len(back)
        if back:
            self._wake()

    def statistics(self) -> SubscriptionStatistics:
        return SubscriptionStatistics(
            topic=self.topic,
            group=self.group,
            partitions=tuple(self._partitions()),
            buffered=self._buffered,
            unacked=len(self._unacked),
            taken=self._taken,
            acked=self._acked,
            requeued=self._requeued,
            lag=self._lag(),
        )

    def _lag(self) -> int | None:
        """Records between the position to commit and the end of each partition, as the last fetch saw it."""
        consumer = self._consumer
        if consumer is None:
            return None
        total, known = 0, False
        for tp, dq in list(self._buf.items()):
            try:
                end = consumer.highwater(tp)
            except (AssertionError, KeyError, AttributeError):  # revoked a moment ago
                continue
            if end is None:  # not fetched yet: unknown, not zero
                continue
            pos = self._tracker.position(tp)
            if pos is None:
                pos = dq[0][1] if dq else end
            total += max(0, end - pos)
            known = True
        return total if known else None
