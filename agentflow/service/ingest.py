"""HTTP ingest: ``POST /v1/events`` on the runner's HTTP server (``[monitoring] ingest_enabled``).

``POST /v1/events`` takes one event or a list, as JSON or msgpack (by ``Content-Type``), each shaped
``{"topic", "payload", "key", "headers"}``, and answers 202 with the new ids. It never waits for room in the
bus: a full buffer answers 429 and a runner that is not running (starting, draining) 503, both with
``Retry-After``. A request is accepted whole or not at all: every event is decoded, checked and encoded before
any is published. On the memory bus a list goes to the bus in one ``publish_nowait`` — which is why a list's
events must share one topic; on a broker-backed bus (Kafka) the 202 waits for the brokers' confirmation, and
an error after a partial write (a 503) may leave some of the list published: retrying is at-least-once.

It needs the bearer token when one is configured (``token_env``; :mod:`agentflow.service.auth`). The
dead-letter routes live in :mod:`agentflow.service.dlq`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from .. import tracing as _tracing
from ..errors import BackpressureError, BusError, DeliveryUncertainError, EventTooLargeError, LifecycleError
from ..events import Event, new_event_id
from .auth import BadRequest, BearerToken, JsonRoutes

if TYPE_CHECKING:
    from ..config import MonitoringConfig
    from ..runner import Runner

__all__ = ["Ingest", "IngestEvent"]

logger = logging.getLogger(__name__)

MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack", "application/vnd.msgpack"})
#: Topic names under this prefix are agentflow's own (the list of removed dead letters, the default reply topic).
RESERVED_PREFIX = "agentflow."
MAX_TOPIC_CHARS = 249
#: How many known topics a 404 names (the answer stays small whatever the number of agents).
KNOWN_TOPICS_LISTED = 20  # Kafka's limit for topic names; the memory bus keeps the same rule
#: How deeply a payload may nest arrays and objects. Decoding and encoding recurse once per level, and a
#: body nested ~1,000 deep (1-2 KB) exhausts Python's recursion limit: bound it well below, explicitly.
MAX_NESTING = 128
# Bytes that may open a container: every other byte is deleted to count them (an upper bound of the depth).
_NOT_JSON_OPENERS = bytes(b for b in range(256) if b not in b"[{")
_NOT_MSGPACK_OPENERS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF))


class IngestEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One event as a client sends it to ``POST /v1/events``."""

    topic: str
    payload: Any = None
    key: str | None = None
    headers: dict[str, str] | None = None


_Body = IngestEvent | list[IngestEvent]


def _deeper_than(value: Any, limit: int) -> bool:
    """True when ``value`` nests lists and dicts more than ``limit`` levels deep (walked without recursion)."""
    stack = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        children = v.values() if type(v) is dict else v if type(v) is list else None
        if children is None:
            continue
        if depth > limit:
            return True
        for c in children:
            if type(c) is dict or type(c) is list:
                push((c, depth + 1))
    return False


