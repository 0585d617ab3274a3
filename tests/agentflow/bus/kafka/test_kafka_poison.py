"""Poison records on the real broker: nothing a producer writes can stop a worker's fetch path.

Records are written with aiokafka's own producer (so any bytes, headers and compression a foreign producer could
send), interleaved with good events on the same partition, and read by a Runner on the Kafka bus: every good
event behind a bad record is handled, every bad record is dead-lettered with its reason, and the offsets move on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import RecordTooLargeError
from aiokafka.record.util import calc_crc32c
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka_broker import TansuBroker, kafka_settings

from agentflow import Context, DeadLetter, Event, EventCodec, KafkaConfig, Runner, config_from_dict
from agentflow.bus.kafka import KafkaBus, KafkaSubscription, offsets
from agentflow.events import DEAD_LETTER_RAW_BYTES

TIMEOUT_S = 20.0
GROUP_HEADER = "agentflow-group"


class RecordingBus(KafkaBus):
    """The Kafka bus, remembering each dead letter once the brokers confirmed it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.letters: list[DeadLetter] = []

    async def dead_letter(self, letter: DeadLetter) -> None:
        await super().dead_letter(letter)
        self.letters.append(letter)


class Worker:
    """A running Runner on the Kafka bus with agent ``work`` on ``jobs``, and producers to write records."""

    def __init__(
        self, runner: Runner, bus: RecordingBus, producer: AIOKafkaProducer, gzip: AIOKafkaProducer, kname: str
    ) -> None:
        self.runner = runner
        self.bus = bus
        self.producer = producer
        self.gzip = gzip
        self.kname = kname
        self.handled: list[Event] = []

    def __repr__(self) -> str:  # hypothesis prints the fixture: not the events (some are nested thousands deep)
        return f"<Worker {self.kname} handled={len(self.handled)} dead_letters={len(self.bus.letters)}>"

    @property
    def sub(self) -> KafkaSubscription:
        [sub] = [s for subs in self.bus._subs.values() for s in subs]
        return sub

    async def send(
        self,
        value: bytes | None,
        *,
        partition: int = 0,
        headers: list[tuple[str, bytes | None]] | None = None,
        gzip: bool = False,
        key: bytes | None = None,
    ) -> int:
        """Write one record as a foreign producer would; return its offset."""
        producer = self.gzip if gzip else self.producer
        meta = await (await producer.send(self.kname, value, key=key, partition=partition, headers=headers))
        return int(meta.offset)

    async def send_event(self, payload: Any, *, partition: int = 0) -> str:
        eid = uuid.uuid4().hex
        await self.send(good(eid, payload), partition=partition)
        return eid

    async def handled_all(self, ids: set[str]) -> None:
        await until(lambda: ids <= {e.id for e in self.handled}, f"{len(ids)} good events handled")

    async def lettered(self, n: int) -> list[DeadLetter]:
        await until(lambda: len(self.bus.letters) >= n, f"{n} dead letters")
        return self.bus.letters[:n]

    async def committed_past(self, tp: TopicPartition, offset: int) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while (await self.sub._consumer.committed(tp) or 0) <= offset:
            assert time.monotonic() < deadline, f"offset {offset} of {tp} was not committed"
            await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {TIMEOUT_S} s waiting for {what}"
        await asyncio.sleep(0.01)


_codec = EventCodec(max_event_bytes=64 * 1024 * 1024)  # encodes anything a foreign producer might send


def good(eid: str, payload: Any) -> bytes:
    return _codec.encode(
        Event(
            topic="jobs",
            payload=payload,
            key=None,
            id=eid,
            headers=None,
            created_at=time.time(),
            attempt=1,
            correlation_id=eid,
        )
    )


#: Deeper than any recursion limit: hypothesis raises Python's by a few thousand while a test runs, and a payload
#: within the limit is a valid event.
DEEP = 20_000


def nested(depth: int) -> bytes:
    """A msgpack event whose payload is a list nested ``depth`` deep (one byte per level)."""
    enc = msgspec.msgpack.encode
    return (
        b"\x83"
        + enc("topic")
        + enc("jobs")
        + enc("id")
        + enc(f"deep-{depth}")
        + enc("payload")
        + (b"\x91" * depth + b"\xc0")
    )


