"""The Kafka bus (``[bus] backend = "kafka"``): the bus contract on Apache Kafka and compatible brokers.

Topics are ``[kafka] topic_prefix`` + the agentflow topic; every agent is its
own consumer group. Each subscription owns one consumer and two tasks:

* the *fetcher* polls (``getmany``) without pause, decodes records into events (anything that is not one stays
  :class:`~agentflow.events.RawEvent` so the agent dead-letters it with the reason) and keeps them in a local
  per-partition buffer. When buffered + unacknowledged reach ``buffer_size`` it *pauses* the partitions but
  keeps polling, so heartbeats and ``max_poll_interval_ms`` are satisfied however long handlers run. It is
  supervised: if it fails, the bus is not ready until it runs again;
* the *committer* commits, every ``commit_interval_ms``, the contiguous prefix of finished offsets per
  partition (:class:`~agentflow.bus.kafka.offsets.OffsetTracker`) — never past an unfinished event.

On revoke the subscription stops handing out events of the revoked partitions, waits up to
``rebalance_grace_s`` for the ones in flight, commits, and puts them aside: partitions assigned to it again
resume with their events still in flight (not fetched twice), the others' unfinished events are redelivered to
the new owner. Dead letters go to ``<topic><dlq suffix>`` with headers naming reason, error, attempts and origin,
never larger than the producer can send. See docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import msgspec

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import (  # type: ignore[import-untyped]
        BrokerResponseError,
        KafkaError,
        UnknownError,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("The Kafka bus needs aiokafka; install it with: pip install 'agentflow-runner[kafka]'") from exc

from ...config import Config, KafkaConfig
from ...errors import BackpressureError, BusUnavailableError, DeliveryUncertainError
from ...events import DEFAULT_MAX_EVENT_BYTES, DeadLetter, Event, EventCodec, RawEvent
from ..base import Bus, BusStatistics, Item
from .client import Connector
from .retry import GROUP_HEADER, tier_names
from .subscription import KafkaSubscription

__all__ = ["KafkaBus"]

logger = logging.getLogger(__name__)

REMOVED_TOPIC = "agentflow.dlq-removed"
_REMOVED_PER_RECORD = 10_000  # ids per record of REMOVED_TOPIC: ~300 KB, well under any broker's message limit
_SCAN_BATCH = 500  # records per poll while reading the .dlq topics back
#: Topics remembered as existing (so a publish does not ask the brokers again), least recently used evicted:
#: topic names come from callers (HTTP ingest, emits), so the list must not grow with them.
MAX_KNOWN_TOPICS = 10_000
#: ``topic_exists`` asks the brokers for their topic list at most this often; a topic created since is found
#: once this has passed.
TOPIC_LIST_INTERVAL_S = 1.0
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_ACKS: dict[str, int | str] = {"all": "all", "1": 1, "0": 0}


def _maybe_applied(exc: BaseException) -> bool:
    """False only when the brokers answered that they refused the write (message too large, not authorised):
    that answer is the same on every attempt, so no earlier attempt can have been written either. Timeouts,
    broken connections and retriable errors that outlived the delivery timeout may follow a write."""
    return not isinstance(exc, BrokerResponseError) or exc.retriable or isinstance(exc, UnknownError)


class KafkaBus(Bus):
    """The bus on Kafka. Build it from the config (``create_bus`` does) or directly::

        bus = KafkaBus(KafkaConfig(bootstrap_servers="broker:9092"), partitions=12)
        async with Runner(config, bus=bus) as runner:
            ...

    ``buffer_size`` bounds each subscription's fetched-and-unfinished events (the pause threshold) and the
    events :meth:`publish_nowait` may have in flight to the brokers.
    """

    backend = "kafka"

    def __init__(
        self,
        kafka: KafkaConfig | None = None,
        *,
        partitions: int = 8,
        buffer_size: int = 10_000,
        dlq_suffix: str = ".dlq",
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        if partitions < 1 or buffer_size < 1:
            raise ValueError("partitions and buffer_size must both be at least 1.")
        self.kafka = kafka or KafkaConfig()
        self.partitions = partitions
        self.buffer_size = buffer_size
        self.dlq_suffix = dlq_suffix
        self.codec = EventCodec(max_event_bytes)
        self._connector = Connector(self.kafka)
        self.client_opts = self._connector.client_opts
        self._producer: Any = None
        self._admin: Any = None
        self._keyless_turn = 0  # keyless writes take the partitions in turn, one partition per write
        self._known: OrderedDict[str, None] = OrderedDict()
        self.max_known_topics = MAX_KNOWN_TOPICS
        self._listed_at = -math.inf
        self._topic_lock = asyncio.Lock()
        self._subs: dict[tuple[str, str], list[KafkaSubscription]] = {}
        self._nowait: set[asyncio.Task[None]] = set()
        self._nowait_events = 0
        self._published = 0
        self._waiting = 0
        self._joining = 0
        self._dead_count = 0
        self._dlq_dec = msgspec.msgpack.Decoder(DeadLetter)

    @classmethod
    def from_config(cls, config: Config) -> KafkaBus:
        return cls(
            config.kafka,
            partitions=config.bus.partitions,
            buffer_size=config.runner.event_buffer_size,
            dlq_suffix=config.dlq.topic_suffix,
            max_event_bytes=config.runner.max_event_bytes,
        )

    def __repr__(self) -> str:
        return (
            f"<KafkaBus {self.kafka.bootstrap_servers} prefix={self.kafka.topic_prefix!r} "
            f"subscriptions={sum(map(len, self._subs.values()))} published={self._published} "
            f"publishing={self._waiting} {self.state.value}>"
        )

    @property
    def ready(self) -> bool:
        """Connected, and every subscription holds its partition assignment (not joining or rebalancing) and is
        fetching (its fetch loop is not down after a failure).

        ``/readyz`` answers 503 while this is False (agentflow/service/app.py)."""
        if not self.running:
            return False
        return not self._joining and all(s.joined and s.fetching for subs in self._subs.values() for s in subs)

    def topic_name(self, topic: str) -> str:
        return self.kafka.topic_prefix + topic

    def dlq_name(self, topic: str) -> str:
        return self.kafka.topic_prefix + topic + self.dlq_suffix

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def connect(
        self, start: Callable[[], Awaitable[None]], what: str, attempt_timeout_s: float | None = None
    ) -> None:
        """Call ``start`` until it connects, backing off, for at most ``connect_timeout_s`` (each attempt at most
        ``attempt_timeout_s`` when given). A TLS failure is reported at once, with its cause."""
        await self._connector.connect(start, what, attempt_timeout_s)

    async def _open(self) -> None:
        k = self.kafka
        self._producer = AIOKafkaProducer(
            **{
                **self.client_opts,
                # aiokafka fails a batch once request_timeout_ms passed since it was made, and does not re-send
                # a request that timed out (the broker may have applied it: a re-send would write it twice). So
                # the producer's requests get all of delivery_timeout_s: an emit fails after
                # delivery_timeout_s, as documented, not after request_timeout_ms while the broker is slow.
                "request_timeout_ms": max(k.request_timeout_ms, math.ceil(k.delivery_timeout_s * 1000)),
            },
            acks=_ACKS[k.acks],
            linger_ms=k.linger_ms,
            max_batch_size=k.max_batch_size,
            max_request_size=self._max_request_size(),
            compression_type=None if k.compression == "none" else k.compression,
            enable_idempotence=k.enable_idempotence,
        )
        self._admin = AIOKafkaAdminClient(**self.client_opts)
        # Its requests may take delivery_timeout_s (above), but connecting is bounded as for the others. A failure
        # closes the bus (_close stops both clients).
        await self.connect(self._producer.start, "connect a producer", k.request_timeout_ms / 1000)
        await self.connect(self._admin.start, "connect an admin client")

    def _max_request_size(self) -> int:
        """The producer's bound on one record (key, value and headers): an event of max_event_bytes fits."""
        return max(self.codec.max_event_bytes + 4096, 1_048_576)

    async def _close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.aclose()
        if self._nowait:
            await asyncio.gather(*self._nowait, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()  # flushes what was accepted
        if self._admin is not None:
            await self._admin.close()

    def _check_open(self) -> None:
        self._check_running("publish or subscribe")

    # ---- topics ----------------------------------------------------------------------------------------

    def _remember(self, name: str) -> None:
        known = self._known
        known[name] = None
        known.move_to_end(name)
        while len(known) > self.max_known_topics:
            known.popitem(last=False)

    def _is_known(self, name: str) -> bool:
        if name in self._known:
            self._known.move_to_end(name)
            return True
        return False

    async def ensure_topic(self, name: str, partitions: int | None = None) -> None:
        """Create the Kafka topic ``name`` (already prefixed) if auto-create is on and it is not known yet."""
        if not self.kafka.auto_create_topics or self._is_known(name):
            return
        async with self._topic_lock:
            if self._is_known(name):
                return
            try:
                resp = await self._admin.create_topics(
                    [NewTopic(name, partitions or self.partitions, self.kafka.replication_factor)]
                )
            except KafkaError as exc:
                raise BusUnavailableError(f"Could not create topic {name!r} ({exc}); create it yourself.") from None
            for err in resp.topic_errors:
                code = err[1]
                if code not in (0, _TOPIC_EXISTS):
                    raise BusUnavailableError(
                        f"Could not create topic {name!r} (Kafka error code {code}: {err[2:]}); create it "
                        f"yourself or set kafka.auto_create_topics = false."
                    )
            self._remember(name)

    async def topic_exists(self, topic: str) -> bool:
        """Whether the brokers have ``topic`` (prefixed here). Their topic list is fetched at most every
        ``TOPIC_LIST_INTERVAL_S``, so a flood of unknown names costs the brokers one request a second."""
        self._check_open()
        name = self.topic_name(topic)
        if self._is_known(name):
            return True
        async with self._topic_lock:
            if self._is_known(name):
                return True
            if time.monotonic() - self._listed_at < TOPIC_LIST_INTERVAL_S:
                return False
            try:
                names = await self._admin.list_topics()
            except KafkaError as exc:
                raise BusUnavailableError(f"Could not list the brokers' topics ({exc}); try again.") from None
            self._listed_at = time.monotonic()
            prefix = self.kafka.topic_prefix
            for n in names:
                if n.startswith(prefix):
                    self._remember(n)
            if name not in names:
                return False
            self._remember(name)  # the listing may hold more topics than are remembered
            return True

    # ---- publishing ------------------------------------------------------------------------------------

    def _encode(self, events: Sequence[Item]) -> list[tuple[bytes, bytes | None]]:
        out = []
        enc = self.codec.encode
        for e in events:
            value = e.data if isinstance(e, RawEvent) else enc(e)
            out.append((value, e.key.encode() if e.key is not None else None))
        return out

    async def send_records(
        self,
        name: str,
        records: list[tuple[bytes, bytes | None]],
        headers: list[tuple[str, bytes]] | None = None,
        items: Sequence[Item] | None = None,
    ) -> None:
        """Write ``records`` to topic ``name`` and wait for the brokers' confirmation, at most
        ``delivery_timeout_s``. ``items`` are the events the records encode, named by the error when some of
        them may have been written without a confirmation."""
        send = self._producer.send
        keyless = self._keyless_partition(name)
        futs: list[asyncio.Future[Any]] = []
        self._waiting += 1
        try:
            async with asyncio.timeout(self.kafka.delivery_timeout_s):
                for value, key in records:
                    part = keyless if key is None else None
                    futs.append(await send(name, value, key=key, partition=part, headers=headers))
                # In order rather than gathered: a batch confirms its records together, so once the first of a
                # batch is awaited the rest are done and cost no callback each.
                for fut in futs:
                    await fut
        except TimeoutError:
            raise self._not_confirmed(name, records, futs, items, None) from None
        except KafkaError as exc:
            raise self._not_confirmed(name, records, futs, items, exc) from None
        finally:
            self._waiting -= 1
        self._published += len(records)

    def _keyless_partition(self, name: str) -> int | None:
        """The partition for this write's keyless records: the topic's partitions with a leader, in turn.

        One partition per write (Kafka's sticky partitioner does the same) makes one batch of a write's keyless
        records instead of one per partition, and spares the client choosing a partition per record; across
        writes they still spread over the partitions. None (the client chooses) while the topic's partitions
        are not known yet.
        """
        cluster = self._producer.client.cluster
        parts = cluster.available_partitions_for_topic(name) or cluster.partitions_for_topic(name)
        if not parts:
            return None
        self._keyless_turn += 1
        return sorted(parts)[self._keyless_turn % len(parts)]  # type: ignore[no-any-return]

    def _not_confirmed(
        self,
        name: str,
        records: list[tuple[bytes, bytes | None]],
        futs: list[asyncio.Future[Any]],
        items: Sequence[Item] | None,
        exc: KafkaError | None,
    ) -> BusUnavailableError:
        """The error for a send that did not finish: which records may have been written, and which not."""
        uncertain: list[int] = []
        written = 0
        for i, fut in enumerate(futs):
            if not fut.done() or fut.cancelled():
                uncertain.append(i)  # still with the producer when the time was up: it may yet be sent
            elif (err := fut.exception()) is None:
                written += 1
            elif _maybe_applied(err):
                uncertain.append(i)
        n = len(records)
        why = (
            f"within {self.kafka.delivery_timeout_s:g} s (kafka.delivery_timeout_s)"
            if exc is None
            else f"({type(exc).__name__}: {exc})"
        )
        if not uncertain:
            if exc is not None and not _maybe_applied(exc):
                return BusUnavailableError(
                    f"The brokers refused {n - written} of {n} event(s) to {name!r} ({type(exc).__name__}: "
                    f"{exc}); those were not written."
                )
            return BusUnavailableError(
                f"Publishing {n} event(s) to {name!r} failed before {n - written} of them reached the brokers "
                f"{why}; those were not written, emit them again."
            )
        chosen = [items[i] for i in uncertain] if items is not None and len(items) == n else []
        ids = tuple(e.id for e in chosen if isinstance(e, Event))
        shown = f" ({', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})" if ids else ""
        return DeliveryUncertainError(
            f"The brokers did not confirm {len(uncertain)} of {n} event(s) to {name!r} {why}; they may or may "
            f"not have been written. The error's event_ids names them{shown}: emit its events again under the "
            "same ids (Producer.resend) so that consumers can drop a copy by id, rather than as new events.",
            event_ids=ids,
            events=tuple(chosen),
        )

    async def publish(
        self, topic: str, events: Sequence[Item], *, group: str | None = None, follow_up: bool = False
    ) -> None:
        self._check_open()
        if not events:
            return
        records = self._encode(events)  # encode all first: one oversized event publishes none of them
        name = self.topic_name(topic)
        await self.ensure_topic(name)
        headers = [(GROUP_HEADER, group.encode())] if group is not None else None
        await self.send_records(name, records, headers, events)

    def offer(self, topic: str, events: Sequence[Item]) -> bool:
        # Emits wait for the brokers' confirmation (publish), so an accepted event is never lost silently.
        return False

    def publish_nowait(self, topic: str, events: Sequence[Item]) -> None:
        self._check_open()
        if not events:
            return
        n = len(events)
        if self._nowait_events + n > self.buffer_size:
            raise BackpressureError(
                f"{self._nowait_events} event(s) are already on their way to the brokers, the limit is "
                f"{self.buffer_size}: no room for {n} more on {topic!r}; await runner.emit(...) to wait instead."
            )
        records = self._encode(events)
        self._nowait_events += n
        task = asyncio.get_running_loop().create_task(self._send_nowait(topic, records, events))
        self._nowait.add(task)
        task.add_done_callback(self._nowait.discard)

    async def _send_nowait(self, topic: str, records: list[tuple[bytes, bytes | None]], events: Sequence[Item]) -> None:
        try:
            name = self.topic_name(topic)
            await self.ensure_topic(name)
            await self.send_records(name, records, None, events)
        except Exception as exc:  # noqa: BLE001 - there is no caller left to raise to
            logger.error("%d event(s) emitted without waiting to %r failed: %s", len(records), topic, exc)
        finally:
            self._nowait_events -= len(records)

    async def publish_raw(self, topic: str, data: bytes, key: str | None = None) -> None:
        await self.publish(topic, [RawEvent(topic, bytes(data), key)])

    # ---- subscribing -----------------------------------------------------------------------------------

    async def subscribe(self, topic: str, group: str, *, offset_reset: str | None = None) -> KafkaSubscription:
        """Join ``group`` on ``topic``; returns once this member has its partitions and the other members of the
        group in this process have rebalanced (bounded by the session timeout)."""
        self._check_open()
        self._joining += 1  # not ready from now until this member has its partitions
        try:
            return await self._subscribe(topic, group, offset_reset)
        finally:
            self._joining -= 1

    async def _subscribe(self, topic: str, group: str, offset_reset: str | None) -> KafkaSubscription:
        await self.ensure_topic(self.topic_name(topic))
        if self.kafka.retry_topics:
            for name in tier_names(self.topic_name(topic), len(self.kafka.retry_tier_delays_s)):
                await self.ensure_topic(name)
        peers = self._subs.setdefault((topic, group), [])
        before = {p: p.generation for p in peers}
        sub = KafkaSubscription(self, topic, group, offset_reset=offset_reset)
        peers.append(sub)
        try:
            await sub._start()
        except BaseException:
            # A join that failed or was cancelled leaves no consumer behind in the group (aclose is a no-op on a
            # subscription that already closed itself).
            await asyncio.shield(sub.aclose())
            raise
        await self.settle(before)
        return sub

    async def settle(self, before: dict[KafkaSubscription, int]) -> None:
        """Wait (bounded) until each of these members has been through a new rebalance."""
        deadline = time.monotonic() + 2 * self.kafka.session_timeout_ms / 1000
        while time.monotonic() < deadline:
            if all(p.closed or p.generation > g for p, g in before.items()):
                return
            await asyncio.sleep(0.01)

    def member_left(self, sub: KafkaSubscription) -> list[KafkaSubscription]:
        peers = self._subs.get((sub.topic, sub.group), [])
        if sub in peers:
            peers.remove(sub)
        if not peers:
            self._subs.pop((sub.topic, sub.group), None)
        return list(peers)

    def subscriber_count(self, topic: str) -> int | None:
        # Groups in other processes are invisible here: None (unknowable) rather than a misleading 0.
        n = len({g for t, g in self._subs if t == topic})
        return n or None

    # ---- dead letters ----------------------------------------------------------------------------------

    async def dead_letter(self, letter: DeadLetter) -> None:
        self._check_open()
        name = self.dlq_name(letter.topic)
        await self.ensure_topic(name)
        headers = [
            ("agentflow-reason", letter.reason.encode()),
            ("agentflow-error", f"{letter.error_type}: {letter.error}"[:1000].encode()),
            ("agentflow-attempts", str(letter.attempts).encode()),
            ("agentflow-origin", letter.topic.encode()),
            ("agentflow-agent", (letter.agent or "").encode()),
        ]
        key = letter.event.key.encode() if letter.event is not None and letter.event.key is not None else None
        if key is not None and len(key) > 1024:
            key = None  # keying by a huge key buys nothing in a dead-letter topic, and it would take the room
        # Whatever it carries, a dead letter fits the producer's request size (the letter is cut down to fit),
        # so a failed write is an outage, never the letter itself.
        room = self._max_request_size() - 512 - len(key or b"") - sum(len(k) + len(v) + 16 for k, v in headers)
        await self.send_records(name, [(self.codec.encode_dead_letter(letter, room), key)], headers)
        self._dead_count += 1

    async def _scan(self, names: list[str]) -> AsyncGenerator[list[bytes], None]:
        """The record values of these topics, one fetched batch at a time, from the beginning to the end.

        Holds at most one fetch's worth of records (aiokafka's fetch limits) whatever the topics' size. Fails
        with :class:`BusUnavailableError` when no record arrives for ``delivery_timeout_s`` before the end.
        """
        if not names:
            return
        consumer = AIOKafkaConsumer(**self.client_opts, enable_auto_commit=False, fetch_max_wait_ms=10)
        try:
            await self.connect(consumer.start, "read the dead-letter topics")
            tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
            if not tps:
                await consumer.topics()  # refresh metadata once for topics this client has not seen yet
                tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
            if not tps:
                return
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            timeout = self.kafka.delivery_timeout_s
            progress = time.monotonic()
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=50, max_records=_SCAN_BATCH)
                if batches:
                    progress = time.monotonic()
                    for records in batches.values():
                        yield [r.value for r in records if r.value is not None]
                    continue
                # The end is an empty poll *and* every partition at its end offset: some brokers (Tansu) report
                # an end offset that lags a batch just written.
                if all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    return
                if time.monotonic() - progress > timeout:
                    raise BusUnavailableError(
                        f"Reading {', '.join(names)} made no progress for {timeout:g} s "
                        f"(kafka.delivery_timeout_s) before reaching the end; check that the brokers are up."
                    )
        finally:
            await consumer.stop()

    def _dlq_topics(self, existing: set[str], topic: str | None) -> list[str]:
        if topic is not None:
            name = self.dlq_name(topic)
            return [name] if name in existing else []
        prefix, suffix = self.kafka.topic_prefix, self.dlq_suffix
        return sorted(n for n in existing if n.startswith(prefix) and n.endswith(suffix))

    async def _removed_ids(self, existing: set[str]) -> set[str]:
        """Every id ever written to the removal topic: about 100 bytes each, for as long as its retention."""
        name = self.topic_name(REMOVED_TOPIC)
        if name not in existing:
            return set()
        decode = msgspec.msgpack.Decoder(list[str]).decode
        removed: set[str] = set()
        async with contextlib.aclosing(self._scan([name])) as scan:
            async for values in scan:
                for value in values:
                    try:
                        removed.update(decode(value))
                    except msgspec.DecodeError:
                        logger.warning("Skipped a record of %r that is not a list of dead-letter ids.", name)
        return removed

    async def iter_dead_letters(self, *, topic: str | None = None) -> AsyncGenerator[DeadLetter, None]:
        """Dead letters read back from the ``.dlq`` topics, minus removed ones, as stored (topic by topic,
        partition by partition): one pass from the beginning to the current end per call. Memory: the removed
        ids, plus one fetch of records at a time."""
        self._check_open()
        existing = set(await self._admin.list_topics())
        names = self._dlq_topics(existing, topic)
        removed = await self._removed_ids(existing)
        decode = self._dlq_dec.decode
        count = 0
        async with contextlib.aclosing(self._scan(names)) as scan:
            async for values in scan:
                for value in values:
                    try:
                        d = decode(value)
                    except msgspec.DecodeError:
                        logger.warning("Skipped a record of a dead-letter topic that is not a dead letter.")
                        continue
                    if d.id not in removed:
                        count += 1
                        yield d
        if topic is None:
            self._dead_count = count

    async def remove_dead_letters(self, ids: Sequence[str]) -> int:
        """Kafka cannot delete single records: removal appends the ids (of dead letters, each unique) to
        ``agentflow.dlq-removed``, which :meth:`iter_dead_letters` subtracts. Reads the ``.dlq`` topics once to
        count only ids that are present."""
        self._check_open()
        wanted = set(ids)
        if not wanted:
            return 0
        gone = sorted({d.id async for d in self.iter_dead_letters() if d.id in wanted})
        if gone:
            name = self.topic_name(REMOVED_TOPIC)
            await self.ensure_topic(name, 1)
            step = _REMOVED_PER_RECORD
            records: list[tuple[bytes, bytes | None]] = [
                (msgspec.msgpack.encode(gone[i : i + step]), None) for i in range(0, len(gone), step)
            ]
            await self.send_records(name, records)
            self._dead_count -= len(gone)
        return len(gone)

    def statistics(self) -> BusStatistics:
        subs = tuple(s.statistics() for group in self._subs.values() for s in group)
        return BusStatistics(
            backend=self.backend,
            published=self._published,
            unrouted=0,
            buffered=sum(s.buffered for s in subs),
            unacked=sum(s.unacked for s in subs),
            dead_letters=self._dead_count,
            dead_letters_evicted=0,
            publishers_waiting=self._waiting,
            subscriptions=subs,
        )