class Ingest(JsonRoutes):
    """``POST /v1/events`` of one runner; built by :class:`~agentflow.service.Service`."""

    def __init__(self, runner: Runner, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        super().__init__(config, token, refused)
        self._runner = runner
        self._json = msgspec.json.Decoder(_Body)
        self._msgpack = msgspec.msgpack.Decoder(_Body)
        self.draining = False
        self.accepted = 0
        self._confirming = 0
        self._allowed_topics: frozenset[str] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/events", self.events)

    # ---- helpers -------------------------------------------------------------------------------------

    def _decode(self, request: web.Request, body: bytes) -> list[IngestEvent]:
        ctype = request.content_type
        try:
            if ctype in MSGPACK_TYPES:
                decoded = self._msgpack.decode(body)
            elif ctype == "application/json":
                decoded = self._json.decode(body)
            else:
                raise BadRequest(
                    415, f"Content-Type {ctype!r} is not supported; send application/json or application/msgpack."
                )
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError too
            raise BadRequest(
                400,
                f"The body is not an event or a list of events ({exc}); send "
                '{"topic": ..., "payload": ..., "key": ..., "headers": {...}} or a list of them.',
            ) from None
        except RecursionError:
            raise BadRequest(400, self._too_deep) from None
        items = decoded if isinstance(decoded, list) else [decoded]
        # Cheap first: a body with at most MAX_NESTING container openers cannot nest deeper than that.
        if len(body) > MAX_NESTING:
            openers = len(body.translate(None, _NOT_MSGPACK_OPENERS if ctype in MSGPACK_TYPES else _NOT_JSON_OPENERS))
            if openers > MAX_NESTING and any(_deeper_than(item.payload, MAX_NESTING) for item in items):
                raise BadRequest(400, self._too_deep)
        if not items:
            raise BadRequest(400, "The list of events is empty; send at least one event.")
        most = self._config.max_events_per_request
        if len(items) > most:
            raise BadRequest(
                413,
                f"The request holds {len(items)} events, over the limit of {most}; split it, or raise "
                "monitoring.max_events_per_request.",
            )
        topic = items[0].topic
        for i, item in enumerate(items):
            if not item.topic or len(item.topic) > MAX_TOPIC_CHARS or not item.topic.isprintable():
                raise BadRequest(
                    400,
                    f"Event {i}: topic {item.topic[:60]!r} is not a topic name; use 1 to {MAX_TOPIC_CHARS} "
                    "printable characters.",
                )
            if item.topic != topic:
                raise BadRequest(
                    400,
                    f"Event {i} is for topic {item.topic!r} but event 0 for {topic!r}; a request is accepted "
                    "whole or not at all, so its events must share one topic. Send one request per topic.",
                )
        return items

    _too_deep = (
        f"The payload nests arrays and objects more than {MAX_NESTING} levels deep; flatten it (agentflow "
        "accepts at most that depth)."
    )

    async def _check_topic(self, topic: str) -> None:
        """Refuse a topic that no agent here reads, that does not exist on the bus and that the config does not
        allow: otherwise every name a client makes up would become a topic (Kafka creates them)."""
        cfg = self._config
        if cfg.ingest_any_topic or topic in self._allowed():
            return
        if not self._internal(topic) and await self._runner.bus.topic_exists(topic):
            return
        known = sorted(self._allowed())
        listed = ", ".join(repr(t) for t in known[:KNOWN_TOPICS_LISTED])
        if len(known) > KNOWN_TOPICS_LISTED:
            listed += f" and {len(known) - KNOWN_TOPICS_LISTED} more"
        raise BadRequest(
            404,
            f"Topic {topic!r} is not one this worker ingests: no agent here reads it, "
            + ("it is internal to agentflow" if self._internal(topic) else "it does not exist on the bus")
            + ", and it is not in monitoring.ingest_topics. "
            + (f"The topics agents here read or ingest_topics lists are {listed}. " if known else "")
            + "Check the topic's name, create the topic, list it in monitoring.ingest_topics, or set "
            "monitoring.ingest_any_topic = true.",
        )

    def _allowed(self) -> frozenset[str]:
        allowed = self._allowed_topics
        if allowed is None:  # agents are all registered by the time the first request arrives
            allowed = self._allowed_topics = frozenset(
                [*self._runner.agent_topics.values(), *self._config.ingest_topics]
            )
        return allowed

    def _internal(self, topic: str) -> bool:
        """Dead-letter, retry-tier and reply topics and the ``agentflow.`` names: written by agentflow itself."""
        config = self._runner.config
        base, _, tier = topic.rpartition(".retry.")
        return (
            topic.endswith(config.dlq.topic_suffix)
            or (bool(base) and tier.isdigit())
            or topic == config.kafka.reply_topic
            or topic.startswith(RESERVED_PREFIX)
        )

    # ---- routes --------------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if self.draining:
            return self._error(503, "This worker is shutting down; send the events to another one.", retry=True)
        try:
            items = self._decode(request, await self._body(request))
            await self._check_topic(items[0].topic)
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        runner = self._runner
        topic = items[0].topic
        now = time.time()
        events: list[Event] = []
        traced = _tracing.TRACER is not None
        for i, item in enumerate(items):
            eid = new_event_id()
            ev = Event(
                topic=topic,
                payload=item.payload,
                key=item.key,
                id=eid,
                headers=_tracing.carry(item.headers, request.headers) if traced else item.headers,
                created_at=now,
                correlation_id=eid,
            )
            try:
                runner.codec.encode(ev)  # enforce max_event_bytes before anything is published
            except EventTooLargeError as exc:
                return self._error(413, f"Event {i}: {exc}")
            events.append(ev)
        bus = runner.bus
        try:
            runner._check_accepting()
            if bus.backend == "memory":
                bus.publish_nowait(topic, events)  # all or nothing, and never waits
            else:
                # A broker-backed bus answers 202 only once the brokers confirmed every event, so an accepted
                # event survives this process; the wait is bounded by the bus's delivery timeout, and the
                # events waiting for confirmation by the buffer size.
                room = runner.config.runner.event_buffer_size - self._confirming
                if len(events) > room:
                    raise BackpressureError(
                        f"{self._confirming} ingested event(s) are waiting for the brokers' confirmation, the "
                        f"limit is runner.event_buffer_size={runner.config.runner.event_buffer_size}; retry later."
                    )
                self._confirming += len(events)
                try:
                    await bus.publish(topic, events)
                finally:
                    self._confirming -= len(events)
        except LifecycleError as exc:
            return self._error(503, str(exc), retry=True)
        except BackpressureError as exc:
            return self._error(429, str(exc), retry=True)
        except DeliveryUncertainError as exc:
            # Some events may be written: name them, so a client retrying can tell the broker's copies apart.
            logger.warning("HTTP ingest to topic %r failed: %s", topic, exc)
            body = {"error": str(exc), "uncertain_ids": list(exc.event_ids)}
            return self._reply(503, body, {"Retry-After": str(self._config.retry_after_s)})
        except BusError as exc:
            logger.warning("HTTP ingest to topic %r failed: %s", topic, exc)
            return self._error(503, str(exc), retry=True)
        runner.metrics.emitted(topic, len(events))
        self.accepted += len(events)
        return self._reply(202, {"ids": [e.id for e in events]})
