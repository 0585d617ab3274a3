"""``agentflow.Producer`` round trips: a producer and a runner that share nothing but the Kafka broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from kafka_broker import TansuBroker, kafka_settings

from agentflow import (
    Config,
    ConfigError,
    DeadLetteredError,
    Event,
    LifecycleError,
    MemoryBus,
    Producer,
    Reject,
    RequestTimeoutError,
    Runner,
    config_from_dict,
)

TIMEOUT_S = 10.0


class Greeting(msgspec.Struct):
    name: str
    times: int = 1


class Answer(msgspec.Struct):
    text: str


@pytest.fixture
def kafka_config(kafka_broker: TansuBroker) -> Config:
    return config_from_dict(
        {
            "bus": {"backend": "kafka", "partitions": 2},
            "kafka": kafka_settings(kafka_broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}."),
        }
    )


@pytest.fixture
async def worker(kafka_config: Config) -> AsyncIterator[tuple[Runner, list[Any]]]:
    runner = Runner(kafka_config)
    seen: list[Any] = []

    @runner.agent("greet", payload=Greeting)
    async def greet(event: Event, ctx: Any) -> dict[str, str]:
        seen.append((event.key, event.payload.name))
        if event.payload.name == "nobody":
            raise Reject("no such person")
        return {"text": " ".join([f"hello {event.payload.name}"] * event.payload.times)}

    @runner.agent("sink")
    async def sink(event: Event, ctx: Any) -> None:
        seen.append(event.payload)

    async with runner:
        yield runner, seen


async def test_emit_and_emit_many_reach_the_worker(
    kafka_config: Config, worker: tuple[Runner, list[Any]], eventually: Any
) -> None:
    _, seen = worker
    async with Producer(kafka_config) as producer:
        first = await producer.emit("sink", {"n": 0}, key="a")
        ids = await producer.emit_many("sink", [{"n": i} for i in range(1, 200)], key="a")
        assert len(set([first, *ids])) == 200
        assert producer.statistics().emitted == 200
        assert "emitted=200" in repr(producer)
    await eventually(lambda: len(seen) >= 200, timeout_s=TIMEOUT_S)
    assert seen == [{"n": i} for i in range(200)], "one key arrives in emit order"


async def test_request_returns_the_result_typed_and_reports_dead_letters(
    kafka_config: Config, worker: tuple[Runner, list[Any]]
) -> None:
    async with Producer(kafka_config) as producer:
        got = await producer.request("greet", Greeting("ada", 2), key="k", timeout_s=TIMEOUT_S)
        assert got == {"text": "hello ada hello ada"}
        typed = await producer.request("greet", {"name": "bob"}, timeout_s=TIMEOUT_S, result_type=Answer)
        assert typed == Answer("hello bob")
        many = await asyncio.gather(
            *(producer.request("greet", {"name": f"p{i}"}, timeout_s=TIMEOUT_S) for i in range(20))
        )
        assert many == [{"text": f"hello p{i}"} for i in range(20)]
        with pytest.raises(DeadLetteredError, match="rejected") as info:
            await producer.request("greet", {"name": "nobody"}, timeout_s=TIMEOUT_S)
        assert info.value.reason == "rejected"
        with pytest.raises(RequestTimeoutError, match="within 0.3 s"):
            await producer.request("nobody-listens", {"x": 1}, timeout_s=0.3)
        s = producer.statistics()
        assert (s.replies, s.requests_pending, s.requests_timed_out) == (23, 0, 1)


async def test_lifecycle(kafka_config: Config) -> None:
    producer = Producer(kafka_config)
    with pytest.raises(LifecycleError, match="has not started"):
        await producer.emit("t", 1)
    async with producer:
        pass
    await producer.aclose()  # idempotent
    with pytest.raises(LifecycleError, match="closed"):
        await producer.emit("t", 1)
    with pytest.raises(LifecycleError, match="Cannot restart"):
        await producer.start()


async def test_producer_on_a_shared_memory_bus() -> None:
    bus = MemoryBus()
    runner = Runner(config_from_dict({}), bus=bus)

    @runner.agent("agentflow.replies-test")
    async def echo(event: Event, ctx: Any) -> Any:
        return event.payload

    async with runner:
        cfg = config_from_dict({"kafka": {"reply_topic": "replies"}})
        async with Producer(cfg, bus=bus) as producer:
            assert await producer.request("agentflow.replies-test", [1, 2], timeout_s=TIMEOUT_S) == [1, 2]
    await bus.aclose()


async def test_a_producer_on_a_memory_bus_config_is_refused_with_a_sentence(tmp_path: Any) -> None:
    path = tmp_path / "agentflow.toml"
    path.write_text('[bus]\nbackend = "memory"\n')
    for config in (str(path), config_from_dict({}), None):
        with pytest.raises(ConfigError, match=r'backend = "memory".*nothing would read them.*runner\.emit') as info:
            Producer(config)
        assert info.value.key == "bus.backend"
