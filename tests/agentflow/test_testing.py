"""agentflow.testing: the fakes users test their own agents with."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from agentflow import Context, Event, Retry, StateError
from agentflow.state import StateHandle, StateStore
from agentflow.testing import EventRecorder, RecordingContext, make_event, run_handler

if TYPE_CHECKING:
    from conftest import RunnerFactory


def test_make_event_looks_like_an_emitted_event() -> None:
    headers = {"trace": "abc"}
    before = time.time()
    event = make_event("orders", {"id": 7}, key="customer-1", headers=headers, attempt=2, depth=3)
    assert (event.topic, event.payload, event.key, event.attempt, event.depth) == (
        "orders",
        {"id": 7},
        "customer-1",
        2,
        3,
    )
    assert event.headers == headers and event.headers is not headers
    assert before <= event.created_at <= time.time()
    assert event.correlation_id == event.id  # a new workflow starts at this event
    assert event.reply_to is None


def test_make_event_defaults_and_fresh_ids() -> None:
    a, b = make_event(), make_event(correlation_id="wf-1")
    assert (a.topic, a.payload, a.key, a.headers, a.attempt, a.depth) == ("test", None, None, None, 1, 0)
    assert a.id and b.id and a.id != b.id
    assert b.correlation_id == "wf-1"


async def test_run_handler_captures_the_return_value_and_every_emit() -> None:
    seen: list[tuple[str, int, str | None]] = []
    ids: list[str | None] = []

    async def place(event: Event, ctx: Context) -> str:
        seen.append((ctx.agent, ctx.attempt, ctx.correlation_id))
        ids.append(await ctx.emit("invoices", {"order": event.payload["id"]}, key=event.key, headers={"h": "1"}))
        ids.extend(await ctx.emit_many("audit", ["a", "b"]))
        return "placed"

    parent = make_event("orders", {"id": 7}, key="customer-1", attempt=2, depth=4, correlation_id="wf-1")
    result = await run_handler(place, parent, agent="place")

    assert result.error is None
    assert result.value == "placed"
    assert result.event is parent
    assert seen == [("place", 2, "wf-1")]
    assert result.emitted == [("invoices", {"order": 7}, "customer-1"), ("audit", "a", None), ("audit", "b", None)]
    assert result.emitted[0].topic == "invoices"
    assert [e.id for e in result.follow_ups] == ids
    assert [e.topic for e in result.follow_ups] == ["invoices", "audit", "audit"]
    assert {(e.correlation_id, e.depth, e.attempt) for e in result.follow_ups} == {("wf-1", 5, 1)}
    assert result.follow_ups[0].headers == {"h": "1"}


async def test_run_handler_wraps_a_payload_in_a_new_event() -> None:
    async def echo(event: Event, ctx: Context) -> Any:
        return event.payload

    result = await run_handler(echo, {"text": "hi"}, topic="texts")
    assert result.value == {"text": "hi"}
    assert result.event.topic == "texts"
    assert result.event.attempt == 1
    assert result.emitted == [] and result.follow_ups == []


async def test_run_handler_returns_errors_and_outcomes_instead_of_raising() -> None:
    async def broken(event: Event, ctx: Context) -> str:
        await ctx.emit("partial", 1)
        raise ValueError("the model said no")

    result = await run_handler(broken, None)
    assert isinstance(result.error, ValueError) and str(result.error) == "the model said no"
    assert result.value is None
    assert result.emitted == [("partial", 1, None)]  # what it emitted before failing still counts

    async def later(event: Event, ctx: Context) -> None:
        raise Retry(after_s=2.0)

    retry = await run_handler(later, None)
    assert isinstance(retry.error, Retry)


async def test_run_handler_lets_cancellation_through() -> None:
    async def cancelled(event: Event, ctx: Context) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run_handler(cancelled, None)


def test_recording_context_repr_shows_what_it_recorded() -> None:
    ctx = RecordingContext(make_event(attempt=3), agent="a")
    assert repr(ctx).startswith("<RecordingContext agent='a' event=")
    assert repr(ctx).endswith("attempt=3 emitted=0>")


async def test_event_recorder_sees_follow_ups_on_a_real_runner(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    recorder = EventRecorder()
    other: list[Event] = []

    @runner.agent("in")
    async def forward(event: Event, ctx: Context) -> None:
        await ctx.emit("out", {"n": event.payload["n"] + 1}, key="k")

    @runner.agent("out")
    async def also_on_out(event: Event, ctx: Context) -> None:
        other.append(event)

    runner.agent("out", name="recorder")(recorder.handler)

    async with runner:
        eid = await runner.emit("in", {"n": 1})
        [event] = await recorder.wait_for(1)
        await runner.drain(timeout_s=5.0)

    assert (event.topic, event.payload, event.key) == ("out", {"n": 2}, "k")
    assert event.correlation_id == eid
    assert event.depth == 1
    assert recorder.payloads == [{"n": 2}]
    assert len(recorder) == 1
    assert [e.id for e in other] == [event.id]  # the recorder is its own consumer group: it takes nothing
    assert repr(recorder) == "<EventRecorder events=1 waiting=0>"


async def test_wait_for_wakes_each_waiter_at_its_count() -> None:
    recorder = EventRecorder()
    first = asyncio.ensure_future(recorder.wait_for(1))
    third = asyncio.ensure_future(recorder.wait_for(3))
    await asyncio.sleep(0)
    assert repr(recorder) == "<EventRecorder events=0 waiting=2>"

    for n in range(3):
        await recorder.handler(make_event(payload=n), None)
        await asyncio.sleep(0)
        if n == 0:
            assert first.done() and not third.done()

    assert [e.payload for e in await first] == [0]
    assert [e.payload for e in await third] == [0, 1, 2]
    assert [e.payload for e in await recorder.wait_for(2)] == [0, 1]  # enough already: no wait
    assert repr(recorder) == "<EventRecorder events=3 waiting=0>"


async def test_wait_for_times_out_with_a_sentence() -> None:
    recorder = EventRecorder()
    await recorder.handler(make_event(), None)
    with pytest.raises(TimeoutError) as info:
        await recorder.wait_for(2, timeout_s=0.05)
    assert str(info.value) == (
        "EventRecorder received 1 of the 2 events expected within 0.05 s; check that an agent emits to the "
        "recorded topic, or raise timeout_s."
    )
    assert repr(recorder) == "<EventRecorder events=1 waiting=0>"


async def test_run_handler_gives_the_handler_state_and_commits_its_writes() -> None:
    async def count(event: Event, ctx: Any) -> int:
        n: int = await ctx.state.update(lambda n: n + 1, default=0)
        await ctx.memory.append({"role": "user", "content": event.payload})
        return n

    async with StateStore() as store:
        first = await run_handler(count, make_event("clicks", "hi", key="u1"), agent="counter", state=store)
        second = await run_handler(count, make_event("clicks", "again", key="u1"), agent="counter", state=store)
        other = await run_handler(count, make_event("clicks", "hi", key="u2"), agent="counter", state=store)
        assert (first.value, second.value, other.value) == (1, 2, 1)
        assert await StateHandle(store, "counter", "u1", None).get() == 2
        history = await RecordingContext(make_event("clicks", key="u1"), agent="counter", state=store).memory.window()
        assert [m["content"] for m in history] == ["hi", "again"]


async def test_state_without_a_store_is_a_sentence_naming_the_fix() -> None:
    async def reads(event: Event, ctx: Any) -> Any:
        return await ctx.state.get()

    result = await run_handler(reads, make_event("clicks", key="u1"))
    assert isinstance(result.error, StateError) and "pass state=store" in str(result.error)