async def start_worker(broker: TansuBroker, **runner: Any) -> AsyncIterator[Worker]:
    prefix = f"poison{uuid.uuid4().hex[:8]}."
    settings_ = kafka_settings(broker.bootstrap, prefix=prefix)
    config = config_from_dict(
        {
            "bus": {"backend": "kafka", "partitions": 2},
            "kafka": settings_,
            "retry": {"max_attempts": 1},
            "runner": runner,
        }
    )
    bus = RecordingBus(
        msgspec.convert(settings_, KafkaConfig), partitions=2, max_event_bytes=config.runner.max_event_bytes
    )
    app = Runner(config, bus=bus)
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, enable_idempotence=False, max_request_size=8 * 1024 * 1024
    )
    gzip = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        enable_idempotence=False,
        max_request_size=8 * 1024 * 1024,
        compression_type="gzip",
    )
    w = Worker(app, bus, producer, gzip, prefix + "jobs")

    @app.agent("jobs", name="work")
    async def work(event: Event, ctx: Context) -> None:
        w.handled.append(event)

    await producer.start()
    await gzip.start()
    try:
        async with app:
            yield w
            assert app.state.value == "running", "the runner must still be running"
    finally:
        await producer.stop()
        await gzip.stop()
        await bus.aclose()


@pytest.fixture
async def worker(kafka_broker: TansuBroker) -> AsyncIterator[Worker]:
    async for w in start_worker(kafka_broker):
        yield w


async def test_deep_nesting_and_damaged_group_headers_are_dead_lettered_and_the_worker_goes_on(
    worker: Worker,
) -> None:
    w = worker
    ids = [await w.send_event("before")]
    await w.send(nested(DEEP))
    ids.append(await w.send_event("after deep nesting"))
    await w.send(good("null-group", "x"), headers=[(GROUP_HEADER, None)])
    ids.append(await w.send_event("after a null group header"))
    await w.send(good("latin1-group", "x"), headers=[(GROUP_HEADER, "wörk".encode("latin-1"))])
    ids.append(await w.send_event("after a non-UTF-8 group header"))
    await w.handled_all(set(ids))
    assert sorted(e.id for e in w.handled) == sorted(ids)  # none of the bad ones, none twice
    letters = await w.lettered(3)
    assert {d.reason for d in letters} == {"undecodable"}
    deep, null, latin1 = (next(d for d in letters if text in d.error) for text in ("deep", "no value", "not UTF-8"))
    assert "nested too deeply" in deep.error and deep.raw == nested(DEEP)
    # A damaged group header names no agent: dead-lettered (with the record as received), not skipped by all.
    assert "has no value" in null.error and _codec.decode(null.raw or b"").id == "null-group"
    assert "is not UTF-8" in latin1.error and _codec.decode(latin1.raw or b"").id == "latin1-group"
    assert w.bus.ready


async def test_a_compressed_record_over_every_limit_is_dead_lettered_bounded_and_committed(worker: Worker) -> None:
    w = worker
    big = good("big", "x" * (1536 * 1024))  # 1.5 MiB: over max_event_bytes and the producer's max_request_size
    before = await w.send_event("before")
    offset = await w.send(big, gzip=True)  # a few KB on the wire: no broker limit stops it
    after = [await w.send_event(f"after {i}") for i in range(3)]
    await w.handled_all({before, *after})
    [letter] = await w.lettered(1)
    assert letter.reason == "too_large" and letter.event is None
    assert letter.raw is not None and len(letter.raw) <= DEAD_LETTER_RAW_BYTES
    assert letter.raw_size == len(big) and letter.raw_sha256 == hashlib.sha256(big).hexdigest()
    assert b"cut off" in letter.raw and big.startswith(letter.raw[:1000])
    # Written to the dead-letter topic for real, and the record's offset committed past it.
    stored = [d for d in await w.bus.dead_letters(topic="jobs") if d.reason == "too_large"]
    assert [(d.raw_size, d.raw_sha256) for d in stored] == [(letter.raw_size, letter.raw_sha256)]
    await w.committed_past(TopicPartition(w.kname, 0), offset)
    assert w.sub.fetch_failures == 0


