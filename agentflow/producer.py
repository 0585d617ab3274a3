"""``agentflow.Producer``: emit events (and make requests) from any process, without running agents.

The same ``emit`` / ``emit_many`` / ``request`` shape as the Runner. On Kafka every emit returns once the
brokers confirmed the write (``[kafka] acks``), so an id you got back is an event that will be handled. An
emit the brokers did not confirm within ``[kafka] delivery_timeout_s`` raises
:class:`~agentflow.errors.DeliveryUncertainError` when its events may have been written all the same; it names
them, and :meth:`Producer.resend` emits them again under the same ids. A request carries
``reply_to = [kafka] reply_topic``; the worker that handles it publishes the handler's result there (see
:mod:`agentflow.requests`) and the producer, which reads that topic in a consumer group of its own, hands it
back to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from . import tracing as _tracing
from .bus import Bus, Subscription, create_bus
from .config import Config, load_config
from .errors import ConfigError, DeliveryUncertainError, LifecycleError, RequestTimeoutError
from .events import Event, RawEvent, make_events, new_event_id
from .lifecycle import Lifecycle
from .requests import PendingRequests, reply_outcome

__all__ = ["Producer", "ProducerStatistics"]

logger = logging.getLogger(__name__)


class ProducerStatistics(msgspec.Struct, frozen=True):
    """Live counts of a producer."""

    emitted: int
    requests_pending: int
    replies: int
    requests_timed_out: int


class Producer(Lifecycle):
    """Emits events to the bus of ``config`` (Kafka, normally) from a process that runs no agents::

        async with Producer("kafka.toml") as producer:  # [bus] backend = "kafka"
            await producer.emit("orders", {"id": 7}, key="customer-1")
            answer = await producer.request("greetings", {"name": "Ada"}, timeout_s=10)

    Pass ``bus=`` to share a bus you manage (a producer closes only a bus it created). A config on the memory
    bus without ``bus=`` is refused with a :class:`~agentflow.errors.ConfigError`: that bus lives in one process,
    and a producer's own would be read by nobody.
    """

    def __init__(self, config: Config | str | os.PathLike[str] | None = None, *, bus: Bus | None = None) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        if bus is None and self.config.bus.backend == "memory":
            # A memory bus of its own would be one nothing reads: its emits would vanish, its requests time out.
            raise ConfigError(
                "A Producer sends events to agents in other processes through a broker, but this config has [bus] "
                'backend = "memory", which lives inside one process: nothing would read them. Set [bus] backend = '
                '"kafka" and [kafka] bootstrap_servers, or, in the process that runs the agents, use runner.emit '
                "and runner.request (or pass that runner's bus: Producer(config, bus=runner.bus)).",
                key="bus.backend",
            )
        self._owns_bus = bus is None
        self.bus: Bus = bus or create_bus(self.config)
        rc = self.config.runner
        self._refused: dict[str, int] = {}
        self._pending = PendingRequests(rc.request_timeout_s, rc.max_pending_requests, self._refused, self._expired)
        self._reply_sub: Subscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reply_lock = asyncio.Lock()
        self._emitted = self._replies = self._timed_out = 0

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<Producer {self.state.value} backend={self.bus.backend} emitted={s.emitted} "
            f"requests_pending={s.requests_pending} replies={s.replies}>"
        )

    async def _open(self) -> None:
        if self.config.tracing.enabled:  # emits carry the caller's trace context ([tracing])
            _tracing.configure(self.config.tracing, self)
        await self.bus.start()

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        self._pending.fail_all(lambda: LifecycleError("The Producer closed before the result of this request arrived."))
        if self._reply_sub is not None:
            await self._reply_sub.aclose()
        if self._owns_bus:
            await self.bus.aclose()
        _tracing.release(self)

    def _check_open(self) -> None:
        self._check_running("emit")

    async def emit(
        self, topic: str, payload: Any, *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> str:
        """Emit one event; return its id once the bus has it (on Kafka: confirmed by the brokers)."""
        return (await self.emit_many(topic, [payload], key=key, headers=headers))[0]

    async def emit_many(
        self, topic: str, payloads: Sequence[Any], *, key: str | None = None, headers: dict[str, str] | None = None
    ) -> list[str]:
        """Emit a batch (one bus operation, batched by the Kafka producer); return the ids in order.

        On Kafka, raises :class:`BusUnavailableError` when the brokers did not confirm the batch within
        ``delivery_timeout_s``, and its subclass :class:`DeliveryUncertainError` when some of the events may have
        been written nonetheless (see :meth:`resend`).
        """
        self._check_open()
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        events = make_events(topic, list(payloads), key, headers, None, 0)
        await self.bus.publish(topic, events)
        self._emitted += len(events)
        return [e.id for e in events]

    async def resend(self, error: DeliveryUncertainError) -> list[str]:
        """Emit the events an unconfirmed emit may or may not have written again, under their own ids; return
        the ids.

        Emitting new events instead would give a copy that was written a new id, and no consumer could tell
        the two apart; with the same id, an agent that records the ids it handled (a state write recorded with
        the event id) applies it once. Raises :class:`DeliveryUncertainError` again if this emit is unconfirmed
        too.
        """
        self._check_open()
        events = [e for e in error.events if isinstance(e, Event | RawEvent)]
        if not events:
            return []
        await self.bus.publish(events[0].topic, events)
        self._emitted += len(events)
        return [e.id for e in events if isinstance(e, Event)]

    async def request(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
        result_type: Any = None,
    ) -> Any:
        """Emit an event and return its handler's result (converted to ``result_type`` when given).

        Raises :class:`RequestTimeoutError` after ``timeout_s`` (default ``runner.request_timeout_s``) and
        :class:`DeadLetteredError` when the event was dead-lettered. Workers publish results to the topic the
        request names, so producers and workers need not share ``[kafka] reply_topic``.
        """
        self._check_open()
        await self._ensure_replies()
        pending = self._pending
        if _tracing.TRACER is not None:
            headers = _tracing.inject(headers)
        eid = new_event_id()
        fut = pending.open(asyncio.get_running_loop(), eid, topic, timeout_s)
        try:
            ev = Event(
                topic=topic,
                payload=payload,
                key=key,
                id=eid,
                headers=headers,
                created_at=time.time(),
                correlation_id=eid,
                reply_to=self.config.kafka.reply_topic,
            )
            await self.bus.publish(topic, [ev])
            self._emitted += 1
            reply: Event = await fut
        finally:
            pending.close_request(eid)
        result = reply_outcome(reply)
        if result_type is None:
            return result
        return msgspec.convert(result, result_type, strict=False)

    def _expired(self, eid: str, exc: RequestTimeoutError) -> None:
        self._timed_out += 1

    async def _ensure_replies(self) -> None:
        if self._reader is not None:
            return
        async with self._reply_lock:
            if self._reader is not None:
                return
            topic = self.config.kafka.reply_topic
            # A group of its own, starting at the end: this producer sees every reply from now on and no old ones.
            group = f"agentflow.producer.{new_event_id()}"
            sub: Subscription
            if self.bus.backend == "kafka":
                from .bus.kafka import KafkaBus

                assert isinstance(self.bus, KafkaBus)
                sub = await self.bus.subscribe(topic, group, offset_reset="latest")
            else:
                sub = await self.bus.subscribe(topic, group)
            self._reply_sub = sub
            self._reader = asyncio.get_running_loop().create_task(self._read(sub), name="agentflow-producer-replies")

    async def _read(self, sub: Subscription) -> None:
        while True:
            items = sub.take_nowait(1000)
            if not items:
                if not await sub.wait():
                    return
                continue
            for it in items:
                sub.ack(it)
                if not isinstance(it, Event) or it.correlation_id is None:
                    continue
                if it.correlation_id in self._pending:
                    self._replies += 1
                    self._pending.resolve(it.correlation_id, it)

    def statistics(self) -> ProducerStatistics:
        return ProducerStatistics(
            emitted=self._emitted,
            requests_pending=len(self._pending),
            replies=self._replies,
            requests_timed_out=self._timed_out,
        )
