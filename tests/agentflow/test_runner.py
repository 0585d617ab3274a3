"""The Runner through its public API: emitting, requests, ordering, backpressure, workflows, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections import defaultdict
from typing import TYPE_CHECKING

import msgspec
import pytest

from agentflow import (
    BackpressureError,
    Context,
    DeadLetteredError,
    Event,
    LifecycleError,
    MemoryBus,
    RequestTimeoutError,
    Runner,
    RunnerState,
    config_from_dict,
)

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 5.0


# ---- emitting and requests ---------------------------------------------------------------------------------


async def test_emit_emit_many_emit_nowait_and_request_round_trip(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    seen: list[Event] = []

    @runner.agent("greetings")
    async def greet(event: Event, ctx: Context) -> str:
        seen.append(event)
        assert ctx.agent == "greet"
        return f"hello {event.payload['name']}"

    async with runner:
        assert runner.state is RunnerState.RUNNING
        one = await runner.emit("greetings", {"name": "a"}, key="k", headers={"h": "1"})
        many = await runner.emit_many("greetings", [{"name": "b"}, {"name": "c"}], key="k")
        nowait = runner.emit_nowait("greetings", {"name": "d"}, key="k")
        assert await runner.request("greetings", {"name": "Ada"}, timeout_s=TIMEOUT_S) == "hello Ada"
        await runner.drain(timeout_s=TIMEOUT_S)
        stats = runner.statistics()
    assert len({one, *many, nowait}) == 4
    by_id = {e.id: e for e in seen}
    assert set(by_id) >= {one, *many, nowait}
    assert [by_id[i].payload["name"] for i in (one, *many, nowait)] == ["a", "b", "c", "d"]
    assert by_id[one].headers == {"h": "1"} and by_id[one].key == "k"
    assert all(e.topic == "greetings" and e.attempt == 1 and e.depth == 0 for e in seen)
    assert by_id[one].correlation_id == one, "a root event starts its own workflow"
    assert (stats.emitted, stats.handled, stats.pending_requests) == (5, 5, 0)
    assert stats.agents[0].name == "greet" and stats.agents[0].topic == "greetings"


async def test_request_returns_what_the_handler_returned(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("sum")
    async def add(event: Event, ctx: Context) -> dict[str, int]:
        return {"total": sum(event.payload)}

    async with runner:
        results = await asyncio.gather(*(runner.request("sum", [i, i], timeout_s=TIMEOUT_S) for i in range(50)))
    assert results == [{"total": 2 * i} for i in range(50)]


async def test_request_to_a_topic_without_agents_is_refused(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("exists")
    async def h(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        with pytest.raises(LifecycleError, match="No agent subscribes to topic 'nowhere'"):
            await runner.request("nowhere", 1, timeout_s=TIMEOUT_S)
        assert runner.statistics().pending_requests == 0


async def test_request_times_out_when_the_handler_is_slow(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"request_timeout_s": 0.1}})
    release = asyncio.Event()

    @runner.agent("slow")
    async def slow(event: Event, ctx: Context) -> str:
        await release.wait()
        return "late"

    async with runner:
        t0 = time.perf_counter()
        with pytest.raises(RequestTimeoutError, match="within 0.1 s"):
            await runner.request("slow", 1)  # the config's request_timeout_s
        assert time.perf_counter() - t0 < 2.0
        with pytest.raises(RequestTimeoutError, match="within 0.05 s"):
            await runner.request("slow", 2, timeout_s=0.05)
        assert runner.statistics().pending_requests == 0
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)
        assert runner.statistics().handled == 2


async def test_request_timeout_also_covers_waiting_for_buffer_room(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 1, "max_concurrent_events": 1}})
    release = asyncio.Event()

    @runner.agent("t", concurrency=1)
    async def blocked(event: Event, ctx: Context) -> None:
        await release.wait()

    async with runner:
        try:
            await runner.emit("t", "running")
            await runner.emit("t", "buffered")  # the buffer is now full
            # timeout_s bounds the whole request, including the wait for room to publish it.
            async with asyncio.timeout(1.5):
                with pytest.raises(RequestTimeoutError):
                    await runner.request("t", "waits", timeout_s=0.1)
        finally:
            release.set()


# ---- ordering and concurrency ------------------------------------------------------------------------------


async def test_same_key_is_sequential_and_in_emit_order_while_keys_overlap(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 16}})
    rng = random.Random(42)
    active_keys: set[str] = set()
    overlaps: list[str] = []
    order: dict[str, list[int]] = defaultdict(list)
    running = 0
    peak = 0

    @runner.agent("t", concurrency=8)
    async def handle(event: Event, ctx: Context) -> None:
        nonlocal running, peak
        key, n = event.key, event.payload
        assert key is not None
        if key in active_keys:
            overlaps.append(key)
        active_keys.add(key)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(rng.choice([0, 0.0005, 0.001, 0.002]))
            order[key].append(n)
        finally:
            running -= 1
            active_keys.discard(key)

    keys = [f"user-{i}" for i in range(12)]
    expected: dict[str, list[int]] = defaultdict(list)
    async with runner:
        for n in range(360):
            key = rng.choice(keys)
            expected[key].append(n)
            if n % 3 == 0:
                await runner.emit("t", n, key=key)
            else:
                runner.emit_nowait("t", n, key=key)
        await runner.drain(timeout_s=TIMEOUT_S)
    assert overlaps == [], "two events with the same key ran at the same time"
    assert order == expected
    assert peak > 1, "different keys should run concurrently"


async def test_different_keys_run_concurrently(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    started: list[str] = []
    all_started = asyncio.Event()

    @runner.agent("t", concurrency=4)
    async def handle(event: Event, ctx: Context) -> None:
        started.append(event.key or "")
        if len(started) == 4:
            all_started.set()
        # Each handler waits for the others: only possible if all four run at once.
        await asyncio.wait_for(all_started.wait(), TIMEOUT_S)

    async with runner:
        await runner.emit_many("t", [1], key="a")
        for key in "bcd":
            await runner.emit("t", 1, key=key)
        await runner.drain(timeout_s=TIMEOUT_S)
        assert runner.statistics().handled == 4
    assert sorted(started) == ["a", "b", "c", "d"]


# ---- backpressure ------------------------------------------------------------------------------------------


async def test_emit_nowait_raises_when_full_and_emit_waits(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 2, "max_concurrent_events": 1}})
    release = asyncio.Event()
    handled: list[int] = []

    @runner.agent("t", concurrency=1)
    async def blocked(event: Event, ctx: Context) -> None:
        await release.wait()
        handled.append(event.payload)

    async with runner:
        await runner.emit("t", 0, key="k")
        await eventually(lambda: runner.statistics().in_flight == 1, what="the first event to be taken")
        runner.emit_nowait("t", 1, key="k")
        runner.emit_nowait("t", 2, key="k")
        with pytest.raises(BackpressureError, match="full"):
            runner.emit_nowait("t", 3, key="k")
        assert runner.statistics().bus.buffered == 2
        waiting = asyncio.create_task(runner.emit("t", 3, key="k"))
        await asyncio.sleep(0.02)
        assert not waiting.done(), "emit should wait while the buffer is full"
        assert runner.statistics().bus.publishers_waiting == 1
        release.set()
        async with asyncio.timeout(TIMEOUT_S):
            await waiting
        await runner.drain(timeout_s=TIMEOUT_S)
    assert handled == [0, 1, 2, 3]


async def test_max_concurrent_events_bounds_the_events_held(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 8, "max_concurrent_events": 4}})
    release = asyncio.Event()

    @runner.agent("t")
    async def blocked(event: Event, ctx: Context) -> None:
        await release.wait()

    async with runner:
        await runner.emit_many("t", list(range(20)))
        peak = 0
        for _ in range(20):
            await asyncio.sleep(0.002)
            peak = max(peak, runner.statistics().in_flight)
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)
        assert runner.statistics().handled == 20
    assert 0 < peak <= 4, f"{peak} events held with runner.max_concurrent_events = 4"


async def test_emit_many_waits_for_room_instead_of_overfilling_the_buffer(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner = make_runner({"runner": {"event_buffer_size": 10, "max_concurrent_events": 1}})
    release = asyncio.Event()
    handled: list[int] = []

    @runner.agent("t", concurrency=1)
    async def blocked(event: Event, ctx: Context) -> None:
        await release.wait()
        handled.append(event.payload)

    async with runner:
        await runner.emit("t", -1, key="k")
        await eventually(lambda: runner.statistics().in_flight == 1, what="the first event to be taken")
        batch = asyncio.create_task(runner.emit_many("t", list(range(100)), key="k"))
        await asyncio.sleep(0.02)
        buffered = runner.statistics().bus.buffered
        release.set()
        async with asyncio.timeout(TIMEOUT_S):
            await batch
        await runner.drain(timeout_s=TIMEOUT_S)
    assert buffered <= 10, f"{buffered} events buffered with runner.event_buffer_size = 10"
    assert handled == [-1, *range(100)]


# ---- workflows ---------------------------------------------------------------------------------------------


async def test_follow_ups_carry_correlation_id_and_depth(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    seen: dict[str, Event] = {}

    @runner.agent("orders")
    async def place(event: Event, ctx: Context) -> None:
        seen["orders"] = event
        assert ctx.correlation_id == event.correlation_id
        fid = await ctx.emit("invoices", {"order": event.payload}, key=event.key, headers={"via": "place"})
        assert fid is not None

    @runner.agent("invoices")
    async def invoice(event: Event, ctx: Context) -> None:
        seen["invoices"] = event
        ids = await ctx.emit_many("mail", [1, 2])
        assert len(ids) == 2

    @runner.agent("mail")
    async def mail(event: Event, ctx: Context) -> None:
        seen[f"mail-{event.payload}"] = event

    async with runner:
        root = await runner.emit("orders", 7, key="c1")
        await runner.drain(timeout_s=TIMEOUT_S)
    assert set(seen) == {"orders", "invoices", "mail-1", "mail-2"}
    assert {e.correlation_id for e in seen.values()} == {root}
    assert [seen[k].depth for k in ("orders", "invoices", "mail-1", "mail-2")] == [0, 1, 2, 2]
    inv = seen["invoices"]
    assert (inv.payload, inv.key, inv.headers) == ({"order": 7}, "c1", {"via": "place"})
    assert inv.id != root


async def test_self_emitting_loop_stops_at_max_workflow_depth(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"max_workflow_depth": 3}})
    depths: list[int] = []
    returned_ids: list[str | None] = []

    @runner.agent("loop")
    async def again(event: Event, ctx: Context) -> None:
        depths.append(event.depth)
        returned_ids.append(await ctx.emit("loop", event.payload + 1))

    async with runner:
        root = await runner.emit("loop", 0)
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = await runner.dlq.list(topic="loop")
        stats = runner.statistics()
    assert depths == [0, 1, 2, 3]
    assert returned_ids[-1] is None and all(returned_ids[:-1])
    [letter] = letters
    assert letter.reason == "depth_exceeded" and letter.error_type == "WorkflowDepthError"
    assert "max_workflow_depth=3" in letter.error
    assert letter.event is not None
    assert (letter.event.depth, letter.event.correlation_id, letter.event.payload) == (4, root, 4)
    assert stats.handled == 4


# ---- typed payloads ----------------------------------------------------------------------------------------


class Order(msgspec.Struct):
    id: int
    item: str
    qty: int = 1


async def test_typed_payloads_are_converted_and_wrong_shapes_dead_lettered(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    got: list[Order] = []

    @runner.agent("orders", payload=Order)
    async def take_order(event: Event, ctx: Context) -> int:
        assert isinstance(event.payload, Order)
        got.append(event.payload)
        return event.payload.qty

    async with runner:
        assert await runner.request("orders", {"id": 1, "item": "tea"}, timeout_s=TIMEOUT_S) == 1
        assert await runner.request("orders", Order(2, "jam", 3), timeout_s=TIMEOUT_S) == 3
        await runner.emit("orders", {"id": "one", "item": "tea"})
        await runner.emit("orders", ["not", "a", "dict"])
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("orders", {"item": "no id"}, timeout_s=TIMEOUT_S)
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = await runner.dlq.list(agent="take_order")
        stats = runner.statistics()
    assert info.value.reason == "wrong_schema"
    assert got == [Order(1, "tea"), Order(2, "jam", 3)]
    assert [d.reason for d in letters] == ["wrong_schema"] * 3
    assert all(d.error_type == "EventDecodeError" and "Order" in d.error for d in letters)
    assert letters[0].event is not None and letters[0].event.payload == {"id": "one", "item": "tea"}
    assert (stats.handled, stats.dead_lettered) == (2, 3)


# ---- drain ---------------------------------------------------------------------------------------------------


async def test_drain_waits_for_every_event_and_follow_up(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    done: list[int] = []

    @runner.agent("first", concurrency=4)
    async def first(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.005)
        await ctx.emit("second", event.payload)

    @runner.agent("second", concurrency=4)
    async def second(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.005)
        done.append(event.payload)

    async with runner:
        await runner.emit_many("first", list(range(40)))
        await runner.drain(timeout_s=TIMEOUT_S)
        assert sorted(done) == list(range(40))
        assert runner.statistics().in_flight == 0


async def test_drain_times_out_while_a_handler_is_stuck(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    release = asyncio.Event()

    @runner.agent("t")
    async def stuck(event: Event, ctx: Context) -> None:
        await release.wait()

    async with runner:
        await runner.emit("t", 1)
        with pytest.raises(TimeoutError, match="did not drain within 0.05 s"):
            await runner.drain(timeout_s=0.05)
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)


# ---- lifecycle ---------------------------------------------------------------------------------------------


async def test_lifecycle_refusals_are_sentences(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> int:
        return 1

    assert runner.state is RunnerState.CREATED
    with pytest.raises(LifecycleError, match=r"Cannot emit before the Runner has started; use 'async with runner:'"):
        await runner.emit("t", 1)
    with pytest.raises(LifecycleError, match="before the Runner has started"):
        runner.emit_nowait("t", 1)
    with pytest.raises(LifecycleError, match="before the Runner has started"):
        await runner.request("t", 1)
    with pytest.raises(LifecycleError, match="before the Runner has started"):
        await runner.drain()
    await runner.start()
    with pytest.raises(LifecycleError, match="already started"):
        await runner.start()
    with pytest.raises(LifecycleError, match="Register agents before starting the Runner"):
        runner.agent("late")
    await runner.aclose()
    assert runner.state is RunnerState.CLOSED
    await runner.aclose()  # a second close is harmless
    with pytest.raises(LifecycleError, match="Cannot emit: the Runner has been closed; create a new Runner."):
        await runner.emit("t", 1)
    with pytest.raises(LifecycleError, match="has been closed"):
        await runner.emit_many("t", [1])
    with pytest.raises(LifecycleError, match="has been closed"):
        await runner.emit_encoded("t", b"x")
    with pytest.raises(LifecycleError, match="Cannot restart a Runner once it has been closed"):
        await runner.start()
    with pytest.raises(LifecycleError, match="Cannot restart a Runner once it has been closed"):
        async with runner:
            pass


async def test_concurrent_aclose_is_harmless(make_runner: RunnerFactory) -> None:
    runner = make_runner({"runner": {"shutdown_grace_s": 1.0}})
    release = asyncio.Event()

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> None:
        await release.wait()

    await runner.start()
    await runner.emit("t", 1)
    closers = [asyncio.create_task(runner.aclose()) for _ in range(3)]
    await asyncio.sleep(0.02)
    assert runner.state is RunnerState.CLOSING
    assert not any(c.done() for c in closers), "every aclose waits for the one shutdown"
    release.set()
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*closers)
    assert runner.state is RunnerState.CLOSED
    s = runner.statistics()
    assert s.shutdown is not None and s.shutdown.drained and s.handled == 1


def agentflow_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


class FailingStartBus(MemoryBus):
    async def start(self) -> None:
        raise RuntimeError("broker unreachable")


async def test_bus_start_failure_leaves_nothing_behind() -> None:
    before = agentflow_tasks()
    runner = Runner(config_from_dict({}), bus=FailingStartBus())

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> None:
        return None

    with pytest.raises(RuntimeError, match="broker unreachable"):
        async with runner:
            pass
    assert runner.state is RunnerState.CLOSED
    assert agentflow_tasks() == before
    with pytest.raises(LifecycleError, match="Cannot restart"):
        await runner.start()


async def test_port_in_use_at_start_leaves_no_tasks_behind() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        before = agentflow_tasks()
        runner = Runner(config_from_dict({"monitoring": {"metrics_enabled": True, "port": port}}))

        @runner.agent("t", concurrency=3)
        async def h(event: Event, ctx: Context) -> None:
            return None

        with pytest.raises(OSError):
            await runner.start()
        await asyncio.sleep(0)
        assert agentflow_tasks() == before, "workers, dispatcher and watchdog must all be gone"
        assert runner.state is RunnerState.CLOSED
        assert runner.bus.statistics().subscriptions == ()


async def test_repr_and_statistics_show_live_numbers(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner({"runner": {"worker_pool_size": 4}})
    release = asyncio.Event()

    @runner.agent("t", concurrency=2)
    async def h(event: Event, ctx: Context) -> None:
        await release.wait()

    assert repr(runner).startswith("<Runner state=created agents=1 emitted=0 handled=0")
    async with runner:
        await runner.emit_many("t", [1, 2, 3])
        await eventually(lambda: runner.statistics().pool.busy == 2, what="two busy handlers")
        s = runner.statistics()
        assert (s.state, s.emitted, s.in_flight, s.handled) == ("running", 3, 3, 0)
        assert s.agents[0].in_flight == 3 and s.pool.queued == 1
        assert (
            repr(runner) == "<Runner state=running agents=1 emitted=3 handled=0 in_flight=3 dead_lettered=0 busy=2/4>"
        )
        release.set()
        await runner.drain(timeout_s=TIMEOUT_S)
        s = runner.statistics()
        assert (s.handled, s.in_flight, s.pool.busy, s.pool.done) == (3, 0, 0, 3)
        assert "handled=3" in repr(runner)
    assert runner.statistics().state == "closed"
    assert repr(runner).startswith("<Runner state=closed ")


async def test_config_for_an_unknown_agent_logs_a_warning(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner({"agents": {"sumarize": {"timeout_s": 5}}})

    @runner.agent("docs")
    async def summarize(event: Event, ctx: Context) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="agentflow"):
        async with runner:
            pass
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("[agents.sumarize]" in r.getMessage() and "no agent of that name" in r.getMessage() for r in warnings)


async def test_registration_checks(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("t")
    async def h(event: Event, ctx: Context) -> None:
        return None

    with pytest.raises(ValueError, match="already registered"):
        runner.agent("u", name="h")(h)
    with pytest.raises(TypeError, match="must be an async function"):
        runner.agent("u", name="sync")(lambda e, c: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="concurrency"):
        runner.agent("u", concurrency=0)
    assert runner.agent_topics == {"h": "t"}
