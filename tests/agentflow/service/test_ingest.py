"""HTTP ingest (POST /v1/events) and the DLQ endpoints, over real HTTP against a runner's own server."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import pytest
from kafka_broker import TansuBroker, kafka_settings

from agentflow import ConfigError, Context, DeliveryUncertainError, Event, MemoryBus, Reject, Runner
from agentflow.service.ingest import MAX_NESTING

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 5.0
TOKEN = "s3cret-token-for-tests"


def ingest_config(**monitoring: Any) -> dict[str, Any]:
    return {
        "monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True, **monitoring},
        "runner": {"event_buffer_size": 8, "shutdown_grace_s": 2.0},
        "retry": {"max_attempts": 1},
    }


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


def base_url(runner: Runner) -> str:
    assert runner.http_address is not None
    host, port = runner.http_address
    return f"http://{host}:{port}"


async def post_json(
    http: aiohttp.ClientSession, url: str, body: Any, headers: Mapping[str, str] | None = None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    async with http.post(
        url, data=msgspec.json.encode(body), headers={"Content-Type": "application/json", **(headers or {})}
    ) as resp:
        return resp.status, await resp.json(), resp.headers


def recording_runner(make_runner: RunnerFactory, seen: list[Event], **monitoring: Any) -> Runner:
    runner = make_runner(ingest_config(**monitoring))

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    return runner


async def test_one_event_and_a_list_are_accepted_and_handled(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, eventually: Eventually
) -> None:
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen)
    async with runner:
        url = base_url(runner) + "/v1/events"
        status, body, _ = await post_json(
            http, url, {"topic": "orders", "payload": {"n": 1}, "key": "k1", "headers": {"h": "v"}}
        )
        assert status == 202, body
        [first] = body["ids"]
        status, body, _ = await post_json(
            http, url, [{"topic": "orders", "payload": {"n": n}, "key": "k2"} for n in (2, 3, 4)]
        )
        assert status == 202, body
        assert len(body["ids"]) == 3
        await eventually(lambda: len(seen) == 4, what="4 handled events")
    by_id = {e.id: e for e in seen}
    assert by_id[first].payload == {"n": 1} and by_id[first].key == "k1" and by_id[first].headers == {"h": "v"}
    assert [by_id[i].payload["n"] for i in body["ids"]] == [2, 3, 4]
    assert [e.payload["n"] for e in seen if e.key == "k2"] == [2, 3, 4]  # one key, in order
    assert runner.statistics().emitted == 4
    assert runner.service.ingest.accepted == 4


async def test_msgpack_body(make_runner: RunnerFactory, http: aiohttp.ClientSession, eventually: Eventually) -> None:
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen)
    async with runner:
        body = msgspec.msgpack.encode([{"topic": "orders", "payload": b"\x00bytes"}])
        async with http.post(
            base_url(runner) + "/v1/events", data=body, headers={"Content-Type": "application/msgpack"}
        ) as resp:
            assert resp.status == 202
            [eid] = (await resp.json())["ids"]
        await eventually(lambda: len(seen) == 1, what="the msgpack event")
    assert seen[0].id == eid and seen[0].payload == b"\x00bytes"


@pytest.mark.parametrize(
    ("body", "ctype", "status", "expected"),
    [
        (b"{not json", "application/json", 400, "not an event or a list of events"),
        (b'{"payload": 1}', "application/json", 400, "topic"),
        (b'{"topic": "orders", "colour": "red"}', "application/json", 400, "colour"),
        (b'{"topic": "orders", "headers": {"a": 1}}', "application/json", 400, "headers"),
        (b"[]", "application/json", 400, "empty"),
        (b'{"topic": ""}', "application/json", 400, "not a topic name"),
        (b'[{"topic": "orders"}, {"topic": "other"}]', "application/json", 400, "share one topic"),
        (b'{"topic": "orders"}', "text/plain", 415, "application/json or application/msgpack"),
        (b"\xc1", "application/msgpack", 400, "not an event"),
    ],
)
async def test_malformed_input_is_refused_and_nothing_is_accepted(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, body: bytes, ctype: str, status: int, expected: str
) -> None:
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen)
    async with runner:
        async with http.post(base_url(runner) + "/v1/events", data=body, headers={"Content-Type": ctype}) as resp:
            assert resp.status == status
            error = (await resp.json())["error"]
        assert expected in error
        assert error.endswith(".")  # a sentence
        await runner.drain(timeout_s=TIMEOUT_S)
    assert seen == []
    assert runner.statistics().emitted == 0


async def test_a_list_with_one_bad_event_accepts_none(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen)
    async with runner:
        events: list[Any] = [{"topic": "orders", "payload": n} for n in range(3)]
        events.append({"topic": "orders", "payload": 4, "key": 5})  # key must be a string
        status, body, _ = await post_json(http, base_url(runner) + "/v1/events", events)
        await runner.drain(timeout_s=TIMEOUT_S)
    assert status == 400 and "$[3].key" in body["error"]
    assert seen == [] and runner.statistics().emitted == 0


async def test_size_limits_answer_413(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    seen: list[Event] = []
    runner = make_runner(
        {**ingest_config(max_body_bytes=100_000, max_events_per_request=3), "runner": {"max_event_bytes": 1000}}
    )

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    async with runner:
        url = base_url(runner) + "/v1/events"
        status, body, _ = await post_json(http, url, {"topic": "orders", "payload": "x" * 2000})
        assert status == 413 and "Event 0" in body["error"] and "max_event_bytes" in body["error"]
        status, body, _ = await post_json(http, url, [{"topic": "orders"}] * 4)
        assert status == 413 and "max_events_per_request" in body["error"]
        status, body, _ = await post_json(http, url, {"topic": "orders", "payload": "x" * 200_000})
        assert status == 413 and "max_body_bytes" in body["error"]
        # A list whose last event is too large: the earlier ones are not accepted either.
        status, body, _ = await post_json(http, url, [{"topic": "orders"}, {"topic": "orders", "payload": "y" * 2000}])
        assert status == 413 and "Event 1" in body["error"]
        await runner.drain(timeout_s=TIMEOUT_S)
    assert seen == []


async def test_full_buffer_answers_429_with_retry_after_without_blocking(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, eventually: Eventually
) -> None:
    release = asyncio.Event()
    seen: list[Event] = []
    runner = make_runner(
        ingest_config(retry_after_s=3)
        | {"runner": {"event_buffer_size": 4, "worker_pool_size": 1, "max_concurrent_events": 1}}
    )

    @runner.agent("orders")
    async def slow(event: Event, ctx: Context) -> None:
        await release.wait()
        seen.append(event)

    async with runner:
        url = base_url(runner) + "/v1/events"
        accepted: list[str] = []
        statuses: list[int] = []
        for n in range(12):
            status, body, headers = await post_json(http, url, {"topic": "orders", "payload": n})
            statuses.append(status)
            if status == 202:
                accepted.extend(body["ids"])
            else:
                assert status == 429 and headers["Retry-After"] == "3"
                assert "buffer of topic 'orders' is full" in body["error"]
        assert 429 in statuses and 4 <= len(accepted) <= 6  # buffer 4, plus what the agent took
        # A list that does not fit as a whole is refused as a whole.
        status, _, _ = await post_json(http, url, [{"topic": "orders"}] * 3)
        assert status == 429
        release.set()
        await eventually(lambda: len(seen) == len(accepted), what="every accepted event")
        await runner.drain(timeout_s=TIMEOUT_S)
    assert sorted(e.id for e in seen) == sorted(accepted)
    assert runner.service is not None and runner.service.ingest.refused[429] >= 2


async def test_draining_answers_503_and_readyz_follows(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    runner = recording_runner(make_runner, [])
    async with runner:
        base = base_url(runner)
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ready"] is True
        runner.service.draining = True
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["draining"] is True
        status, body, headers = await post_json(http, base + "/v1/events", {"topic": "orders"})
        assert status == 503 and headers["Retry-After"] == "1" and "shutting down" in body["error"]
    assert runner.statistics().emitted == 0


async def test_bearer_token_is_required_when_configured(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_INGEST_TOKEN", TOKEN)
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen, token_env="TEST_INGEST_TOKEN")
    async with runner:
        url = base_url(runner) + "/v1/events"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, body, resp_headers = await post_json(http, url, {"topic": "orders"}, headers)
            assert status == 401 and "bearer token" in body["error"]
            assert "Bearer" in resp_headers["WWW-Authenticate"]
        async with http.get(base_url(runner) + "/v1/dlq") as resp:
            assert resp.status == 401
        status, body, _ = await post_json(http, url, {"topic": "orders"}, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 202
        async with http.get(base_url(runner) + "/metrics") as resp:  # metrics and probes stay open
            assert resp.status == 200
            assert TOKEN not in await resp.text()
        await runner.drain(timeout_s=TIMEOUT_S)
    assert len(seen) == 1
    assert TOKEN not in repr(runner.service) and TOKEN not in repr(runner)


async def test_beyond_loopback_without_a_token_refuses_to_start(
    make_runner: RunnerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_INGEST_TOKEN", raising=False)
    runner = recording_runner(make_runner, [], host="0.0.0.0", token_env="TEST_INGEST_TOKEN")
    with pytest.raises(ConfigError, match="TEST_INGEST_TOKEN") as info:
        await runner.start()
    assert "127.0.0.1" in str(info.value)
    assert runner.state.value == "closed"


async def test_beyond_loopback_with_a_token_starts(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_INGEST_TOKEN", TOKEN)
    runner = recording_runner(make_runner, [], host="0.0.0.0", token_env="TEST_INGEST_TOKEN")
    async with runner:
        assert runner.http_address is not None
        url = f"http://127.0.0.1:{runner.http_address[1]}/v1/events"
        status, _, _ = await post_json(http, url, {"topic": "orders"})
        assert status == 401


async def test_ingest_is_off_unless_enabled(make_runner: RunnerFactory, http: aiohttp.ClientSession) -> None:
    runner = make_runner({"monitoring": {"metrics_enabled": True, "port": 0}})

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        async with http.post(base_url(runner) + "/v1/events", json={"topic": "orders"}) as resp:
            assert resp.status in (404, 405)
    assert runner.statistics().emitted == 0


async def test_dlq_list_and_replay_over_http(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, eventually: Eventually
) -> None:
    fixed = False
    handled: list[Any] = []
    runner = make_runner(ingest_config())

    @runner.agent("orders")
    async def picky(event: Event, ctx: Context) -> None:
        if not fixed and event.payload["n"] % 2:
            raise Reject("odd numbers are not accepted yet")
        handled.append(event.payload["n"])

    async with runner:
        base = base_url(runner)
        status, body, _ = await post_json(
            http, base + "/v1/events", [{"topic": "orders", "payload": {"n": n}} for n in range(6)]
        )
        assert status == 202
        await eventually(lambda: runner.statistics().dead_lettered == 3, what="3 dead letters")
        async with http.get(base + "/v1/dlq", params={"topic": "orders", "limit": "2"}) as resp:
            page = await resp.json()
        assert resp.status == 200 and page["count"] == 2
        letter = page["dead_letters"][0]
        assert letter["reason"] == "rejected" and letter["agent"] == "picky" and letter["event"]["payload"]["n"] == 1
        async with http.get(base + "/v1/dlq", params={"limit": "0"}) as resp:
            assert resp.status == 400
        fixed = True
        status, body, _ = await post_json(http, base + "/v1/dlq/replay", {"ids": [letter["id"]]})
        assert status == 200 and body == {"replayed": 1}
        status, body, _ = await post_json(http, base + "/v1/dlq/replay", {"nonsense": 1})
        assert status == 400
        async with http.post(base + "/v1/dlq/replay") as resp:  # no body: replay everything left
            assert resp.status == 200 and (await resp.json()) == {"replayed": 2}
        await eventually(lambda: len(handled) == 6, what="all six handled")
        async with http.get(base + "/v1/dlq") as resp:
            assert (await resp.json())["count"] == 0
    assert sorted(handled) == list(range(6))


def _nested_json(depth: int) -> bytes:
    return b'{"topic": "orders", "payload": ' + b"[" * depth + b"1" + b"]" * depth + b"}"


def _nested_msgpack(depth: int) -> bytes:
    # A map {"topic": "orders", "payload": [[[...nil...]]]}: fixarray of one element, depth times.
    enc = msgspec.msgpack.encode
    return b"\x82" + enc("topic") + enc("orders") + enc("payload") + b"\x91" * depth + b"\xc0"


@pytest.mark.parametrize("ctype", ["application/json", "application/msgpack"])
async def test_deep_nesting_is_refused_with_400_up_to_any_depth_and_the_bound_is_exact(
    make_runner: RunnerFactory,
    http: aiohttp.ClientSession,
    eventually: Eventually,
    ctype: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Event] = []
    runner = recording_runner(make_runner, seen)
    nested = _nested_json if ctype == "application/json" else _nested_msgpack
    async with runner:
        url = base_url(runner) + "/v1/events"
        for depth in (MAX_NESTING + 1, 990, 5_000, 100_000):
            async with http.post(url, data=nested(depth), headers={"Content-Type": ctype}) as resp:
                assert resp.status == 400, depth
                error = (await resp.json())["error"]
            assert f"more than {MAX_NESTING} levels deep" in error and error.endswith("."), error
        async with http.post(url, data=nested(MAX_NESTING), headers={"Content-Type": ctype}) as resp:
            assert resp.status == 202
        await eventually(lambda: len(seen) == 1, what="the event nested exactly MAX_NESTING deep")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback logged
    assert runner.statistics().emitted == 1


async def test_ingest_accepts_only_topics_agents_read_that_exist_or_that_the_config_allows(
    make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    runner = recording_runner(make_runner, [], ingest_topics=["audit"])
    async with runner:
        url = base_url(runner) + "/v1/events"
        assert (await post_json(http, url, {"topic": "orders"}))[0] == 202
        assert (await post_json(http, url, {"topic": "audit"}))[0] == 202
        for topic in ("made-up", "orders.dlq", "orders.retry.1", "agentflow.dlq-removed", "agentflow.replies"):
            status, body, _ = await post_json(http, url, {"topic": topic})
            assert status == 404, topic
            assert f"Topic {topic!r} is not one this worker ingests" in body["error"]
            assert "monitoring.ingest_topics" in body["error"] and body["error"].endswith(".")
            # the answer names the topics it would take, so a typo ("questoins") is obvious
            assert "ingest_topics lists are 'audit', 'orders'." in body["error"], body["error"]
    assert runner.statistics().emitted == 2
    anything = recording_runner(make_runner, [], ingest_any_topic=True)
    async with anything:
        assert (await post_json(http, base_url(anything) + "/v1/events", {"topic": "made-up"}))[0] == 202


async def test_on_kafka_ingest_creates_no_topics_and_the_known_topic_list_is_bounded(
    make_runner: RunnerFactory, http: aiohttp.ClientSession, kafka_broker: TansuBroker, eventually: Eventually
) -> None:
    from agentflow.bus.kafka import KafkaBus

    prefix = f"{uuid.uuid4().hex[:10]}."
    seen: list[Event] = []
    config = ingest_config()
    config.update(
        bus={"backend": "kafka", "partitions": 1}, kafka=kafka_settings(kafka_broker.bootstrap, prefix=prefix)
    )
    runner = make_runner(config)

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        seen.append(event)

    async with runner:
        bus = runner.bus
        assert isinstance(bus, KafkaBus)
        url = base_url(runner) + "/v1/events"
        before = set(await bus._admin.list_topics())
        statuses = [(await post_json(http, url, {"topic": f"spam-{i}"}))[0] for i in range(50)]
        assert statuses == [404] * 50
        assert {t for t in await bus._admin.list_topics() if t.startswith(prefix)} == {
            t for t in before if t.startswith(prefix)
        }
        # A topic that exists on the brokers (made by another process) is accepted, as is an agent's topic.
        await bus.ensure_topic(prefix + "elsewhere")
        bus._known.pop(prefix + "elsewhere")  # as if another process had created it
        await asyncio.sleep(1.0)  # the brokers' topic list is asked for at most once a second
        assert (await post_json(http, url, {"topic": "elsewhere"}))[0] == 202
        assert (await post_json(http, url, {"topic": "orders"}))[0] == 202
        await eventually(lambda: len(seen) == 1, timeout_s=10, what="the ingested event")
        # The topics the bus remembers as existing are bounded (least recently used evicted); an evicted topic
        # is simply checked again.
        bus.max_known_topics = 3
        for i in range(6):
            await bus.publish(f"many-{i}", [Event(topic=f"many-{i}", payload=i)])
            assert len(bus._known) <= 3
        await bus.publish("many-0", [Event(topic="many-0", payload="again")])
        assert len(bus._known) <= 3


class _UncertainBus(MemoryBus):
    """A broker-backed bus as ingest sees it (it waits for the confirmation), whose brokers never confirm: every
    publish ends with the outcome unknown, as a frozen Kafka broker's would (tested against Tansu in
    tests/agentflow/bus/kafka/test_kafka_frozen.py)."""

    backend = "uncertain"

    async def publish(
        self, topic: str, events: Sequence[Any], *, group: str | None = None, follow_up: bool = False
    ) -> None:
        raise DeliveryUncertainError(
            "The brokers did not confirm the events in time; they may or may not have been written.",
            event_ids=tuple(e.id for e in events),
            events=tuple(events),
        )


async def test_an_unconfirmed_ingest_names_the_events_that_may_have_been_written(
    make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    runner = make_runner(ingest_config(ingest_any_topic=True), bus=_UncertainBus())

    @runner.agent("orders")
    async def record(event: Event, ctx: Context) -> None:
        pass

    async with runner:
        status, body, headers = await post_json(
            http, base_url(runner) + "/v1/events", [{"topic": "orders", "payload": i} for i in range(3)]
        )
    assert status == 503 and headers["Retry-After"] == "1"
    assert len(body["uncertain_ids"]) == 3 and "may or may not have been written" in body["error"]