async def test_the_fetch_loop_restarts_after_a_failure_and_loses_nothing(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = worker
    # A failure of the fetch loop's own bookkeeping (records fetched, offsets not taken yet), once: the loop must
    # report not ready, say why, and start again from what it had handed on, losing and repeating nothing.
    real = offsets.PartitionOffsets.taken_many
    calls = 0

    def fail_once(self: offsets.PartitionOffsets, offs: list[int]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("injected failure in the fetch loop")
        real(self, offs)

    monkeypatch.setattr(offsets.PartitionOffsets, "taken_many", fail_once)
    monkeypatch.setattr("agentflow.bus.kafka.subscription._RESTART_FIRST_S", 1.0)
    seen_not_ready = False
    ids: list[str] = []
    with caplog.at_level(logging.WARNING, logger="agentflow.bus.kafka"):
        for batch in range(6):
            ids += [await w.send_event(f"{batch}-{i}", partition=i % 2) for i in range(20)]
            for _ in range(20):
                seen_not_ready = seen_not_ready or not w.bus.ready
                await asyncio.sleep(0.01)
        async with asyncio.timeout(TIMEOUT_S):
            while not set(ids) <= {e.id for e in w.handled}:
                seen_not_ready = seen_not_ready or not w.bus.ready
                await asyncio.sleep(0.01)
    assert calls > 3 and w.sub.fetch_failures == 1
    assert seen_not_ready, "readiness must be false while the fetch loop is down"
    assert w.bus.ready
    assert sorted(e.id for e in w.handled) == sorted(ids), "lost or duplicated events"
    text = caplog.text
    assert "fetch loop" in text and "RuntimeError: injected failure in the fetch loop" in text
    assert "running again" in text


async def test_a_record_the_brokers_cannot_return_is_dead_lettered_not_skipped_silently(worker: Worker) -> None:
    w = worker
    first = [await w.send_event(i) for i in range(2)]
    await w.handled_all(set(first))
    tp = TopicPartition(w.kname, 0)
    consumer = w.sub._consumer
    consumer.pause(tp)  # the record at offset 2 is written, and never fetched
    await asyncio.sleep(0.1)
    skipped = await w.send(good("skipped", "never fetched"))
    # What aiokafka does when a broker without KIP-74 cannot return the record at offset 2: it raises this error
    # from getmany and moves its position past the record (here the seek). The subscription turns it into a
    # dead letter instead of letting it vanish.
    consumer.seek(tp, 3)
    w.sub._too_large(
        RecordTooLargeError(
            "There are some messages at [Partition=Offset]: %s=%s whose size is larger than the fetch size %s"
            " and hence cannot be ever returned.",
            tp,
            2,
            1048576,
        )
    )
    consumer.resume(tp)
    after = await w.send_event("after")
    assert skipped == 2
    await w.handled_all({after})
    [letter] = await w.lettered(1)
    assert letter.reason == "too_large" and "offset 2" in letter.error and "max_partition_fetch_bytes" in letter.error
    await w.committed_past(tp, 3)
    assert "skipped" not in {e.id for e in w.handled}


async def forge_unparsable(producer: AIOKafkaProducer, topic: str, values: list[bytes], bad: int) -> None:
    """Write ``values`` as one record batch in which record ``bad`` has a header key that is not UTF-8.

    aiokafka's producer only writes str header keys, so the batch is built as usual and the key's bytes replaced
    (and the batch CRC recomputed): what a producer in another language can write, and the broker accepts.
    """
    batch = producer.create_batch()
    for i, value in enumerate(values):
        batch.append(key=None, value=value, timestamp=None, headers=[("\u00ff\u00ff" if i == bad else "ok", b"x")])
    buf = bytearray(batch._build())
    at = buf.find("\u00ff\u00ff".encode())
    buf[at : at + 4] = b"\xff\xfe\xff\xfe"
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))  # the v2 batch CRC covers attributes onwards
    batch._buffer = buf
    await (await producer.send_batch(batch, topic, partition=0))


async def test_records_the_kafka_client_cannot_parse_are_dead_lettered_and_the_partitions_move_on(
    worker: Worker,
) -> None:
    w = worker
    # Good events on the other partition too: the client fails the whole fetch, not just the bad partition's.
    ids = [await w.send_event(f"before {p}", partition=p) for p in (0, 1)]
    batch_ids = [uuid.uuid4().hex for _ in range(4)]
    # Records 0 and 1 of the batch read fine; 2 has the bad header key; the client parses a batch as a whole,
    # so 3 (after the bad one, same batch) cannot be read either.
    await forge_unparsable(w.producer, w.kname, [good(i, "in the batch") for i in batch_ids], bad=2)
    ids += [await w.send_event(f"after {p}", partition=p) for p in (0, 1)]
    await w.handled_all({*ids, *batch_ids[:2]})
    [letter] = await w.lettered(1)
    assert letter.reason == "undecodable" and letter.raw == b""
    assert "could not read the record(s) at offsets 3 to 4" in letter.error and "UnicodeDecodeError" in letter.error
    assert not {e.id for e in w.handled} & set(batch_ids[2:])
    assert w.sub.fetch_failures == 0 and w.bus.ready
    await w.committed_past(TopicPartition(w.kname, 0), 5)


