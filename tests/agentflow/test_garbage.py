"""Bytes from outside (``runner.emit_encoded``): garbage, wrong shapes and oversized data end in the DLQ.

Every item sent is accounted for — handled (when the bytes happen to be a valid event) or dead-lettered — and the
runner keeps answering requests afterwards. One runner serves all examples of a test (the ``garbage`` fixture);
shrinking is off so that a runner broken by one example fails the test at once instead of after every shrink.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agentflow import Context, DeadLetter, Event, EventCodec, Runner, config_from_dict

MAX_EVENT_BYTES = 2048
STEP_TIMEOUT_S = 2.0
EVENT_FIELDS = list(Event.__struct_fields__)

examples = settings(
    max_examples=50,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class Point(msgspec.Struct):
    x: int
    y: int


class Garbage:
    """A running runner with an untyped agent, a typed agent and a ping agent, plus bookkeeping."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.handled: list[Any] = []
        self.letters_seen = 0

    def finished(self) -> int:
        s = self.runner.statistics()
        return s.handled + s.skipped + s.dead_lettered

    async def send(self, topic: str, data: bytes) -> tuple[int, list[DeadLetter]]:
        """Emit ``data`` and wait until it is finished; return (events finished, new dead letters)."""
        before = self.finished()
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await self.runner.emit_encoded(topic, data)
            await self.runner.drain()
            letters = await self.runner.dlq.list()
            assert await self.runner.request("ping", None) == "pong", "the runner must keep serving"
        new = letters[self.letters_seen :]
        self.letters_seen = len(letters)
        return self.finished() - before - 1, new  # the ping counts as one


@pytest.fixture
async def garbage() -> AsyncIterator[Garbage]:
    runner = Runner(
        config_from_dict(
            {
                "runner": {
                    "max_event_bytes": MAX_EVENT_BYTES,
                    "request_timeout_s": STEP_TIMEOUT_S,
                    "shutdown_grace_s": 0.2,
                },
                "retry": {"max_attempts": 1},
            }
        )
    )
    g = Garbage(runner)

    @runner.agent("raw")
    async def untyped(event: Event, ctx: Context) -> None:
        g.handled.append(event.payload)

    @runner.agent("typed", payload=Point)
    async def typed(event: Event, ctx: Context) -> None:
        assert isinstance(event.payload, Point)
        g.handled.append(event.payload)

    @runner.agent("ping")
    async def ping(event: Event, ctx: Context) -> str:
        return "pong"

    async with runner:
        yield g


def check(finished: int, letters: list[DeadLetter], data: bytes, allowed: set[str]) -> None:
    assert finished == 1, "the item must end handled or dead-lettered, exactly once"
    assert len(letters) <= 1
    for letter in letters:
        assert letter.reason in allowed, (letter.reason, letter.error)
        assert letter.error_type in {"EventDecodeError", "EventTooLargeError"}
        if letter.event is None:
            assert letter.raw == data, "an undecodable item keeps the bytes as received"
            assert letter.attempts == 0


@examples
@given(data=st.binary(max_size=512))
async def test_random_bytes_are_dead_lettered_or_handled(garbage: Garbage, data: bytes) -> None:
    finished, letters = await garbage.send("raw", data)
    check(finished, letters, data, {"undecodable"})


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
event_like = st.dictionaries(st.sampled_from(EVENT_FIELDS) | st.text(max_size=8), json_like, max_size=8)
wrong_shapes = event_like | st.lists(json_like, max_size=6) | json_like


@examples
@given(value=wrong_shapes)
async def test_msgpack_of_the_wrong_shape_is_dead_lettered(garbage: Garbage, value: Any) -> None:
    data = msgspec.msgpack.encode(value)
    finished, letters = await garbage.send("typed", data)
    check(finished, letters, data, {"undecodable", "too_large", "wrong_schema"})


