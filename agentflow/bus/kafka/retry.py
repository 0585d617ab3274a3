"""Retry tiers as topics (``[kafka] retry_topics = true``): a failed event waits in ``<topic>.retry.N``, not in a
worker, so a long back-off holds neither a handler slot nor the commit of the partition it came from.

Publishing side (:meth:`RetryTiers.send`, called through ``KafkaSubscription.defer_retry`` by the agent worker
after a failed attempt that may be retried): failed attempt N is written to tier ``min(N, tiers)`` with the
event's ``attempt`` raised to N + 1 and headers naming the error, the attempts so far, the origin topic, the
agent and the not-before time (epoch seconds); then the original is acknowledged. The record carries the
``agentflow-group`` header, so the other agents reading the same topic (and so the same tiers) skip it.

Consuming side: the agent's subscription reads its tiers too (same consumer, same group). A tier record whose
not-before lies ahead is not taken: the subscription seeks the partition back to it and *pauses* that partition
until then (:meth:`RetryTiers.admit` / :meth:`RetryTiers.due`) — the consumer keeps polling, nothing sleeps in a
handler slot, and the tier's commit stays before the waiting record, so a crash loses nothing. Records of one
tier share one delay, so the first record of a partition is always the next one due.

Imports nothing from aiokafka itself: the consumer and records are passed in by the subscription.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ...errors import BusUnavailableError
from ...events import Event

if TYPE_CHECKING:
    from .link import BusLink

__all__ = ["GROUP_HEADER", "NOT_BEFORE_HEADER", "RetryTiers", "tier_names"]

logger = logging.getLogger(__name__)

#: Header naming the only consumer group a record is for (a retry, a dead-letter replay); other groups skip it.
GROUP_HEADER = "agentflow-group"
NOT_BEFORE_HEADER = "agentflow-not-before"
_MAX_ERROR_BYTES = 1000


def tier_names(kafka_topic: str, tiers: int) -> list[str]:
    """The Kafka names of a topic's retry tiers: ``orders.retry.1`` … ``orders.retry.<tiers>``."""
    return [f"{kafka_topic}.retry.{n}" for n in range(1, tiers + 1)]


def _not_before(headers: Sequence[tuple[str, bytes | None]] | None) -> float:
    for name, value in headers or ():
        if name == NOT_BEFORE_HEADER:
            try:
                return float(value or b"")
            except ValueError:
                return 0.0  # a damaged header (no value, not a number) must not park a record forever
    return 0.0


class RetryTiers:
    """The retry tiers of one subscription: where failed events go, and which tier partitions are waiting."""

    def __init__(self, kafka_topic: str, delays_s: Sequence[float], *, clock: Callable[[], float] = time.time) -> None:
        self.delays_s = tuple(delays_s)
        self.names = tier_names(kafka_topic, len(self.delays_s))
        self._name_set = frozenset(self.names)
        self._clock = clock
        #: tier partition → wall-clock time its first record is due; the partition is paused until then.
        self.delayed: dict[Any, float] = {}
        self.sent = 0
        self._encode = msgspec.msgpack.Encoder().encode

    def __repr__(self) -> str:
        return f"<RetryTiers {self.names} delays_s={list(self.delays_s)} waiting={len(self.delayed)} sent={self.sent}>"

    def is_tier(self, kafka_topic: str) -> bool:
        return kafka_topic in self._name_set

    # ---- publishing ------------------------------------------------------------------------------------

    def tier_for(self, attempt: int, exc: BaseException | None) -> tuple[str, float]:
        """Topic and delay after failed attempt ``attempt``; an exception's ``after_s`` can only lengthen it."""
        n = min(max(attempt, 1), len(self.delays_s))
        delay = self.delays_s[n - 1]
        after = getattr(exc, "after_s", None)
        if isinstance(after, int | float) and after > delay:
            delay = float(after)
        return self.names[n - 1], delay

    async def send(self, bus: BusLink, topic: str, group: str, event: Event, attempt: int, exc: BaseException) -> bool:
        """Write the retry of ``event`` to its tier; False (the worker retries in-process) if that fails."""
        name, delay = self.tier_for(attempt, exc)
        try:
            value = bus.codec.encode(msgspec.structs.replace(event, attempt=attempt + 1))
        except Exception:  # noqa: BLE001 - over the size limit, or a payload msgpack cannot encode: retry in-process
            return False
        headers = [
            (GROUP_HEADER, group.encode()),
            (NOT_BEFORE_HEADER, f"{self._clock() + delay:.3f}".encode()),
            ("agentflow-error", f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_BYTES].encode()),
            ("agentflow-attempts", str(attempt).encode()),
            ("agentflow-origin", topic.encode()),
            ("agentflow-agent", group.encode()),
        ]
        try:
            await bus.ensure_topic(name)
            await bus.send_records(name, [(value, event.key.encode() if event.key is not None else None)], headers)
        except BusUnavailableError as err:
            # Not lost: the worker falls back to the in-process retry and the offset stays unfinished.
            logger.warning(
                "Could not write event %s to retry topic %r (%s); retrying it in-process.", event.id, name, err
            )
            return False
        self.sent += 1
        return True

    # ---- consuming -------------------------------------------------------------------------------------

    def admit(self, tp: Any, records: Sequence[Any], consumer: Any, for_me: Callable[[Any], bool]) -> Sequence[Any]:
        """The records of a tier partition that may be handled now. At the first one still waiting, rewind the
        partition to it and pause it until its not-before time; the later ones are fetched again then."""
        now = self._clock()
        for i, rec in enumerate(records):
            if rec.headers and not for_me(rec.headers):
                continue  # another agent's retry: skipped (and finished) by the caller
            due = _not_before(rec.headers)
            if due > now:
                consumer.seek(tp, rec.offset)
                consumer.pause(tp)
                self.delayed[tp] = due
                return records[:i]
        return records

    def due(self) -> list[Any]:
        """Tier partitions whose wait is over (forgotten here: the caller resumes them)."""
        if not self.delayed:
            return []
        now = self._clock()
        ready = [tp for tp, at in self.delayed.items() if at <= now]
        for tp in ready:
            del self.delayed[tp]
        return ready

    def wait_ms(self, cap_ms: int) -> int:
        """How long the next poll may block: until the first waiting partition is due, at most ``cap_ms``."""
        if not self.delayed:
            return cap_ms
        left = min(self.delayed.values()) - self._clock()
        return max(1, min(cap_ms, math.ceil(left * 1000)))

    def forget(self, tps: Any = None) -> None:
        """Drop the waits of these partitions (all when None): after a rebalance their position is re-read
        from the committed offset and the not-before check runs again."""
        if tps is None:
            self.delayed.clear()
            return
        for tp in tps:
            self.delayed.pop(tp, None)
