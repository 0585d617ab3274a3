"""How a Kafka subscription turns fetched records into items: events, or raw bytes for the dead-letter queue.

The record-reading methods of :class:`~agentflow.bus.kafka.subscription.KafkaSubscription`. No record stops
the fetch path: one that is not an event, is over the size limit, has a damaged ``agentflow-group`` header, or
fails in any other way becomes a :class:`~agentflow.events.RawEvent` the agent dead-letters with the reason; a
record over the fetch size that the brokers cannot return, and records the Kafka client itself cannot parse, are
dead-lettered without their bytes. See docs/kafka.md ("Poison records").
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError, RecordTooLargeError  # type: ignore[import-untyped]

from ...errors import EventDecodeError, EventError, EventTooLargeError
from ...events import RawEvent
from ..base import Item
from .offsets import OffsetTracker, PartitionOffsets
from .retry import GROUP_HEADER, RetryTiers

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .link import BusLink

__all__ = ["RecordReader"]

logger = logging.getLogger("agentflow.bus.kafka")  # one logger name for the whole Kafka bus

# Offsets stepped over looking for the end of an unreadable run of records (one record batch, at most).
_MAX_UNREADABLE = 10_000


def _key(rec: Any) -> str | None:
    key = rec.key
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else None


class RecordReader:
    """The record-reading methods of :class:`~agentflow.bus.kafka.subscription.KafkaSubscription` (a mixin: the
    state below is the subscription's)."""

    topic: str
    group: str
    _kname: str
    _bus: BusLink
    _consumer: Any
    _buf: dict[Any, deque[tuple[Item, int]]]
    _order: list[Any]
    _buffered: int
    _skipped: int
    _unacked: dict[int, tuple[Item, Any, int, PartitionOffsets]]
    _tracker: OffsetTracker[Any]
    _tiers: RetryTiers | None
    _group_bytes: bytes

    # Provided by the subscription (annotations only: a stub here would shadow WakeUps._wake in the MRO).
    _wake: Callable[[], None]
    _rewind: Callable[[], Awaitable[None]]

    def _hand_on(self, batches: Mapping[Any, Sequence[Any]]) -> None:
        """Take fetched records: each becomes an item in its partition's buffer (an event, or raw bytes the agent
        dead-letters), or is skipped as another group's."""
        decode = self._bus.codec.try_decode
        tiers = self._tiers
        route = self._route
        topic = self.topic
        # Every partition's offsets are taken before any record is looked at: if this fails halfway, _rewind
        # finds what was fetched and not handed on, and fetches it again.
        taken = []
        for tp, records in batches.items():
            dq = self._buf.get(tp)
            if dq is None:
                continue  # revoked meanwhile
            if tiers is not None and tiers.is_tier(tp.topic):
                records = tiers.admit(tp, records, self._consumer, self._for_me)
            po = self._tracker.partition(tp)
            po.taken_many([rec.offset for rec in records])
            taken.append((dq, po, records))
        got = 0
        for dq, po, records in taken:
            append = dq.append
            for rec in records:
                value = rec.value or b""
                item: Item
                # Whatever a record holds, it becomes an item: an event, or raw bytes the agent dead-letters.
                try:
                    if rec.headers:
                        verdict = route(rec.headers)
                        if verdict is False:  # another agent's retry or replay
                            po.finished(rec.offset)
                            self._skipped += 1
                            continue
                        if verdict is not True:
                            append((RawEvent(topic, bytes(value), _key(rec), verdict), rec.offset))
                            got += 1
                            continue
                    event = decode(value)
                    # Bytes that are not an event (too large, not one, a bad created_at) go on as they are: the
                    # agent's codec names the reason when it dead-letters them.
                    item = RawEvent(topic, bytes(value), _key(rec)) if event is None else event
                except Exception as exc:  # noqa: BLE001 - anything else about this record: dead-letter it
                    item = self._unreadable(rec, exc)
                append((item, rec.offset))
                got += 1
        if got:
            self._buffered += got
            self._wake()

    async def _unparsable(self, exc: Exception) -> None:
        """The Kafka client raised while parsing fetched records (a header key that is not UTF-8, say). It raises
        again on every fetch, for every partition, and drops the good records it fetched with the bad one: fetch
        those again, find the unreadable records one partition and one record at a time, and hand them on as dead
        letters (without their bytes: the client never returns them), so every partition moves on."""
        logger.warning(
            "The Kafka client could not parse records fetched for group %r on %r (%s: %s); finding them, to "
            "dead-letter them and fetch on past them.",
            self.group,
            self._kname,
            type(exc).__name__,
            exc,
        )
        await self._rewind()
        consumer = self._consumer
        wait_ms = max(4 * self._bus.kafka.fetch_max_wait_ms, 200)
        found = False
        for tp in list(self._order):
            if tp not in consumer.assignment() or tp in consumer.paused():
                continue
            while self._buffered + len(self._unacked) < self._bus.buffer_size:
                try:
                    # One record at a time: the client returns the good records before the bad one, then raises.
                    got = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=1)
                except KafkaError:
                    break
                except Exception as err:  # noqa: BLE001 - the record at the position cannot be parsed
                    await self._skip_unreadable(tp, err, wait_ms)
                    found = True
                    break
                if not got:
                    break
                self._hand_on(got)
        if not found and self._buffered + len(self._unacked) < self._bus.buffer_size:
            raise exc  # no record to blame: a failure of its own, for the supervisor

    async def _skip_unreadable(self, tp: Any, exc: Exception, wait_ms: int) -> None:
        consumer = self._consumer
        first = last = await consumer.position(tp)
        # A fetch from an offset raises at the first record at or after it that cannot be parsed; step on until a
        # fetch does not. The client parses a record batch as a whole, so the records after a bad one in the same
        # batch cannot be read either: they are named in the same dead letter.
        got: dict[Any, list[Any]] = {}
        for _ in range(_MAX_UNREADABLE):
            consumer.seek(tp, last + 1)
            try:
                got = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=1)
                break
            except KafkaError:
                break
            except Exception:  # noqa: BLE001 - still unreadable
                last += 1
        where = f"offset {first}" if last == first else f"offsets {first} to {last}"
        error = EventDecodeError(
            f"The Kafka client could not read the record(s) at {where} of {tp.topic}[{tp.partition}] "
            f"({type(exc).__name__}: {exc}), so they are dead-lettered without their bytes and the partition moves "
            f"on. A producer wrote records Kafka clients cannot parse (a header key that is not UTF-8, say)."
        )
        self._tracker.partition(tp).taken_many([last])
        self._buf[tp].append((RawEvent(self.topic, b"", None, error), last))
        self._buffered += 1
        logger.error("Group %r: %s", self.group, error)
        if got:
            self._hand_on(got)
        self._wake()

    def _route(self, headers: Sequence[tuple[str, bytes | None]]) -> bool | EventError:
        """Whether a record with these headers is for this group: its ``agentflow-group`` header names the only
        group it is for (a retry, a replay). A header that names no group at all (no value, not UTF-8) is an
        error: every agent on the topic dead-letters the record, rather than all of them skipping it."""
        for name, value in headers:
            if name != GROUP_HEADER:
                continue
            if value == self._group_bytes:
                return True
            if value is None:
                return EventDecodeError(
                    f"The record's {GROUP_HEADER} header has no value, so it names no consumer group; the producer "
                    f"must name the agent the record is for, or leave the header out."
                )
            try:
                value.decode()
            except UnicodeDecodeError:
                return EventDecodeError(
                    f"The record's {GROUP_HEADER} header ({bytes(value[:40])!r}) is not UTF-8, so it names no "
                    f"consumer group; the producer must name the agent the record is for, or leave the header out."
                )
            return False
        return True

    def _for_me(self, headers: Sequence[tuple[str, bytes | None]]) -> bool:
        return self._route(headers) is not False  # a damaged header is taken, then dead-lettered

    def _unreadable(self, rec: Any, exc: Exception) -> RawEvent:
        value = rec.value if isinstance(rec.value, bytes) else b""
        error = EventDecodeError(
            f"Reading the record at offset {rec.offset} of {rec.topic}[{rec.partition}] failed ({type(exc).__name__}: "
            f"{exc}); it is dead-lettered and the partition moves on."
        )
        return RawEvent(self.topic, value, _key(rec), error)

    def _too_large(self, exc: RecordTooLargeError) -> None:
        """The brokers could not return a record over ``max_partition_fetch_bytes`` (brokers without KIP-74),
        and the Kafka client skips it: dead-letter it (without its bytes) so the skip is not silent."""
        args = exc.args
        tp: Any = args[1] if len(args) >= 3 else None
        offset = args[2] if len(args) >= 3 else None
        dq = self._buf.get(tp) if tp is not None else None
        if dq is None or not isinstance(offset, int):
            logger.error("Kafka fetch for group %r skipped a record too large to fetch: %s", self.group, exc)
            return
        po = self._tracker.partition(tp)
        resume_at = po.next_offset()
        if resume_at is not None and offset < resume_at:
            return  # taken already
        po.taken_many([offset])
        error = EventTooLargeError(
            f"The record at offset {offset} of {tp.topic}[{tp.partition}] is larger than "
            f"kafka.max_partition_fetch_bytes ({self._bus.kafka.max_partition_fetch_bytes}) and the brokers could "
            f"not return it, so it is dead-lettered without its bytes; raise max_partition_fetch_bytes to fetch "
            f"records this large."
        )
        dq.append((RawEvent(self.topic, b"", None, error), offset))
        self._buffered += 1
        self._wake()
