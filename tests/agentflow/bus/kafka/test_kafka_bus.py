"""The Kafka bus against a real Tansu broker: commits, backpressure, rebalances, dead letters, outages, Runner.

The generic contract runs in test_bus_contract.py (``[kafka]`` variants); this file covers what only Kafka has.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from kafka_broker import TansuBroker, free_port, kafka_settings

from agentflow import (
    BusUnavailableError,
    ConfigError,
    Event,
    KafkaConfig,
    LifecycleError,
    Runner,
    config_from_dict,
    create_bus,
    new_event_id,
)
from agentflow.bus import Item
from agentflow.bus.kafka import KafkaBus, KafkaSubscription, client_options

TIMEOUT_S = 10.0

MakeBus = Callable[..., Any]


def ev(topic: str, payload: object, key: str | None = None) -> Event:
    eid = new_event_id()
    return Event(topic=topic, payload=payload, key=key, id=eid, created_at=0.0, correlation_id=eid)


@pytest.fixture
async def make_bus(kafka_broker: TansuBroker) -> AsyncIterator[MakeBus]:
    created: list[KafkaBus] = []

    async def make(*, partitions: int = 4, buffer_size: int = 1000, **kafka: Any) -> KafkaBus:
        prefix = f"{uuid.uuid4().hex[:10]}."
        cfg = msgspec.convert(kafka_settings(kafka_broker.bootstrap, prefix=prefix, **kafka), KafkaConfig)
        bus = KafkaBus(cfg, partitions=partitions, buffer_size=buffer_size)
        created.append(bus)
        await bus.start()
        return bus

    yield make
    for bus in reversed(created):
        await bus.aclose()


async def take(sub: KafkaSubscription, n: int, *, ack: bool = True) -> list[Item]:
    out: list[Item] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(out) < n:
            items = sub.take_nowait(n - len(out))
            if not items:
                assert await sub.wait()
                continue
            if ack:
                for it in items:
                    sub.ack(it)
            out.extend(items)
    return out


def payloads(items: list[Item]) -> list[Any]:
    return [it.payload for it in items if isinstance(it, Event)]


@pytest.mark.slow
async def test_commit_never_passes_an_unfinished_event_whatever_order_they_finish_in(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(40)])
    items = await take(sub, 40, ack=False)
    order = list(range(40))
    random.Random(7).shuffle(order)
    for i in order:
        if i != 13:  # one event in the middle never finishes
            sub.ack(items[i])
    await asyncio.sleep(0.1)  # several commit intervals
    assert sub.statistics().unacked == 1
    await sub.aclose()
    again = await bus.subscribe("t", "g")
    # Everything from the unfinished event on comes back (at-least-once), nothing before it does.
    assert payloads(await take(again, 27)) == list(range(13, 40))
    await asyncio.sleep(0.05)
    assert again.take_nowait(100) == []


async def test_backpressure_pauses_fetching_and_a_handler_slower_than_max_poll_interval_causes_no_rebalance(
    make_bus: MakeBus,
) -> None:
    bus = await make_bus(partitions=2, buffer_size=10, max_poll_interval_ms=1000)
    sub = await bus.subscribe("t", "g")
    assert sub.generation == 1
    await bus.publish("t", [ev("t", i, f"k{i % 4}") for i in range(30)])
    held = await take(sub, 10, ack=False)
    await asyncio.sleep(0.2)
    st = sub.statistics()
    assert st.buffered + st.unacked <= 10, "the fetcher must pause at the in-flight bound"
    assert "paused=True" in repr(sub)
    # "Handlers" hold the events for 2.5 max_poll_interval_ms: polling goes on while paused, so no rebalance.
    await asyncio.sleep(2.5)
    assert sub.generation == 1, "a slow handler triggered a rebalance"
    for it in held:
        sub.ack(it)
    rest = await take(sub, 20)
    assert sorted(payloads(held) + payloads(rest)) == list(range(30)), "lost or duplicated events"
    assert sub.generation == 1
    assert "paused=False" in repr(sub)


async def test_rebalance_hands_unfinished_events_to_the_new_owner(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=4, rebalance_grace_s=0.5)
    first = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, f"k{i}") for i in range(40)])
    taken = await take(first, 40, ack=False)
    done = set()
    for it in taken[::2]:
        first.ack(it)
        done.add(it.payload)  # type: ignore[union-attr]
    running = {it.payload: it for it in taken[1::2]}  # type: ignore[union-attr]
    partition_of = {it.payload: first._unacked[id(it)][1].partition for it in running.values()}  # type: ignore[union-attr]
    await asyncio.sleep(0.1)
    # A second member joins: the first stops, waits rebalance_grace_s for its running events, commits, releases.
    second = await bus.subscribe("t", "g")
    p1, p2 = set(first.statistics().partitions), set(second.statistics().partitions)
    assert p1 and p2 and not p1 & p2 and p1 | p2 == {0, 1, 2, 3}
    moved = {p for p, part in partition_of.items() if part in p2}
    kept = set(running) - moved
    assert moved and kept
    got: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while not moved <= set(got):
            for s in (first, second):
                for it in s.take_nowait(100):
                    s.ack(it)
                    got.append(it.payload)  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    for s in (first, second):
        for it in s.take_nowait(100):
            got.append(it.payload)  # type: ignore[union-attr]
    # The new owner handles the unfinished events of the partitions it got (and the finished ones behind them,
    # at-least-once); the events still running on the partitions the first member kept are not delivered again.
    assert set(got) - done == moved, "an unfinished event was lost"
    assert not set(got) & kept, "an event still running was delivered again"
    assert first.statistics().unacked == len(kept) and first.restored == len(p1)
    # Their acknowledgements still count: once they finish, the commit passes them and a restart redelivers none.
    for p in kept:
        first.ack(running[p])
    await asyncio.sleep(0.2)
    await first.aclose()
    await second.aclose()
    again = await bus.subscribe("t", "g")
    await asyncio.sleep(0.5)
    assert again.take_nowait(100) == []


async def test_a_member_paused_when_a_rebalance_comes_resumes_its_new_partitions(
    make_bus: MakeBus, eventually: Any
) -> None:
    bus = await make_bus(partitions=4, buffer_size=10, rebalance_grace_s=0.5)
    first = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, f"k{i}") for i in range(60)])
    # Full (10 buffered, the bus's buffer_size): its partitions are paused.
    await eventually(lambda: first.statistics().buffered == 10, timeout_s=TIMEOUT_S, what="a full buffer")
    held = first.take_nowait(4)  # taken and not acknowledged until after the rebalance
    # The rebalance moves some of what the first member buffered and held to the second: it has room again, so
    # the partitions it keeps must be fetched from, not left paused with no acknowledgement ever coming to resume
    # them.
    second = await bus.subscribe("t", "g")
    assert first.statistics().partitions and second.statistics().partitions
    # Held events on partitions the first member got back stay with it (still running, not delivered again);
    # those on partitions that moved are the second member's now.
    kept = {it.payload for it in held if id(it) in first._unacked}  # type: ignore[union-attr]
    got: set[Any] = set()
    async with asyncio.timeout(TIMEOUT_S):
        while got | kept != set(range(60)):
            for s in (first, second):
                for it in s.take_nowait(100):
                    s.ack(it)
                    got.add(it.payload)  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    assert not got & kept
    for it in held:
        first.ack(it)
    assert first.statistics().unacked == 0


async def test_a_record_for_another_group_is_skipped(make_bus: MakeBus) -> None:
    bus = await make_bus()
    a = await bus.subscribe("t", "a")
    b = await bus.subscribe("t", "b")
    await bus.publish("t", [ev("t", "replay-for-a", "k")], group="a")
    await bus.publish("t", [ev("t", "everyone", "k")])
    assert payloads(await take(a, 2)) == ["replay-for-a", "everyone"]
    assert payloads(await take(b, 1)) == ["everyone"]


class Order(msgspec.Struct):
    id: int


async def test_malformed_wrong_schema_and_oversized_records_go_to_the_dlq_and_the_partition_moves_on(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any
) -> None:
    prefix = f"{uuid.uuid4().hex[:10]}."
    runner: Runner = make_runner(
        {
            "bus": {"backend": "kafka", "partitions": 1},
            "runner": {"max_event_bytes": 1024},
            "retry": {"max_attempts": 1},
            "kafka": kafka_settings(kafka_broker.bootstrap, prefix=prefix),
        }
    )
    seen: list[int] = []

    @runner.agent("orders", payload=Order)
    async def handle(event: Event, ctx: Any) -> None:
        seen.append(event.payload.id)

    async with runner:
        bus = runner.bus
        await bus.publish("orders", [ev("orders", {"id": 1}, "k")])
        await bus.publish_raw("orders", b"\xc1 not msgpack", key="k")
        await bus.publish("orders", [ev("orders", {"name": "no id"}, "k")])
        await bus.publish_raw("orders", b"x" * 2000, key="k")
        await bus.publish("orders", [ev("orders", {"id": 2}, "k")])
        await eventually(lambda: len(seen) >= 2 and runner.statistics().dead_lettered >= 3, timeout_s=TIMEOUT_S)
        assert seen == [1, 2]
        letters = await bus.dead_letters(topic="orders")
        assert sorted(d.reason for d in letters) == ["too_large", "undecodable", "wrong_schema"]
        raw = {d.reason: d.raw for d in letters}
        assert raw["undecodable"] == b"\xc1 not msgpack"
        # The letters are records of the .dlq topic, with the reason, error, attempts and origin as headers.
        assert isinstance(bus, KafkaBus)
        assert prefix + "orders.dlq" in await bus._admin.list_topics()


async def test_runner_on_kafka_handles_events_and_answers_requests(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any
) -> None:
    runner: Runner = make_runner(
        {
            "bus": {"backend": "kafka", "partitions": 2},
            "kafka": kafka_settings(kafka_broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}."),
        }
    )
    handled: list[Any] = []

    @runner.agent("greet")
    async def greet(event: Event, ctx: Any) -> str:
        handled.append(event.payload["name"])
        if event.payload["name"] == "ada":
            await ctx.emit("audit", {"greeted": "ada"})
        return f"hello {event.payload['name']}"

    audited: list[Any] = []

    @runner.agent("audit")
    async def audit(event: Event, ctx: Any) -> None:
        audited.append(event.payload)

    async with runner:
        assert runner.bus.backend == "kafka"
        assert await runner.request("greet", {"name": "ada"}, timeout_s=TIMEOUT_S) == "hello ada"
        await runner.emit_many("greet", [{"name": f"n{i}"} for i in range(50)], key="same")
        await eventually(lambda: len(handled) >= 51 and bool(audited), timeout_s=TIMEOUT_S)
        assert handled[1:] == [f"n{i}" for i in range(50)], "one key is handled in emit order"
        assert audited == [{"greeted": "ada"}]


async def test_a_rebalance_empties_the_runners_state_cache(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any, tmp_path: Any
) -> None:
    # Another member of the agent's group may write the keys of partitions this worker gets back: its cache of
    # committed values must not outlive a change of its partitions.
    prefix = f"{uuid.uuid4().hex[:10]}."
    settings = kafka_settings(kafka_broker.bootstrap, prefix=prefix)
    runner: Runner = make_runner(
        {
            "bus": {"backend": "kafka", "partitions": 4},
            "kafka": settings,
            "memory": {"backend": "sqlite", "path": str(tmp_path / "state.db")},
        }
    )

    @runner.agent("counts")
    async def count(event: Event, ctx: Any) -> int:
        n: int = await ctx.state.update(lambda n: n + 1, default=0)
        return n

    async with runner:
        assert await runner.request("counts", None, key="k", timeout_s=TIMEOUT_S) == 1
        assert runner.state_store.statistics().cached >= 1
        other = KafkaBus(msgspec.convert(settings, KafkaConfig), partitions=4)
        await other.start()
        try:
            await other.subscribe("counts", "count")  # a second member of the agent's group: a rebalance
            await eventually(lambda: runner.state_store.statistics().cached == 0, timeout_s=TIMEOUT_S)
        finally:
            await other.aclose()


async def test_unreachable_brokers_fail_start_with_a_clear_error() -> None:
    port = free_port()
    cfg = msgspec.convert(kafka_settings(f"127.0.0.1:{port}", connect_timeout_s=0.5), KafkaConfig)
    bus = KafkaBus(cfg)
    with pytest.raises(BusUnavailableError, match=rf"127\.0\.0\.1:{port} within 0\.5 s.*bootstrap_servers"):
        await bus.start()
    await bus.aclose()


@pytest.mark.slow
async def test_emits_during_an_outage_wait_bounded_then_fail_and_recover_after_restart() -> None:
    port = free_port()
    broker = TansuBroker(port=port).start()
    try:
        cfg = msgspec.convert(
            kafka_settings(broker.bootstrap, delivery_timeout_s=1.0, request_timeout_ms=500), KafkaConfig
        )
        bus = KafkaBus(cfg, partitions=1)
        await bus.start()
        try:
            await bus.publish("t", [ev("t", 0, "k")])
            broker.stop(kill=True)
            with pytest.raises(BusUnavailableError, match=r"did not confirm|failed"):
                await bus.publish("t", [ev("t", 1, "k")])
            broker.start()
            async with asyncio.timeout(TIMEOUT_S):
                while True:  # the producer reconnects by itself
                    try:
                        await bus.publish("t", [ev("t", 2, "k")])
                        break
                    except BusUnavailableError:
                        await asyncio.sleep(0.2)
            assert bus.statistics().published >= 2
        finally:
            await bus.aclose()
    finally:
        broker.close()


def test_sasl_needs_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = KafkaConfig(security_protocol="SASL_PLAINTEXT", sasl_username="svc", sasl_password_env="KAFKA_PW_TEST")
    monkeypatch.delenv("KAFKA_PW_TEST", raising=False)
    with pytest.raises(ConfigError, match="KAFKA_PW_TEST is not set"):
        client_options(cfg)
    monkeypatch.setenv("KAFKA_PW_TEST", "s3cret")
    opts = client_options(cfg)
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("svc", "s3cret")
    bus = KafkaBus(cfg)
    assert "s3cret" not in repr(bus)


def test_create_bus_follows_the_config(kafka_broker: TansuBroker) -> None:
    bus = create_bus(config_from_dict({"bus": {"backend": "kafka"}, "kafka": {"topic_prefix": "x."}}))
    assert isinstance(bus, KafkaBus) and bus.topic_name("t") == "x.t" and bus.dlq_name("t") == "x.t.dlq"
    assert create_bus(config_from_dict({})).backend == "memory"


async def test_closed_bus_refuses_subscribe(make_bus: MakeBus) -> None:
    bus = await make_bus()
    await bus.aclose()
    with pytest.raises(LifecycleError, match="closed"):
        await bus.subscribe("t", "g")


async def test_a_broker_without_the_idempotent_producer_gives_a_clear_error_at_once(kafka_broker: TansuBroker) -> None:
    bus = KafkaBus(KafkaConfig(bootstrap_servers=kafka_broker.bootstrap, enable_idempotence=True))
    with pytest.raises(BusUnavailableError, match="set kafka.enable_idempotence = false"):
        async with asyncio.timeout(5):  # not retried for connect_timeout_s: retrying cannot help
            await bus.start()
    await bus.aclose()


async def test_lag_is_what_is_not_finished_up_to_the_end_of_the_partitions(make_bus: MakeBus) -> None:
    bus = await make_bus(partitions=2)
    sub = await bus.subscribe("t", "g")
    assert sub.statistics().lag is None  # nothing fetched: unknown, not zero
    await bus.publish("t", [ev("t", i, f"k{i}") for i in range(30)])
    items = await take(sub, 30, ack=False)
    assert sub.statistics().lag == 30
    for it in items:
        sub.ack(it)
    assert sub.statistics().lag == 0
    await bus.publish("t", [ev("t", i, f"k{i}") for i in range(5)])
    await take(sub, 5, ack=False)
    assert sub.statistics().lag == 5


async def test_a_writes_keyless_events_share_one_partition_and_writes_take_the_partitions_in_turn(
    make_bus: MakeBus,
) -> None:
    bus = await make_bus(partitions=4)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", "first", "k")])  # the producer learns the topic's partitions
    await take(sub, 1)
    for w in range(4):
        await bus.publish("t", [ev("t", (w, i)) for i in range(10)])
    items = await take(sub, 40, ack=False)
    part = {tuple(it.payload): sub._unacked[id(it)][1].partition for it in items if isinstance(it, Event)}
    by_write = [{part[(w, i)] for i in range(10)} for w in range(4)]
    assert all(len(parts) == 1 for parts in by_write), by_write  # one batch per write, in emit order
    assert {p for parts in by_write for p in parts} == {0, 1, 2, 3}  # spread over the partitions across writes
    for w in range(4):  # a partition keeps the write's order
        assert [it.payload[1] for it in items if isinstance(it, Event) and it.payload[0] == w] == list(range(10))
