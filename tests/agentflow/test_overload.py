"""Overload: callers waiting for room are cheap to hold, bounded, released on close, and lose nothing.

Behaviour only; what the waiting costs against a bare asyncio.Queue is measured by
``agentcli benchmark --scenario overload`` (docs/benchmarking.md).
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
import pytest
from kafka_broker import TansuBroker, kafka_settings

from agentflow import BackpressureError, Context, Event, LifecycleError, RequestTimeoutError, Runner

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 10.0


def held_runner(make_runner: RunnerFactory, **runner: Any) -> tuple[Runner, asyncio.Event]:
    """A runner whose one agent ("t", one worker) holds every event until the returned gate opens."""
    r = make_runner(
        {"runner": {"event_buffer_size": 1, "max_concurrent_events": 1, "shutdown_grace_s": 0.05, **runner}}
    )
    gate = asyncio.Event()

    @r.agent("t", concurrency=1)
    async def held(event: Event, ctx: Context) -> Any:
        await gate.wait()
        return event.payload

    return r, gate


async def fill(runner: Runner, eventually: Eventually) -> None:
    """One event in the agent's hands and one in the buffer: the next emit has to wait."""
    await runner.emit("t", "running")
    await eventually(lambda: runner.statistics().in_flight == 1, what="the agent to take the first event")
    await runner.emit("t", "buffered")
    assert not runner.bus.offer("t", [Event(topic="t", payload="probe")])


def futures_with_most_callbacks() -> int:
    return max((len(f._callbacks or ()) for f in gc.get_objects() if isinstance(f, asyncio.Future)), default=0)


