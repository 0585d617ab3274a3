"""The wire format's own checks: bytes that decode to an event with a negative ``attempt`` or ``depth`` (or an
``attempt`` of 0; attempts count from 1) are not events. They are dead-lettered as ``undecodable``, on the memory
bus and on Kafka, and the events behind them are handled."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from kafka_broker import kafka_settings

from agentflow import Context, Event, EventCodec, EventDecodeError

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

BAD = [{"attempt": -1}, {"attempt": 0}, {"depth": -1}, {"attempt": -(2**63)}, {"depth": -5, "attempt": 3}]


@pytest.mark.parametrize("fields", BAD)
def test_the_codec_refuses_a_negative_attempt_or_depth(fields: dict[str, int]) -> None:
    codec = EventCodec()
    data = {"topic": "t", "id": "x", "payload": 1, **fields}
    for raw, json in ((msgspec.msgpack.encode(data), False), (msgspec.json.encode(data), True)):
        with pytest.raises(
            EventDecodeError, match=r"not a valid event: Expected `int` >= [01] - at `\$\.(attempt|depth)`"
        ):
            codec.decode(raw, json=json)
    assert codec.decode(msgspec.msgpack.encode({"topic": "t", "attempt": 2, "depth": 3})).depth == 3


@pytest.mark.parametrize("backend", ["memory", "kafka"])
async def test_records_with_a_negative_attempt_or_depth_are_dead_lettered_and_the_rest_handled(
    backend: str, make_runner: RunnerFactory, eventually: Eventually, request: pytest.FixtureRequest
) -> None:
    config: dict[str, Any] = {"retry": {"max_attempts": 1}}
    if backend == "kafka":
        broker = request.getfixturevalue("kafka_broker")
        config["bus"] = {"backend": "kafka", "partitions": 1}
        config["kafka"] = kafka_settings(broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}.")
    runner = make_runner(config)
    seen: list[Event] = []

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    async with runner:
        for i, fields in enumerate(BAD):
            data = msgspec.msgpack.encode({"topic": "orders", "id": f"bad-{i}", "payload": i, **fields})
            await runner.bus.publish_raw("orders", data, key="k")
        await runner.bus.publish_raw("orders", msgspec.msgpack.encode({"topic": "orders", "id": "good"}), key="k")
        await eventually(
            lambda: len(seen) == 1 and runner.statistics().dead_lettered == len(BAD), timeout_s=10, what="all of them"
        )
        letters = await runner.dlq.list()
    assert [e.id for e in seen] == ["good"]
    assert len(letters) == len(BAD)
    assert {d.reason for d in letters} == {"undecodable"} and all(d.raw for d in letters)
    assert all(("attempt" in d.error or "depth" in d.error) and d.error_type == "EventDecodeError" for d in letters)
