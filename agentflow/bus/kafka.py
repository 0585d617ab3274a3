"""The Kafka bus (``[bus] backend = "kafka"``): the bus contract on Apache Kafka and compatible brokers.

With :mod:`agentflow.bus._kafka_consumer` (the subscription) and :mod:`agentflow.bus._kafka_records` (reading
records, poison ones included), split out for size, the only modules that import aiokafka; retry tiers live in
:mod:`agentflow.bus._kafka_retry`. Topics are ``[kafka] topic_prefix`` + the agentflow topic; every agent is its
own consumer group. Each subscription owns one consumer and two tasks:

* the *fetcher* polls (``getmany``) without pause, decodes records into events (anything that is not one stays
  :class:`~agentflow.events.RawEvent` so the agent dead-letters it with the reason) and keeps them in a local
  per-partition buffer. When buffered + unacknowledged reach ``buffer_size`` it *pauses* the partitions but
  keeps polling, so heartbeats and ``max_poll_interval_ms`` are satisfied however long handlers run. It is
  supervised: if it fails, the bus is not ready until it runs again;
* the *committer* commits, every ``commit_interval_ms``, the contiguous prefix of finished offsets per
  partition (:class:`~agentflow.bus.offsets.OffsetTracker`) — never past an unfinished event.

On revoke the subscription stops handing out events of the revoked partitions, waits up to
``rebalance_grace_s`` for the ones in flight, commits, and puts them aside: partitions assigned to it again
resume with their events still in flight (not fetched twice), the others' unfinished events are redelivered to
the new owner. Dead letters go to ``<topic><dlq suffix>`` with headers naming reason, error, attempts and origin,
never larger than the producer can send. See docs/kafka.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaConnectionError, KafkaError  # type: ignore[import-untyped]
    from aiokafka.helpers import create_ssl_context  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise ImportError("The Kafka bus needs aiokafka; install it with: pip install 'agentflow[kafka]'") from exc

from ..config import Config, KafkaConfig
from ..errors import BackpressureError, BusUnavailableError, ConfigError, LifecycleError
from ..events import DEFAULT_MAX_EVENT_BYTES, DeadLetter, EventCodec, RawEvent
from ._kafka_consumer import KafkaSubscription
from ._kafka_retry import GROUP_HEADER, tier_names
from .base import Bus, BusStatistics, Item

__all__ = ["KafkaBus", "KafkaSubscription", "client_options"]

logger = logging.getLogger(__name__)

REMOVED_TOPIC = "agentflow.dlq-removed"
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_ACKS: dict[str, int | str] = {"all": "all", "1": 1, "0": 0}


def client_options(k: KafkaConfig) -> dict[str, Any]:
    """Connection and security options shared by producer, consumers and admin client."""
    opts: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "request_timeout_ms": k.request_timeout_ms,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(
            cafile=k.ssl_cafile or None, certfile=k.ssl_certfile or None, keyfile=k.ssl_keyfile or None
        )
    if k.security_protocol.startswith("SASL"):
        password = os.environ.get(k.sasl_password_env) if k.sasl_password_env else None
        if not k.sasl_username or password is None:
            raise ConfigError(
                f"kafka.security_protocol is {k.security_protocol!r}: set kafka.sasl_username and name the "
                f"environment variable holding the password in kafka.sasl_password_env "
                f"({k.sasl_password_env or 'unset'}{' is not set' if k.sasl_password_env else ''}).",
                key="kafka.sasl_password_env",
            )
        opts.update(sasl_mechanism=k.sasl_mechanism, sasl_plain_username=k.sasl_username, sasl_plain_password=password)
    return opts


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
        self._client_opts = client_options(self.kafka)
        self._producer: Any = None
        self._admin: Any = None
        self._known: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._subs: dict[tuple[str, str], list[KafkaSubscription]] = {}
        self._nowait: set[asyncio.Task[None]] = set()
        self._nowait_events = 0
        self._published = 0
        self._waiting = 0
        self._joining = 0
        self._dead_count = 0
        self._dlq_dec = msgspec.msgpack.Decoder(DeadLetter)
        self._started = False
        self._closed = False

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
            f"publishing={self._waiting} {'closed' if self._closed else 'open' if self._started else 'new'}>"
        )

    @property
    def ready(self) -> bool:
        """Connected, and every subscription holds its partition assignment (not joining or rebalancing) and is
        fetching (its fetch loop is not down after a failure).

        ``/readyz`` answers 503 while this is False (agentflow/service.py)."""
        if not self._started or self._closed:
            return False
        return not self._joining and all(s.joined and s.fetching for subs in self._subs.values() for s in subs)

    def topic_name(self, topic: str) -> str:
        return self.kafka.topic_prefix + topic

    def dlq_name(self, topic: str) -> str:
        return self.kafka.topic_prefix + topic + self.dlq_suffix

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def _retry_connect(self, start: Any, what: str) -> None:
        """Call ``start`` until it connects, backing off, for at most ``connect_timeout_s``."""
        deadline = time.monotonic() + self.kafka.connect_timeout_s
        backoff = 0.1
        while True:
            try:
                await start()
                return
            except KafkaError as exc:
                if not (exc.retriable or isinstance(exc, KafkaConnectionError)):
                    hint = (
                        " If the brokers lack the idempotent producer (some Kafka-compatible brokers do), set "
                        "kafka.enable_idempotence = false."
                        if self.kafka.enable_idempotence
                        else ""
                    )
                    raise BusUnavailableError(
                        f"Could not {what} at {self.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}.{hint}"
                    ) from None
                if time.monotonic() + backoff > deadline:
                    raise BusUnavailableError(
                        f"Could not {what} at {self.kafka.bootstrap_servers} within "
                        f"{self.kafka.connect_timeout_s:g} s ({type(exc).__name__}: {exc}); check "
                        f"kafka.bootstrap_servers and that the brokers are up."
                    ) from None
                logger.warning("Kafka: could not %s (%s); retrying in %.1f s.", what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def start(self) -> None:
        if self._closed:
            raise LifecycleError("Cannot restart a KafkaBus once it has been closed; create a new one.")
        if self._started:
            return
        k = self.kafka
        self._producer = AIOKafkaProducer(
            **self._client_opts,
            acks=_ACKS[k.acks],
            linger_ms=k.linger_ms,
            max_batch_size=k.max_batch_size,
            max_request_size=self._max_request_size(),
            compression_type=None if k.compression == "none" else k.compression,
            enable_idempotence=k.enable_idempotence,
        )
        self._admin = AIOKafkaAdminClient(**self._client_opts)
        try:
            await self._retry_connect(self._producer.start, "connect a producer")
            await self._retry_connect(self._admin.start, "connect an admin client")
        except BaseException:
            await self._producer.stop()
            await self._admin.close()
            raise
        self._started = True

    def _max_request_size(self) -> int:
        """The producer's bound on one record (key, value and headers): an event of max_event_bytes fits."""
        return max(self.codec.max_event_bytes + 4096, 1_048_576)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
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
        if self._closed:
            raise LifecycleError("Cannot publish on a KafkaBus once it has been closed.")
        if not self._started:
            raise LifecycleError("Start the KafkaBus (await bus.start()) before publishing or subscribing.")

    # ---- topics ----------------------------------------------------------------------------------------

    async def ensure_topic(self, name: str, partitions: int | None = None) -> None:
        """Create the Kafka topic ``name`` (already prefixed) if auto-create is on and it is not known yet."""
        if name in self._known or not self.kafka.auto_create_topics:
            return
        async with self._topic_lock:
            if name in self._known:
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
            self._known.add(name)

    # ---- publishing ------------------------------------------------------------------------------------

    def _encode(self, events: Sequence[Item]) -> list[tuple[bytes, bytes | None]]:
        out = []
        enc = self.codec.encode
        for e in events:
            value = e.data if isinstance(e, RawEvent) else enc(e)
            out.append((value, e.key.encode() if e.key is not None else None))
        return out

    async def _send(
        self, name: str, records: list[tuple[bytes, bytes | None]], headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        send = self._producer.send
        timeout = self.kafka.delivery_timeout_s
        self._waiting += 1
        try:
            async with asyncio.timeout(timeout):
                futs = [await send(name, value, key=key, headers=headers) for value, key in records]
                await asyncio.gather(*futs)
        except TimeoutError:
            raise BusUnavailableError(
                f"The brokers did not confirm {len(records)} event(s) to {name!r} within {timeout:g} s "
                f"(kafka.delivery_timeout_s); they may or may not have been written — emit again (at-least-once)."
            ) from None
        except KafkaError as exc:
            raise BusUnavailableError(
                f"Publishing {len(records)} event(s) to {name!r} failed: {type(exc).__name__}: {exc}."
            ) from None
        finally:
            self._waiting -= 1
        self._published += len(records)

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
        await self._send(name, records, headers)

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
        task = asyncio.get_running_loop().create_task(self._send_nowait(topic, records))
        self._nowait.add(task)
        task.add_done_callback(self._nowait.discard)

    async def _send_nowait(self, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
        try:
            name = self.topic_name(topic)
            await self.ensure_topic(name)
            await self._send(name, records)
        except Exception as exc:  # noqa: BLE001 - there is no caller left to raise to
            logger.error("Dropped %d event(s) emitted without waiting to %r: %s", len(records), topic, exc)
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
            if sub in peers:
                peers.remove(sub)
            raise
        await self._settle(before)
        return sub

    async def _settle(self, before: dict[KafkaSubscription, int]) -> None:
        """Wait (bounded) until each of these members has been through a new rebalance."""
        deadline = time.monotonic() + 2 * self.kafka.session_timeout_ms / 1000
        while time.monotonic() < deadline:
            if all(p._closed or p.generation > g for p, g in before.items()):
                return
            await asyncio.sleep(0.01)

    def _left(self, sub: KafkaSubscription) -> list[KafkaSubscription]:
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
        await self._send(name, [(self.codec.encode_dead_letter(letter, room), key)], headers)
        self._dead_count += 1

    async def _read_all(self, names: list[str]) -> list[bytes]:
        """Every record value of these topics, from the beginning to the current end."""
        consumer = AIOKafkaConsumer(**self._client_opts, enable_auto_commit=False, fetch_max_wait_ms=10)
        await self._retry_connect(consumer.start, "read the dead-letter topics")
        try:
            tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ()) if n]
            if not tps:
                await consumer.topics()  # refresh metadata once for topics this client has not seen yet
                tps = [TopicPartition(n, p) for n in names for p in sorted(consumer.partitions_for_topic(n) or ())]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[bytes] = []
            # Read until every partition is at its end offset *and* a poll comes back empty: some brokers (Tansu)
            # report an end offset that lags a batch just written.
            async with asyncio.timeout(self.kafka.delivery_timeout_s):
                while True:
                    batches = await consumer.getmany(*tps, timeout_ms=50)
                    for records in batches.values():
                        out.extend(r.value for r in records if r.value is not None)
                    if not batches and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                        break
            return out
        finally:
            await consumer.stop()

    async def _dlq_topics(self, topic: str | None) -> list[str]:
        if topic is not None:
            return [self.dlq_name(topic)]
        prefix, suffix = self.kafka.topic_prefix, self.dlq_suffix
        return [n for n in await self._admin.list_topics() if n.startswith(prefix) and n.endswith(suffix)]

    async def _removed_ids(self) -> set[str]:
        name = self.topic_name(REMOVED_TOPIC)
        if name not in await self._admin.list_topics():
            return set()
        dec = msgspec.msgpack.Decoder(list[str])
        return {i for value in await self._read_all([name]) for i in dec.decode(value)}

    async def dead_letters(self, *, topic: str | None = None, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters read back from the ``.dlq`` topics (minus removed ones), oldest first."""
        self._check_open()
        existing = set(await self._admin.list_topics())
        names = [n for n in await self._dlq_topics(topic) if n in existing]
        removed = await self._removed_ids()
        letters = []
        for value in await self._read_all(names):
            try:
                d = self._dlq_dec.decode(value)
            except msgspec.DecodeError:
                logger.warning("Skipped a record of a dead-letter topic that is not a dead letter.")
                continue
            if d.id not in removed:
                letters.append(d)
        letters.sort(key=lambda d: d.failed_at)
        if topic is None:
            self._dead_count = len(letters)
        return letters if limit is None else letters[:limit]

    async def remove_dead_letters(self, ids: Sequence[str]) -> int:
        """Kafka cannot delete single records: removal appends the ids to ``agentflow.dlq-removed``, which
        :meth:`dead_letters` subtracts."""
        self._check_open()
        present = {d.id for d in await self.dead_letters()}
        gone = sorted(present & set(ids))
        if gone:
            name = self.topic_name(REMOVED_TOPIC)
            await self.ensure_topic(name, 1)
            await self._send(name, [(msgspec.msgpack.encode(gone), None)])
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
