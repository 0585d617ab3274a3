"""Batch agents (``@runner.agent(..., batch_size=N)``): batching, ordering, outcomes, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from agentflow import BatchContext, DeadLetteredError, Event, MemoryBus, Reject, Retry, Skip

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

FAST_RETRY = {"max_attempts": 3, "initial_backoff_s": 0.001, "max_backoff_s": 0.002, "jitter_s": 0.0}


class Order(msgspec.Struct):
    id: int


async def test_events_arrive_in_batches_no_larger_than_batch_size(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    sizes: list[int] = []
    seen: list[int] = []

    @runner.agent("t", batch_size=16)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        assert isinstance(ctx, BatchContext) and ctx.agent == "h" and ctx.attempt == 1
        sizes.append(len(events))
        seen.extend(e.payload for e in events)
        await asyncio.sleep(0)

    async with runner:
        for start in range(0, 1000, 100):
            await runner.emit_many("t", list(range(start, start + 100)))
        await runner.drain()
        stats = runner.statistics().agents[0]
    assert sorted(seen) == list(range(1000))
    assert max(sizes) == 16 and min(sizes) >= 1
    assert len(sizes) < 1000 / 4, "events were not batched"
    assert (stats.handled, stats.dead_lettered, stats.in_flight) == (1000, 0, 0)


async def test_a_lone_event_is_not_held_back_to_fill_a_batch(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    got: asyncio.Queue[list[Any]] = asyncio.Queue()

    @runner.agent("t", batch_size=1000)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        got.put_nowait([e.payload for e in events])

    async with runner:
        await runner.emit("t", "only")
        assert await asyncio.wait_for(got.get(), 5) == ["only"]


@pytest.mark.parametrize(("batch_size", "n_keys"), [(8, 12), (2, 3)])
async def test_same_key_in_order_and_never_in_two_batches_at_once(
    make_runner: RunnerFactory, batch_size: int, n_keys: int
) -> None:
    # (2, 3): many events park behind few keys, more than fit one batch, so held keys carry over batches.
    runner = make_runner({"runner": {"worker_pool_size": 16}})
    rng = random.Random(7)
    running: set[str] = set()
    overlaps: list[str] = []
    per_key: dict[str, list[int]] = defaultdict(list)

    @runner.agent("t", batch_size=batch_size, concurrency=8)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        keys = {e.key for e in events if e.key is not None}
        overlaps.extend(keys & running)
        running.update(keys)
        await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
        running.difference_update(keys)
        for e in events:
            per_key[e.key or ""].append(e.payload)

    keys = [f"k{i}" for i in range(n_keys)]
    expected: dict[str, list[int]] = defaultdict(list)
    async with runner:
        for i in range(2000):
            key = keys[rng.randrange(len(keys))]
            expected[key].append(i)
            await runner.emit("t", i, key=key)
        await runner.drain()
    assert overlaps == []
    assert dict(per_key) == dict(expected)


async def test_results_answer_requests_one_per_event(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("double", batch_size=32)
    async def h(events: list[Event], ctx: BatchContext) -> list[int]:
        return [e.payload * 2 for e in events]

    async with runner:
        results = await asyncio.gather(*(runner.request("double", i) for i in range(100)))
    assert results == [i * 2 for i in range(100)]


async def test_wrong_number_of_results_fails_the_batch_with_a_sentence(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {**FAST_RETRY, "max_attempts": 2}})

    @runner.agent("t", batch_size=4)
    async def h(events: list[Event], ctx: BatchContext) -> list[int]:
        return [1] * (len(events) + 1)  # one too many, however the two requests were batched

    async with runner:
        with pytest.raises(DeadLetteredError):
            await asyncio.gather(runner.request("t", 1), runner.request("t", 2))
        await runner.drain()
        letters = await runner.dlq.list()
    assert {d.reason for d in letters} == {"exhausted"}
    assert all(d.attempts == 2 and d.error_type == "TypeError" for d in letters)
    assert "return None or a list with one result per event" in letters[0].error


async def test_a_failed_batch_is_retried_whole_then_dead_lettered(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": FAST_RETRY})
    calls: list[tuple[int, list[int]]] = []

    @runner.agent("t", batch_size=64)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        calls.append((ctx.attempt, [e.payload for e in events]))
        if any(e.payload == 3 for e in events):
            raise ValueError("payload 3 is poison")

    async with runner:
        await runner.emit_many("t", [1, 2, 3])
        await runner.drain()
        stats = runner.statistics().agents[0]
        letters = await runner.dlq.list()
    assert [a for a, _ in calls] == [1, 2, 3]
    assert all(p == [1, 2, 3] for _, p in calls)
    assert sorted(d.event.payload for d in letters if d.event is not None) == [1, 2, 3]
    assert {(d.reason, d.attempts, d.error_type) for d in letters} == {("exhausted", 3, "ValueError")}
    assert (stats.handled, stats.retries, stats.failed_attempts, stats.dead_lettered) == (0, 6, 9, 3)


async def test_retry_after_then_success(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": FAST_RETRY})
    attempts: list[int] = []

    @runner.agent("t", batch_size=8)
    async def h(events: list[Event], ctx: BatchContext) -> list[str]:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry(after_s=0.01)
        return ["ok"] * len(events)

    async with runner:
        assert await runner.request("t", 1) == "ok"
    assert attempts == [1, 2]


async def test_skip_acknowledges_and_reject_dead_letters_the_whole_batch(make_runner: RunnerFactory) -> None:
    runner = make_runner()

    @runner.agent("skip", batch_size=8)
    async def skipper(events: list[Event], ctx: BatchContext) -> None:
        raise Skip()

    @runner.agent("reject", batch_size=8)
    async def rejecter(events: list[Event], ctx: BatchContext) -> None:
        raise Reject("not for us")

    async with runner:
        await runner.emit_many("skip", [1, 2])
        await runner.emit_many("reject", [1, 2])
        await runner.drain()
        stats = {a.name: a for a in runner.statistics().agents}
        letters = await runner.dlq.list()
    assert (stats["skipper"].skipped, stats["skipper"].dead_lettered) == (2, 0)
    assert stats["rejecter"].dead_lettered == 2
    assert {(d.agent, d.reason, d.error) for d in letters} == {("rejecter", "rejected", "not for us")}


async def test_a_batch_over_its_timeout_is_cancelled_and_dead_lettered(make_runner: RunnerFactory) -> None:
    runner = make_runner({"retry": {"max_attempts": 1}})

    @runner.agent("t", batch_size=8, timeout_s=0.05)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        await asyncio.sleep(10)

    async with runner:
        await runner.emit_many("t", [1, 2])
        await runner.drain()
        letters = await runner.dlq.list()
    assert {(d.reason, d.error_type) for d in letters} == {("timeout", "HandlerTimeoutError")}
    assert "a batch of 2 events" in letters[0].error


async def test_bad_items_are_dead_lettered_one_by_one_and_the_rest_runs(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    seen: list[int] = []

    @runner.agent("orders", batch_size=16, payload=Order)
    async def h(events: list[Event], ctx: BatchContext) -> None:
        seen.extend(e.payload.id for e in events)

    async with runner:
        await runner.emit_encoded("orders", b"\xff not an event")
        await runner.emit("orders", {"id": "not an int"})
        await runner.emit_many("orders", [{"id": 1}, {"id": 2}])
        await runner.drain()
        letters = await runner.dlq.list()
    assert seen == [1, 2]
    assert sorted(d.reason for d in letters) == ["undecodable", "wrong_schema"]


async def test_follow_ups_belong_to_their_parent_workflow(make_runner: RunnerFactory, eventually: Eventually) -> None:
    runner = make_runner()
    children: list[Event] = []

    @runner.agent("in", batch_size=8)
    async def fan(events: list[Event], ctx: BatchContext) -> None:
        for ev in events:
            await ctx.emit("out", ev.payload, parent=ev)
        await ctx.emit_many("out", ["extra"], parent=events[0])
        assert ctx.of(events[0]).event is events[0]

    @runner.agent("out")
    async def sink(event: Event, ctx: Any) -> None:
        children.append(event)

    async with runner:
        ids = await runner.emit_many("in", ["a", "b"])
        await eventually(lambda: len(children) == 3, what="three follow-ups")
    by_payload = {c.payload: c for c in children}
    assert by_payload["a"].correlation_id == ids[0] and by_payload["b"].correlation_id == ids[1]
    assert by_payload["extra"].correlation_id == ids[0]
    assert all(c.depth == 1 for c in children)


async def test_shutdown_gives_unfinished_batches_back(make_runner: RunnerFactory) -> None:
    bus = MemoryBus(partitions=4, buffer_size=10_000)
    await bus.start()
    try:
        runner = make_runner({"runner": {"shutdown_grace_s": 0.05}}, bus=bus)
        handled: list[int] = []

        @runner.agent("t", name="slow", batch_size=10)
        async def slow(events: list[Event], ctx: BatchContext) -> None:
            if events[0].payload >= 50:
                await asyncio.sleep(10)
            handled.extend(e.payload for e in events)

        async with runner:
            for start in range(0, 200, 10):
                await runner.emit_many("t", list(range(start, start + 10)))
            await asyncio.sleep(0.1)
        report = runner.statistics().shutdown
        assert report is not None
        pending = bus.statistics().buffered
        assert len(handled) == len(set(handled))
        assert len(handled) + pending == 200, (len(handled), pending)
        assert pending > 0
    finally:
        await bus.aclose()


def test_batch_size_must_be_positive(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        runner.agent("t", batch_size=0)


async def test_batch_agents_reach_the_llm_through_ctx(make_runner: RunnerFactory) -> None:
    from agentflow.testing import LatencyModel, MockLLM

    async with MockLLM(latency=LatencyModel(seed=1)) as server:
        # No cache: a batch's "one workflow" input must reach the server every time, however the batches overlap.
        llm = {"base_url": server.url, "default_model": "m", "cache": {"enabled": False}}
        runner = make_runner({"llm": {"mock": llm}})

        @runner.agent("docs", batch_size=16)
        async def embed(events: list[Event], ctx: BatchContext) -> list[int]:
            vectors = await ctx.llm.embed([str(e.payload) for e in events])
            await ctx.of(events[0]).llm.embed(["one workflow"])
            return [len(v) for v in vectors.vectors]

        async with runner:
            results = await asyncio.gather(*(runner.request("docs", i) for i in range(5)))
            assert runner.llm is not None
            [row] = runner.llm.costs.rows()
        assert all(r > 0 for r in results)
        assert row.agent == "embed" and row.calls >= 2 and row.calls % 2 == 0
        # Each batch made two calls: its events, then one input for its first event's workflow. The micro-batcher
        # may have coalesced concurrent calls into fewer HTTP requests, so count the server's inputs instead.
        assert server.stats().items == 5 + row.calls // 2
