"""Retry tiers as topics and readiness on the Kafka bus, against the real Tansu broker (plus the tier arithmetic
with a fake clock)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_broker import TansuBroker, kafka_settings

from agentflow import ConfigError, Event, KafkaConfig, Retry, Runner, config_from_dict, load_config
from agentflow.bus.kafka import KafkaBus
from agentflow.bus.kafka.retry import NOT_BEFORE_HEADER, RetryTiers, _not_before

TIMEOUT_S = 15.0


def retry_config(bootstrap: str, prefix: str, delays: list[float], *, max_attempts: int = 3) -> dict[str, Any]:
    return {
        "bus": {"backend": "kafka", "partitions": 1},
        "kafka": kafka_settings(bootstrap, prefix=prefix, retry_topics=True, retry_tier_delays_s=delays),
        "retry": {"max_attempts": max_attempts, "initial_backoff_s": 30.0, "jitter_s": 0.0},
    }


def agent_stats(runner: Runner, name: str) -> Any:
    return next(a for a in runner.statistics().agents if a.name == name)


async def committed(bootstrap: str, group: str, topic: str) -> int | None:
    """The offset the brokers hold for ``group`` on partition 0 of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        result: int | None = await consumer.committed(TopicPartition(topic, 0))
        return result
    finally:
        await consumer.stop()


