"""Events: the unit that travels on the bus, and the one codec that turns them into bytes.

An :class:`Event` is a frozen msgspec Struct. In-process (memory bus) events travel as objects and are never
encoded; wherever they cross a byte boundary (Kafka, HTTP ingest, ``runner.emit_encoded``) the shared
:class:`EventCodec` encodes and decodes them with encoders built once, and enforces the size limit.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final

import msgspec

from .errors import EventDecodeError, EventError, EventTooLargeError

__all__ = [
    "DEAD_LETTER_ERROR_BYTES",
    "DEAD_LETTER_RAW_BYTES",
    "DEFAULT_MAX_EVENT_BYTES",
    "DeadLetter",
    "Event",
    "EventCodec",
    "RawEvent",
    "new_event_id",
]

DEFAULT_MAX_EVENT_BYTES: Final = 1024 * 1024
#: Bytes of a record that is not an event kept in its dead letter (``DeadLetter.raw``); the rest is cut off.
DEAD_LETTER_RAW_BYTES: Final = 64 * 1024
#: Bytes (UTF-8) of an error message kept in a dead letter (``DeadLetter.error``).
DEAD_LETTER_ERROR_BYTES: Final = 4096

# Ids are a random per-process prefix plus a counter: unique across processes for practical purposes and
# about ten times cheaper than uuid4 on the emit hot path.
_ID_PREFIX: Final = os.urandom(6).hex() + "-"
_id_counter: Iterator[int] = itertools.count(1)


def new_event_id() -> str:
    """Return a new event id: a random per-process prefix, a dash and a counter (``9f3c2a1b4d5e-42``)."""
    return _ID_PREFIX + str(next(_id_counter))


def new_dead_letter_id() -> str:
    """Return a new dead-letter id: ``dl-`` and 24 random hex digits (``dl-5e0c…``).

    Never equal to an event id (those are hex digits, a dash and decimal digits). Drawn from the OS's randomness
    rather than the event-id counter: dead-lettering is rare, and a replayed event that fails again must get an
    id no earlier dead letter had, whichever process writes it.
    """
    return "dl-" + os.urandom(12).hex()


_SUFFIXES: Final = tuple(map(str, range(1024)))


def _new_ids(n: int) -> list[str]:
    """Ids for a batch: one counter value for the whole batch and an index (``9f3c2a1b4d5e-43.7``).

    Unique because a single id never has a dot; ~25 ns per event against ~105 ns for a counter value each
    (``str(int)`` is most of an id's cost).
    """
    ids: list[str] = []
    while n > 0:
        k = min(n, len(_SUFFIXES))
        base = _ID_PREFIX + str(next(_id_counter)) + "."
        ids += map(base.__add__, _SUFFIXES[:k])
        n -= k
    return ids


# Checked by msgspec whenever bytes are decoded into an Event (Kafka records, HTTP ingest, raw emits), at no cost
# to events built in Python: a record with attempt 0 or a negative depth is undecodable and dead-lettered.
Attempt = Annotated[int, msgspec.Meta(ge=1)]
Depth = Annotated[int, msgspec.Meta(ge=0)]


class Event(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, kw_only=True):
    """One event on the bus.

    ``payload`` is anything msgspec can encode: a dict, a list, a string, or a user's own Struct (an agent
    may declare the Struct type it expects, and payloads are converted to it). ``key`` decides the
    partition and so the order: events with the same key are handled one at a time, in emit order.
    ``correlation_id`` and ``depth`` follow a workflow through the follow-up events its agents emit.

    Events are created by ``runner.emit``; build one yourself only for tests::

        Event(topic="orders", payload={"id": 7}, key="customer-1")
    """

    topic: str
    payload: Any = None
    key: str | None = None
    id: str = ""
    headers: dict[str, str] | None = None
    created_at: float = 0.0
    attempt: Attempt = 1
    correlation_id: str | None = None
    depth: Depth = 0
    reply_to: str | None = None


def make_events(
    topic: str,
    payloads: list[Any],
    key: str | None,
    headers: Mapping[str, str] | None,
    correlation_id: str | None,
    depth: int,
    parent_id: str | None = None,
    start: int = 0,
) -> list[Event]:
    """Build one event per payload with one shared timestamp (the batch's emit time).

    Events emitted outside a handler get fresh ids. Follow-ups of an event (``parent_id``) get ids derived from
    it and from their position among the parent's emits, counted from ``start``: ``<parent id>/<position>``. A
    redelivered or retried parent that emits the same follow-ups in the same order so emits the same ids, and
    the next agent can recognise them (``once=True`` state writes, docs/state.md).
    """
    now = time.time()
    hdrs = dict(headers) if headers else None
    n = len(payloads)
    if parent_id:
        base = parent_id + "/"
        end = start + n
        ids = list(map(base.__add__, _SUFFIXES[start:end] if end <= len(_SUFFIXES) else map(str, range(start, end))))
    else:
        ids = _new_ids(n)
    if correlation_id is None:  # each event starts its own workflow
        return [
            Event(topic=topic, payload=p, key=key, id=i, headers=hdrs, created_at=now, correlation_id=i, depth=depth)
            for p, i in zip(payloads, ids, strict=True)
        ]
    return [
        Event(
            topic=topic,
            payload=p,
            key=key,
            id=i,
            headers=hdrs,
            created_at=now,
            correlation_id=correlation_id,
            depth=depth,
        )
        for p, i in zip(payloads, ids, strict=True)
    ]


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An event that could not be handled, with the reason.

    ``reason`` is one of a small fixed set (``exhausted``, ``rejected``, ``undecodable``, ``too_large``,
    ``wrong_schema``, ``depth_exceeded``, ``timeout``); ``error_type`` and ``error`` carry the last exception.
    ``event`` is the original event when it could be decoded, else ``raw`` holds the bytes as received.

    ``id`` names this dead letter, not the event: every dead letter gets its own (a new one by default), so an
    event that fails again after a replay is a new entry, listed like any other. ``event_id`` is the event's id
    (filled in from ``event`` when not given; None for bytes that never decoded). Replay and removal go by
    ``id``.

    Dead letters are bounded (:func:`bounded_dead_letter`): ``raw`` keeps at most ``DEAD_LETTER_RAW_BYTES`` and
    ``error`` at most ``DEAD_LETTER_ERROR_BYTES``, each cut off with a marker naming the full size and its
    SHA-256. ``raw_size`` and ``raw_sha256`` describe the bytes as received when ``raw`` was cut off.
    """

    id: str = msgspec.field(default_factory=new_dead_letter_id)
    topic: str
    agent: str | None
    reason: str
    error_type: str
    error: str
    attempts: int
    failed_at: float
    event: Event | None = None
    raw: bytes | None = None
    event_id: str | None = None
    raw_size: int | None = None
    raw_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.event_id is None and self.event is not None:
            # Also for dead letters decoded from the .dlq topics that were written without the field.
            msgspec.structs.force_setattr(self, "event_id", self.event.id)


def _cut_marker(size: int, digest: str) -> str:
    return f" [agentflow: cut off; {size} bytes in all, sha256 {digest}]"


def _bounded_raw(raw: bytes, keep: int) -> tuple[bytes, int, str] | None:
    """``raw`` cut to ``keep`` bytes with a marker, its size and hash; None when it fits."""
    if len(raw) <= keep:
        return None
    digest = hashlib.sha256(raw).hexdigest()
    marker = _cut_marker(len(raw), digest).encode()
    return raw[: max(keep - len(marker), 0)] + marker, len(raw), digest


def _bounded_error(error: str, keep: int) -> str:
    try:
        data = error.encode()
    except UnicodeEncodeError:  # lone surrogates: msgpack could not encode the letter
        data = error.encode("utf-8", "replace")
        error = data.decode()
    if len(data) <= keep:
        return error
    marker = _cut_marker(len(data), hashlib.sha256(data).hexdigest())
    head = data[: max(keep - len(marker.encode()), 0)].decode("utf-8", "ignore")  # never half a character
    return head + marker


def bounded_dead_letter(
    letter: DeadLetter, *, raw_bytes: int = DEAD_LETTER_RAW_BYTES, error_bytes: int = DEAD_LETTER_ERROR_BYTES
) -> DeadLetter:
    """``letter`` with ``raw`` and ``error`` cut to their bounds (the same letter when both fit).

    The bounds keep a poison record from making its own dead letter unsendable (a dead letter must fit the
    producer's request size) and keep the memory bus's dead-letter list small.
    """
    cut = _bounded_raw(letter.raw, raw_bytes) if letter.raw is not None else None
    error = _bounded_error(letter.error, error_bytes)
    if cut is None and error is letter.error:
        return letter
    if cut is None:
        return msgspec.structs.replace(letter, error=error)
    raw, size, digest = cut
    return msgspec.structs.replace(letter, error=error, raw=raw, raw_size=size, raw_sha256=digest)


class RawEvent(msgspec.Struct, frozen=True, gc=False):
    """Bytes published as received (``publish_raw``); the consumer decodes them or dead-letters them.

    ``error`` is set by a bus that could not read the record it came from (a damaged header, a record over the
    fetch size): the consumer dead-letters it with that error instead of decoding ``data``.
    """

    topic: str
    data: bytes
    key: str | None = None
    error: EventError | None = None


class EventCodec:
    """Encodes and decodes events (msgpack by default, JSON for HTTP), enforcing ``max_event_bytes``.

    Built once per runner or bus; the underlying msgspec encoders and decoders are reused for every event.
    """

    __slots__ = ("_dec", "_enc", "_json_dec", "_json_enc", "max_event_bytes")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(Event)
        self._json_enc = msgspec.json.Encoder()
        self._json_dec = msgspec.json.Decoder(Event)

    def encode(self, event: Event) -> bytes:
        data = self._enc.encode(event)
        if len(data) > self.max_event_bytes:
            raise EventTooLargeError(
                f"Event {event.id or '(no id)'} on topic {event.topic!r} encodes to {len(data)} bytes, over "
                f"the limit of {self.max_event_bytes}; send a reference (a URL or id) instead of the data, "
                f"or raise runner.max_event_bytes."
            )
        return data

    def decode(self, data: bytes | bytearray | memoryview, *, json: bool = False) -> Event:
        if len(data) > self.max_event_bytes:
            raise EventTooLargeError(
                f"Received {len(data)} bytes, over the event size limit of {self.max_event_bytes}; the "
                f"producer must send smaller events or runner.max_event_bytes must be raised."
            )
        try:
            event = self._json_dec.decode(data) if json else self._dec.decode(data)
        except msgspec.DecodeError as exc:
            raise EventDecodeError(f"Received bytes that are not a valid event: {exc}.") from None
        except RecursionError:
            raise EventDecodeError(
                "Received an event nested too deeply to decode (Python's recursion limit); the producer must "
                "send flatter payloads."
            ) from None
        if not math.isfinite(event.created_at):
            raise EventDecodeError("Received an event whose created_at is not a finite number.")
        return event

    def try_decode(self, data: bytes | bytearray | memoryview) -> Event | None:
        """The event in ``data``, or None where :meth:`decode` would raise (the same checks, without building the
        reason: a consumer hands the bytes on, and whoever dead-letters them asks :meth:`decode` why)."""
        try:
            return self.decode(data)
        except EventError:
            return None

    def encode_dead_letter(self, letter: DeadLetter, max_bytes: int | None = None) -> bytes:
        """Encode a dead letter, never over ``max_bytes`` (default ``max_event_bytes``).

        A letter that does not fit keeps its event as ``raw`` instead, cut off like any raw payload
        (:func:`bounded_dead_letter`), and an event that cannot be encoded at all (a payload nested too deeply)
        is left out with a note in ``error``: a dead letter can always be written, so a poison event never
        blocks its partition.
        """
        limit = self.max_event_bytes if max_bytes is None else max_bytes
        enc = self._enc.encode
        letter = bounded_dead_letter(letter)
        try:
            data = enc(letter)
        except Exception as exc:  # noqa: BLE001 - RecursionError, or a payload type msgpack cannot encode
            note = f" [agentflow: the event could not be encoded ({type(exc).__name__}: {exc}); it is left out]"
            letter = bounded_dead_letter(msgspec.structs.replace(letter, event=None, error=letter.error + note))
            data = enc(letter)
        if len(data) <= limit:
            return data
        if letter.event is not None:
            letter = msgspec.structs.replace(letter, event=None, raw=enc(letter.event))
        keep = max(min(DEAD_LETTER_RAW_BYTES, limit // 2), 256)
        data = enc(bounded_dead_letter(letter, raw_bytes=keep, error_bytes=min(DEAD_LETTER_ERROR_BYTES, keep)))
        if len(data) > limit:
            raise EventTooLargeError(
                f"Dead letter {letter.id} encodes to {len(data)} bytes even cut off, over the limit of {limit} "
                f"bytes; raise runner.max_event_bytes."
            )
        return data


def convert_payload(payload: Any, payload_type: Any) -> Any:
    """Convert a payload to an agent's declared type, raising EventDecodeError with msgspec's reason."""
    if type(payload) is payload_type:
        return payload
    try:
        return msgspec.convert(payload, payload_type, strict=False)
    except msgspec.ValidationError as exc:
        name = getattr(payload_type, "__name__", repr(payload_type))
        raise EventDecodeError(f"Payload does not match {name}: {exc}.") from None
    except RecursionError:
        name = getattr(payload_type, "__name__", repr(payload_type))
        raise EventDecodeError(f"Payload is nested too deeply to convert to {name}.") from None