async def test_thousands_of_blocked_emitters_are_all_released_when_the_runner_closes(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    n = 3000
    runner, _ = held_runner(make_runner)
    await runner.start()
    await fill(runner, eventually)
    emits = [asyncio.create_task(runner.emit("t", i)) for i in range(n)]
    requests = [asyncio.create_task(runner.request("t", i, timeout_s=60)) for i in range(100)]
    await eventually(lambda: runner.statistics().waiting_emits == n + 100, what="every caller to wait")
    assert runner.statistics().bus.publishers_waiting == n + 100
    # Each waiting caller costs the same however many wait: nothing holds a callback per waiter.
    assert futures_with_most_callbacks() < 10
    await runner.aclose()
    async with asyncio.timeout(TIMEOUT_S):
        results = await asyncio.gather(*emits, *requests, return_exceptions=True)
    assert all(isinstance(r, LifecycleError) for r in results), {type(r).__name__ for r in results}
    assert str(results[0]) == ("The Runner closed while an emit to 't' waited for the bus; the event was not emitted.")
    s = runner.statistics()
    assert (s.waiting_emits, s.pending_requests, s.bus.publishers_waiting) == (0, 0, 0)
    assert s.refused_emits == 0


async def test_the_waiting_bound_refuses_the_next_caller_at_once_and_counts_it(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner, gate = held_runner(make_runner, max_waiting_emits=3)
    handled: list[Any] = []

    @runner.agent("u")
    async def record(event: Event, ctx: Context) -> None:
        handled.append(event.payload)

    async with runner:
        await fill(runner, eventually)
        waiting = [
            asyncio.create_task(runner.emit("t", "w0")),
            asyncio.create_task(runner.emit_many("t", ["w1", "w2"])),
            asyncio.create_task(runner.request("t", "w3")),
        ]
        await eventually(lambda: runner.statistics().waiting_emits == 3, what="three waiting callers")
        emitted = runner.statistics().emitted
        for call in (
            runner.emit("t", "x"),
            runner.emit_many("t", ["x", "y"]),
            runner.request("t", "x"),
            runner.emit_encoded("t", b"x"),
        ):
            with pytest.raises(BackpressureError) as refused:
                async with asyncio.timeout(1.0):  # at once, never after waiting
                    await call
        assert str(refused.value) == (
            "3 callers already wait for room in the bus, the limit of runner.max_waiting_emits; the emit to 't' was "
            "refused and nothing was published. Retry later, slow down, or raise runner.max_waiting_emits."
        )
        s = runner.statistics()
        assert (s.refused_emits, s.refused_requests, s.waiting_emits, s.pending_requests) == (4, 0, 3, 1)
        assert s.emitted == emitted, "a refused call publishes nothing"
        assert runner.metrics.calls_refused == {"max_waiting_emits": 4, "max_pending_requests": 0}
        text = runner.metrics.render().decode()
        assert 'agentflow_calls_refused_total{limit="max_waiting_emits"} 4.0' in text
        assert "agentflow_emits_waiting 3.0" in text
        await runner.emit("u", "another topic waits for nothing")  # the bound is on waiting, not on emitting
        gate.set()
        async with asyncio.timeout(TIMEOUT_S):
            results = await asyncio.gather(*waiting)
        assert results[2] == "w3"
        await runner.drain(timeout_s=TIMEOUT_S)
        s = runner.statistics()
        assert (s.handled, s.waiting_emits, s.bus.publishers_waiting) == (7, 0, 0)
    assert handled == ["another topic waits for nothing"]


async def test_the_pending_requests_bound_refuses_the_next_request_and_counts_it(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner = make_runner({"runner": {"max_pending_requests": 2}})
    gate = asyncio.Event()

    @runner.agent("t")
    async def held(event: Event, ctx: Context) -> Any:
        await gate.wait()
        return event.payload

    async with runner:
        pending = [asyncio.create_task(runner.request("t", i)) for i in range(2)]
        await eventually(lambda: runner.statistics().in_flight == 2, what="two requests in the agent's hands")
        with pytest.raises(BackpressureError) as refused:
            await runner.request("t", 2)
        assert str(refused.value) == (
            "2 requests already wait for their results, the limit of runner.max_pending_requests; the request to "
            "'t' was refused and nothing was published. Retry later, slow down, or raise runner.max_pending_requests."
        )
        s = runner.statistics()
        assert (s.refused_requests, s.pending_requests, s.emitted) == (1, 2, 2)
        assert runner.metrics.calls_refused["max_pending_requests"] == 1
        await runner.emit("t", "emits are not requests")
        gate.set()
        async with asyncio.timeout(TIMEOUT_S):
            assert await asyncio.gather(*pending) == [0, 1]
        assert await runner.request("t", 3, timeout_s=TIMEOUT_S) == 3, "the bound frees as results arrive"


async def test_a_request_whose_deadline_passes_while_it_waits_for_room_leaves_nothing_behind(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner, gate = held_runner(make_runner)
    async with runner:
        await fill(runner, eventually)
        with pytest.raises(RequestTimeoutError, match="within 0.1 s"):
            async with asyncio.timeout(TIMEOUT_S):
                await runner.request("t", "late", timeout_s=0.1)
        s = runner.statistics()
        assert (s.waiting_emits, s.pending_requests, s.bus.publishers_waiting) == (0, 0, 0)
        gate.set()
        await runner.drain(timeout_s=TIMEOUT_S)
        assert runner.statistics().handled == 2, "the timed-out request was never published"


@pytest.mark.parametrize("order", ["cancel_then_close", "close_then_cancel"])
async def test_a_caller_cancelled_from_outside_as_the_runner_closes_sees_its_own_cancellation(
    make_runner: RunnerFactory, eventually: Eventually, order: str
) -> None:
    runner, _ = held_runner(make_runner)
    await runner.start()
    await fill(runner, eventually)
    task = asyncio.create_task(runner.emit("t", "waits"))
    await eventually(lambda: runner.statistics().waiting_emits == 1, what="a waiting emit")
    closing = None
    if order == "cancel_then_close":
        task.cancel()
        closing = asyncio.create_task(runner.aclose())
    else:
        closing = asyncio.create_task(runner.aclose())
        await asyncio.sleep(0)  # aclose has released the caller; its cancellation is pending
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(TIMEOUT_S):
            await task
    await closing


async def test_a_released_caller_inside_its_own_timeout_can_go_on(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner, _ = held_runner(make_runner)
    await runner.start()
    await fill(runner, eventually)
    outcome: list[str] = []

    async def caller() -> None:
        async with asyncio.timeout(TIMEOUT_S):
            try:
                await runner.emit("t", "waits")
            except LifecycleError:
                outcome.append("released")
            await asyncio.sleep(0.01)  # no cancellation is left over for the caller's next await
            outcome.append(f"cancelling={asyncio.current_task().cancelling()}")  # type: ignore[union-attr]

    task = asyncio.create_task(caller())
    await eventually(lambda: runner.statistics().waiting_emits == 1, what="a waiting emit")
    await runner.aclose()
    async with asyncio.timeout(TIMEOUT_S):
        await task
    assert outcome == ["released", "cancelling=0"]


async def test_under_overload_every_accepted_event_is_handled_and_the_rest_refused(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 20, "max_waiting_emits": 50, "max_pending_requests": 60}})
    handled: list[Any] = []

    @runner.agent("t", concurrency=4)
    async def slow(event: Event, ctx: Context) -> Any:
        await asyncio.sleep(0.001)
        handled.append(event.payload)
        return event.payload

    accepted: list[Any] = []
    answered: list[Any] = []
    refused = 0

    async def emit(i: int) -> None:
        nonlocal refused
        try:
            await runner.emit("t", i)
        except BackpressureError:
            refused += 1
            return
        accepted.append(i)

    async def request(i: int) -> None:
        nonlocal refused
        try:
            answered.append(await runner.request("t", i, timeout_s=60))
        except BackpressureError:
            refused += 1

    async with runner:
        async with asyncio.timeout(60):
            await asyncio.gather(*(emit(i) if i % 2 else request(i) for i in range(2000)))
            await runner.drain()
        s = runner.statistics()
    assert refused > 0 and accepted and answered
    assert len(accepted) + len(answered) + refused == 2000
    assert refused == s.refused_emits + s.refused_requests
    assert sorted(handled) == sorted(accepted + answered), "every accepted event handled once, no refused one"
    assert (s.waiting_emits, s.pending_requests) == (0, 0)


# ---- HTTP ingest -------------------------------------------------------------------------------------------


def ingest_runner(make_runner: RunnerFactory, handled: list[Event], **config: Any) -> Runner:
    runner = make_runner(
        {
            "monitoring": {"metrics_enabled": True, "port": 0, "ingest_enabled": True, "retry_after_s": 2},
            "runner": {"event_buffer_size": 10, "max_concurrent_events": 4},
            **config,
        }
    )

    @runner.agent("orders", concurrency=2)
    async def slow(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.002)
        handled.append(event)

    return runner


async def flood_ingest(runner: Runner, posts: int) -> tuple[list[str], list[int]]:
    """``posts`` concurrent POSTs of two events each; the accepted ids, and the status of each refusal."""
    assert runner.http_address is not None
    url = "http://{}:{}/v1/events".format(*runner.http_address)
    accepted: list[str] = []
    refusals: list[int] = []
    body = msgspec.json.encode([{"topic": "orders", "payload": 1}, {"topic": "orders", "payload": 2}])
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def post() -> None:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                answer = await resp.json()
                if resp.status == 202:
                    accepted.extend(answer["ids"])
                    return
                assert resp.status == 429, answer
                assert resp.headers["Retry-After"] == "2"
                refusals.append(resp.status)

        await asyncio.gather(*(post() for _ in range(posts)))
    return accepted, refusals


async def test_http_ingest_under_overload_answers_429_with_retry_after_and_loses_nothing_it_accepted(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    handled: list[Event] = []
    runner = ingest_runner(make_runner, handled)
    async with runner:
        accepted, refusals = await flood_ingest(runner, 300)
        await eventually(lambda: len(handled) == len(accepted), timeout_s=TIMEOUT_S, what="every accepted event")
        await runner.drain(timeout_s=TIMEOUT_S)
    assert refusals and accepted
    assert len(accepted) + 2 * len(refusals) == 600
    assert sorted(e.id for e in handled) == sorted(accepted)


async def test_http_ingest_on_kafka_under_overload_loses_nothing_it_accepted(
    make_runner: RunnerFactory, eventually: Eventually, kafka_broker: TansuBroker
) -> None:
    handled: list[Event] = []
    kafka = kafka_settings(kafka_broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}.")
    runner = ingest_runner(make_runner, handled, bus={"backend": "kafka", "partitions": 2}, kafka=kafka)
    async with runner:
        # Kafka's topic holds the backlog: ingest answers 429 only while the brokers' confirmations lag
        # (runner.event_buffer_size events awaiting them), so it may accept everything here.
        accepted, refusals = await flood_ingest(runner, 200)
        await eventually(lambda: len(handled) >= len(accepted), timeout_s=30, what="every accepted event")
    assert len(accepted) + 2 * len(refusals) == 400
    assert sorted({e.id for e in handled}) == sorted(accepted)


async def test_requests_on_kafka_are_bounded_by_max_pending_requests(
    make_runner: RunnerFactory, eventually: Eventually, kafka_broker: TansuBroker
) -> None:
    # The topic takes any backlog, so without the bound every request would wait, and hold memory, for its result.
    kafka = kafka_settings(kafka_broker.bootstrap, prefix=f"{uuid.uuid4().hex[:10]}.")
    runner = make_runner(
        {"bus": {"backend": "kafka", "partitions": 2}, "kafka": kafka, "runner": {"max_pending_requests": 5}}
    )
    gate = asyncio.Event()

    @runner.agent("t")
    async def held(event: Event, ctx: Context) -> Any:
        await gate.wait()
        return event.payload

    async with runner:
        pending = [asyncio.create_task(runner.request("t", i, timeout_s=60)) for i in range(5)]
        await eventually(lambda: runner.statistics().in_flight == 5, timeout_s=30, what="five requests handled")
        with pytest.raises(BackpressureError, match="runner.max_pending_requests"):
            await runner.request("t", 5)
        assert runner.statistics().refused_requests == 1
        gate.set()
        async with asyncio.timeout(30):
            assert await asyncio.gather(*pending) == [0, 1, 2, 3, 4]