async def read_records(bootstrap: str, topic: str, n: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await consumer.start()
    out: list[Any] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while len(out) < n:
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    out.extend(records)
    finally:
        await consumer.stop()
    return out


@pytest.mark.slow
async def test_an_event_failing_twice_goes_through_the_tiers_and_the_origin_commit_moves_past_it(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any
) -> None:
    prefix = f"{uuid.uuid4().hex[:10]}."
    # [retry] would wait 30 s in-process: the tiers' 0.5 s and 2.5 s are what the event must follow.
    runner: Runner = make_runner(retry_config(kafka_broker.bootstrap, prefix, [0.5, 2.5]))
    attempts: list[tuple[str, int, float]] = []
    audited: list[Any] = []

    @runner.agent("orders")
    async def orders(event: Event, ctx: Any) -> str:
        attempts.append((event.payload["id"], event.attempt, time.monotonic()))
        if event.payload["id"] == "flaky" and event.attempt < 3:
            raise RuntimeError(f"flaky attempt {event.attempt}")
        return "ok"

    @runner.agent("orders", name="audit")
    async def audit(event: Event, ctx: Any) -> None:
        audited.append(event.payload["id"])

    async with runner:
        await runner.emit("orders", {"id": "flaky"}, key="k")
        await runner.emit("orders", {"id": "after"}, key="k")  # same key: must not wait behind the retry
        await eventually(lambda: len(attempts) >= 3, timeout_s=TIMEOUT_S, what="two attempts and the next event")
        assert [a[:2] for a in attempts[:3]] == [("flaky", 1), ("after", 1), ("flaky", 2)]
        # While the event waits in tier 2, the origin partition has committed past both records.
        group, origin = prefix + "orders", prefix + "orders"
        deadline = time.monotonic() + 1.5
        offset = await committed(kafka_broker.bootstrap, group, origin)
        while offset != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            offset = await committed(kafka_broker.bootstrap, group, origin)
        assert offset == 2, "the origin commit moved past the event waiting in a retry tier"
        assert attempts[-1][:2] == ("flaky", 2), "still waiting in tier 2"
        await eventually(lambda: len(attempts) >= 4, timeout_s=TIMEOUT_S, what="the third attempt")
        await asyncio.sleep(0.3)  # nothing more may arrive
        audit_seen = sorted(audited)

    flaky = [(n, t) for i, n, t in attempts if i == "flaky"]
    assert [n for n, _ in flaky] == [1, 2, 3], "handled once per attempt, with increasing attempt numbers"
    assert flaky[1][1] - flaky[0][1] >= 0.45 and flaky[2][1] - flaky[1][1] >= 2.4, "each tier's delay was kept"
    assert [i for i, _, _ in attempts].count("after") == 1
    assert audit_seen == ["after", "flaky"], "the other agent on the topic does not see the retries"
    assert agent_stats(runner, "orders").handled == 2

    tier1, tier2 = await asyncio.gather(
        read_records(kafka_broker.bootstrap, origin + ".retry.1", 1),
        read_records(kafka_broker.bootstrap, origin + ".retry.2", 1),
    )
    for records, attempt in ((tier1, 1), (tier2, 2)):
        (rec,) = records
        headers = {k: v.decode() for k, v in rec.headers}
        assert headers["agentflow-attempts"] == str(attempt)
        assert headers["agentflow-error"] == f"RuntimeError: flaky attempt {attempt}"
        assert headers["agentflow-origin"] == "orders"
        assert headers["agentflow-group"] == "orders"
        assert float(headers["agentflow-not-before"]) > rec.timestamp / 1000


async def test_exhausted_retries_go_to_the_dlq_with_headers_and_nothing_is_lost(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any
) -> None:
    prefix = f"{uuid.uuid4().hex[:10]}."
    runner: Runner = make_runner(retry_config(kafka_broker.bootstrap, prefix, [0.2], max_attempts=3))
    seen: list[tuple[int, int]] = []

    @runner.agent("jobs")
    async def jobs(event: Event, ctx: Any) -> None:
        seen.append((event.payload, event.attempt))
        if event.payload % 2:
            raise ValueError(f"odd {event.payload}")

    async with runner:
        await runner.emit_many("jobs", list(range(10)))
        await eventually(lambda: agent_stats(runner, "jobs").dead_lettered == 5, timeout_s=TIMEOUT_S)
        letters = await runner.bus.dead_letters(topic="jobs")
        handled = agent_stats(runner, "jobs").handled

    assert handled == 5
    assert sorted(d.event.payload for d in letters if d.event is not None) == [1, 3, 5, 7, 9]
    assert {(d.reason, d.attempts, d.error_type) for d in letters} == {("exhausted", 3, "ValueError")}
    # The last tier is reused for every later attempt: odd events ran 1, 2, 3 times through tier 1 only.
    assert sorted(seen) == sorted([(i, 1) for i in range(10)] + [(i, a) for i in (1, 3, 5, 7, 9) for a in (2, 3)])
    (rec, *_) = await read_records(kafka_broker.bootstrap, prefix + "jobs.dlq", 5)
    headers = {k: v.decode() for k, v in rec.headers}
    assert headers["agentflow-reason"] == "exhausted" and headers["agentflow-attempts"] == "3"
    assert headers["agentflow-origin"] == "jobs" and headers["agentflow-error"].startswith("ValueError: odd ")


async def test_retry_topics_off_keeps_retries_in_process(
    kafka_broker: TansuBroker, make_runner: Any, eventually: Any
) -> None:
    prefix = f"{uuid.uuid4().hex[:10]}."
    cfg = retry_config(kafka_broker.bootstrap, prefix, [0.2])
    cfg["kafka"]["retry_topics"] = False
    cfg["retry"] = {"max_attempts": 2, "initial_backoff_s": 0.01, "jitter_s": 0.0}
    runner: Runner = make_runner(cfg)
    seen: list[int] = []

    @runner.agent("jobs")
    async def jobs(event: Event, ctx: Any) -> None:
        seen.append(event.attempt)
        if event.attempt == 1:
            raise ValueError("once")

    async with runner:
        await runner.emit("jobs", 1)
        await eventually(lambda: seen == [1, 2], timeout_s=TIMEOUT_S)
        topics = await runner.bus._admin.list_topics()  # type: ignore[attr-defined]
    assert not [t for t in topics if t.startswith(prefix) and ".retry." in t]


def test_tier_arithmetic_with_a_fake_clock() -> None:
    now = [1000.0]
    tiers = RetryTiers("p.orders", [1.0, 10.0, 60.0], clock=lambda: now[0])
    assert tiers.names == ["p.orders.retry.1", "p.orders.retry.2", "p.orders.retry.3"]
    assert tiers.tier_for(1, None) == ("p.orders.retry.1", 1.0)
    assert tiers.tier_for(3, ValueError()) == ("p.orders.retry.3", 60.0)
    assert tiers.tier_for(7, None) == ("p.orders.retry.3", 60.0), "attempts past the last tier reuse it"
    assert tiers.tier_for(1, Retry(after_s=5.0)) == ("p.orders.retry.1", 5.0), "after_s lengthens a tier's wait"
    assert tiers.tier_for(2, Retry(after_s=5.0)) == ("p.orders.retry.2", 10.0), "...and never shortens it"
    tiers.delayed.update({"a": 1002.0, "b": 1000.5})
    assert tiers.wait_ms(200) == 200
    now[0] = 1000.45
    assert tiers.wait_ms(200) in (50, 51), "until the first waiting partition is due, rounded up"
    assert tiers.due() == []
    now[0] = 1001.0
    assert tiers.due() == ["b"] and tiers.delayed == {"a": 1002.0}
    tiers.forget(["a"])
    assert tiers.due() == [] and tiers.wait_ms(200) == 200


# ---- readiness ---------------------------------------------------------------------------------------------


async def test_bus_ready_follows_connection_and_assignment(kafka_broker: TansuBroker) -> None:
    cfg = msgspec.convert(kafka_settings(kafka_broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}."), KafkaConfig)
    bus = KafkaBus(cfg, partitions=2)
    assert not bus.ready, "not connected yet"
    async with asyncio.timeout(TIMEOUT_S):
        await bus.start()
        try:
            assert bus.ready, "connected, and no subscription waits for partitions"
            joining = asyncio.create_task(bus.subscribe("t", "g"))
            await asyncio.sleep(0)  # let the subscribe start
            states = []
            while not joining.done():
                states.append(bus.ready)
                await asyncio.sleep(0.01)
            sub = await joining
            assert states and not any(states[:-1]), "not ready while the group join is under way"
            assert bus.ready and sub.joined
            assert "joined=True" in repr(sub)
        finally:
            await bus.aclose()
    assert not bus.ready, "closed"


async def test_readyz_is_503_while_a_rebalance_takes_the_partitions_and_200_once_assigned(
    kafka_broker: TansuBroker, make_runner: Any
) -> None:
    prefix = f"{uuid.uuid4().hex[:10]}."
    runner: Runner = make_runner(
        {
            "bus": {"backend": "kafka", "partitions": 2},
            "kafka": kafka_settings(kafka_broker.bootstrap, prefix=prefix),
            "monitoring": {"metrics_enabled": True, "port": 0},
        }
    )

    @runner.agent("orders")
    async def orders(event: Event, ctx: Any) -> None:
        return None

    cfg = msgspec.convert(kafka_settings(kafka_broker.bootstrap, prefix=prefix), KafkaConfig)
    other = KafkaBus(cfg, partitions=2)
    async with runner, aiohttp.ClientSession() as http, asyncio.timeout(TIMEOUT_S):
        host, port = runner.http_address or ("", 0)
        url = f"http://{host}:{port}/readyz"

        async def status() -> tuple[int, Any]:
            async with http.get(url) as resp:
                return resp.status, await resp.json()

        assert (await status())[0] == 200
        await other.start()
        try:
            # A second member joining the group revokes the runner's partitions until the new assignment.
            joining = asyncio.create_task(other.subscribe("orders", "orders"))
            seen: list[tuple[int, Any]] = []
            while not joining.done():
                seen.append(await status())
                await asyncio.sleep(0.01)
            await joining
            for _ in range(250):  # the runner's member gets its new assignment at about the same time
                if (await status())[0] == 200:
                    break
                await asyncio.sleep(0.02)
            after = [await status() for _ in range(3)]
        finally:
            await other.aclose()
    assert [code for code, _ in after] == [200, 200, 200], "ready again once the partitions are assigned"
    codes = [code for code, _ in seen]
    assert 503 in codes, f"never unready during the rebalance: {codes}"
    body = next(body for code, body in seen if code == 503)
    assert body["bus_ready"] is False and body["state"] == "running"


@pytest.mark.parametrize("bad", [[], [1.0, 0], "10", [float(i + 1) for i in range(21)]])
def test_bad_tier_delays_are_refused_with_a_sentence(bad: object) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"kafka": {"retry_tier_delays_s": bad}})
    assert "kafka.retry_tier_delays_s" in str(exc.value)
    assert "expected an array of 1 to 20 items, each a number > 0" in str(exc.value)
    assert "the default ([1.0, 10.0, 60.0])" in str(exc.value)


def test_tier_delays_from_the_environment() -> None:
    env = {"AGENTFLOW__KAFKA__RETRY_TOPICS": "true", "AGENTFLOW__KAFKA__RETRY_TIER_DELAYS_S": "[2, 20]"}
    kafka = load_config(None, env=env).kafka
    assert kafka.retry_topics and kafka.retry_tier_delays_s == (2.0, 20.0)


def test_a_damaged_not_before_header_means_now_and_never_stops_the_fetch_loop() -> None:
    # The fetch loop reads this header of every retry-topic record: a foreign record with no value, or a value
    # that is not a number, is handled now rather than failing the loop (TypeError on None, before).
    assert _not_before([(NOT_BEFORE_HEADER, None)]) == 0.0
    assert _not_before([(NOT_BEFORE_HEADER, b"\xff soon")]) == 0.0
    assert _not_before([(NOT_BEFORE_HEADER, b"12.5")]) == 12.5