# ---- generated poison ------------------------------------------------------------------------------------------

MAX_EVENT_BYTES = 64 * 1024


class Poison:
    """A bad record: its value, headers, compression, and the dead-letter reason it must get."""

    def __init__(
        self,
        kind: str,
        id: str,
        value: bytes | None,
        headers: list[tuple[str, bytes | None]],
        gzip: bool,
        reason: str,
    ) -> None:
        self.kind = kind
        self.id = id  # the event id inside, when the value holds one
        self.value = value
        self.headers = headers
        self.gzip = gzip
        self.reason = reason

    def __repr__(self) -> str:  # not the value: it may be hundreds of KB
        size = None if self.value is None else len(self.value)
        return f"<Poison {self.kind} {size} bytes headers={self.headers} gzip={self.gzip} → {self.reason}>"


def _not_utf8() -> st.SearchStrategy[bytes]:
    def invalid(b: bytes) -> bool:
        try:
            b.decode()
        except UnicodeDecodeError:
            return True
        return False

    return st.binary(min_size=1, max_size=12).filter(invalid)


extra_headers = st.lists(
    st.tuples(st.sampled_from(["trace", "x-id", "agentflow-error"]), st.binary(max_size=8)), max_size=2
)


@st.composite
def poison(draw: st.DrawFn) -> Poison:
    kind = draw(st.sampled_from(["bytes", "deep", "null-group", "bad-group", "oversized", "tombstone", "nan"]))
    gzip = draw(st.booleans())
    headers = draw(extra_headers)
    nonce = uuid.uuid4().hex
    reason = "undecodable"
    value: bytes | None
    if kind == "bytes":
        value = b"\xc1" + draw(st.binary(max_size=300)) + nonce.encode()  # 0xc1 is never valid msgpack
    elif kind == "deep":
        value = nested(draw(st.integers(min_value=DEEP, max_value=3 * DEEP)))
    elif kind == "null-group":
        value, headers = good(nonce, "x"), [*headers, (GROUP_HEADER, None)]
    elif kind == "bad-group":
        value, headers = good(nonce, "x"), [(GROUP_HEADER, draw(_not_utf8())), *headers]
    elif kind == "oversized":
        value, reason = good(nonce, "y" * draw(st.integers(MAX_EVENT_BYTES, 8 * MAX_EVENT_BYTES))), "too_large"
    elif kind == "tombstone":
        value = None
    else:
        value = _codec.encode(Event(topic="jobs", payload="x", id=nonce, created_at=float("nan")))
    return Poison(kind, nonce, value, headers, gzip, reason)


@pytest.fixture
async def shared_worker(kafka_broker: TansuBroker) -> AsyncIterator[Worker]:
    async for w in start_worker(kafka_broker, max_event_bytes=MAX_EVENT_BYTES):
        yield w


def _digest(letter: DeadLetter) -> str:
    return letter.raw_sha256 or hashlib.sha256(letter.raw or b"").hexdigest()


@settings(
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: a stuck worker fails at once
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(bad=st.lists(poison(), min_size=1, max_size=4), partition=st.integers(0, 1))
async def test_generated_poison_never_stops_the_worker(
    shared_worker: Worker, bad: list[Poison], partition: int
) -> None:
    w = shared_worker
    seen = len(w.bus.letters)
    ids = [await w.send_event("first", partition=partition)]
    for p in bad:
        # A tombstone (no value) needs a key: Kafka's rule, not ours.
        await w.send(p.value, partition=partition, headers=p.headers, gzip=p.gzip, key=p.id.encode())
        ids.append(await w.send_event(f"after {p.kind}", partition=partition))
    await w.handled_all(set(ids))  # every good event behind the poison
    letters = (await w.lettered(seen + len(bad)))[seen:]
    assert sorted((d.reason, _digest(d)) for d in letters) == sorted(
        (p.reason, hashlib.sha256(p.value or b"").hexdigest()) for p in bad
    )
    for d in letters:
        assert d.error.endswith((".", "]")) and len(d.error) > 20, d.error  # a sentence, not a bare type name
        assert d.raw is not None and len(d.raw) <= DEAD_LETTER_RAW_BYTES
    assert not {e.id for e in w.handled} & {p.id for p in bad}
    assert w.sub.fetch_failures == 0 and w.bus.ready