@examples
@given(
    topic=st.text(min_size=1, max_size=10),
    key=st.none() | st.text(max_size=10),
    created_at=st.floats(allow_nan=False, allow_infinity=False),
    attempt=st.integers(min_value=-(2**31), max_value=2**31),
    depth=st.integers(min_value=-(2**31), max_value=2**31),
    payload=json_like,
)
async def test_valid_looking_events_with_odd_fields_are_handled_or_dead_lettered(
    garbage: Garbage, topic: str, key: str | None, created_at: float, attempt: int, depth: int, payload: Any
) -> None:
    data = msgspec.msgpack.encode(
        {"topic": topic, "key": key, "created_at": created_at, "attempt": attempt, "depth": depth, "payload": payload}
    )
    handled_before = len(garbage.handled)
    finished, letters = await garbage.send("raw", data)
    invalid = attempt < 1 or depth < 0  # attempts count from 1, depths from 0: anything else is not an event
    check(finished, letters, data, {"too_large", "undecodable"} if invalid else {"too_large"})
    if invalid:
        assert len(letters) == 1
    assert len(garbage.handled) - handled_before == 1 - len(letters)


async def test_an_event_created_in_the_distant_past_does_not_break_the_runner(garbage: Garbage) -> None:
    # Finite, so the codec accepts it; the queue-wait histogram must still cope with a ~3e13 s wait.
    data = msgspec.msgpack.encode({"topic": "raw", "payload": "old", "created_at": -1e300})
    finished, letters = await garbage.send("raw", data)
    assert (finished, letters) == (1, [])
    assert garbage.handled[-1] == "old"


@examples
@given(data=st.binary(min_size=MAX_EVENT_BYTES + 1, max_size=4 * MAX_EVENT_BYTES))
async def test_oversized_bytes_are_dead_lettered_as_too_large(garbage: Garbage, data: bytes) -> None:
    finished, letters = await garbage.send("raw", data)
    check(finished, letters, data, {"too_large"})
    [letter] = letters
    assert letter.reason == "too_large" and str(MAX_EVENT_BYTES) in letter.error


async def test_valid_encoded_events_around_the_size_limit(garbage: Garbage) -> None:
    codec = EventCodec()  # no limit of its own worth hitting: the runner's limit is what is tested
    small = codec.encode(Event(topic="raw", payload="x" * 100, key="k", id="small-1"))
    big = codec.encode(Event(topic="raw", payload="x" * MAX_EVENT_BYTES, key="k", id="big-1"))
    finished, letters = await garbage.send("raw", small)
    assert (finished, letters, garbage.handled[-1]) == (1, [], "x" * 100)
    finished, letters = await garbage.send("raw", big)
    assert finished == 1 and [d.reason for d in letters] == ["too_large"]
    assert letters[0].raw == big and letters[0].event is None


async def test_a_mixed_burst_is_fully_accounted_for(garbage: Garbage) -> None:
    rng = random.Random(99)
    codec = EventCodec()
    runner = garbage.runner
    expected_handled = 0
    sent = 0
    for i in range(300):
        kind = rng.choice(["bytes", "big", "event", "point", "bad-point"])
        if kind == "bytes":
            topic, data = "raw", rng.randbytes(rng.randrange(0, 64))
        elif kind == "big":
            topic, data = "raw", rng.randbytes(MAX_EVENT_BYTES + rng.randrange(1, 500))
        elif kind == "event":
            topic, data = "raw", codec.encode(Event(topic="raw", payload=i, key=f"k{i % 5}", id=f"e{i}"))
            expected_handled += 1
        elif kind == "point":
            topic, data = "typed", codec.encode(Event(topic="typed", payload={"x": i, "y": -i}, id=f"p{i}"))
            expected_handled += 1
        else:
            topic, data = "typed", codec.encode(Event(topic="typed", payload={"x": "nope"}, id=f"b{i}"))
        await runner.emit_encoded(topic, data, key=f"k{i % 7}")
        sent += 1
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await runner.drain()
    s = runner.statistics()
    letters = await runner.dlq.list()
    assert s.handled + s.dead_lettered == sent
    assert s.handled == expected_handled == len(garbage.handled)
    assert len(letters) == s.dead_lettered
    assert {d.reason for d in letters} <= {"undecodable", "too_large", "wrong_schema"}
    assert (s.bus.buffered, s.bus.unacked, s.in_flight) == (0, 0, 0)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        assert await runner.request("ping", None) == "pong"
