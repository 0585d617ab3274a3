"""Retries (backoff, ``Retry``/``Skip``/``Reject``, per-agent overrides) and the dead-letter queue."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import pytest

from agentflow import (
    Context,
    DeadLetteredError,
    Event,
    Reject,
    Retry,
    RetryConfig,
    RetryOverride,
    Skip,
)

if TYPE_CHECKING:
    from conftest import Eventually, RunnerFactory

TIMEOUT_S = 5.0
NO_WAIT = {"initial_backoff_s": 0.0, "jitter_s": 0.0}


def retry(**kw: Any) -> dict[str, Any]:
    return {"retry": {**NO_WAIT, **kw}}


async def test_failing_handler_is_retried_then_dead_lettered(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=3))
    attempts: list[int] = []

    @runner.agent("t")
    async def flaky(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        raise ValueError(f"boom on attempt {ctx.attempt}")

    async with runner:
        root = await runner.emit("t", {"n": 1}, key="k", headers={"h": "v"})
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("t", {"n": 2}, timeout_s=TIMEOUT_S)
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = await runner.dlq.list()
        s = runner.statistics()
    assert info.value.reason == "exhausted"
    assert "flaky" in str(info.value) and "boom on attempt 3" in str(info.value)
    assert sorted(attempts) == [1, 1, 2, 2, 3, 3]
    first = next(d for d in letters if d.event_id == root)
    assert first.id.startswith("dl-") and len({d.id for d in letters}) == 2, "each dead letter has its own id"
    assert (first.reason, first.error_type, first.error, first.attempts) == (
        "exhausted",
        "ValueError",
        "boom on attempt 3",
        3,
    )
    assert (first.topic, first.agent, first.raw) == ("t", "flaky", None)
    assert first.event is not None
    assert (first.event.id, first.event.payload, first.event.key, first.event.headers) == (
        root,
        {"n": 1},
        "k",
        {"h": "v"},
    )
    a = s.agents[0]
    assert (a.handled, a.failed_attempts, a.retries, a.dead_lettered) == (0, 6, 4, 2)
    assert s.bus.unacked == 0, "a dead-lettered event is acknowledged"


async def test_backoff_is_exponential_and_capped(make_runner: RunnerFactory) -> None:
    initial, multiplier, cap, jitter = 0.02, 4.0, 0.05, 0.01
    runner = make_runner(
        {
            "retry": {
                "max_attempts": 5,
                "initial_backoff_s": initial,
                "multiplier": multiplier,
                "max_backoff_s": cap,
                "jitter_s": jitter,
            }
        }
    )
    starts: list[float] = []

    @runner.agent("t")
    async def failing(event: Event, ctx: Context) -> None:
        starts.append(time.perf_counter())
        raise RuntimeError("again")

    async with runner:
        with pytest.raises(DeadLetteredError):
            await runner.request("t", 1, timeout_s=TIMEOUT_S)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(gaps) == 4
    slack = 0.002  # timer granularity: a sleep may end a hair early
    # Lower bounds: initial, then initial*multiplier capped — growth is visible in gap 2 alone.
    for n, gap in enumerate(gaps, start=1):
        assert gap >= min(initial * multiplier ** (n - 1), cap) - slack, (n, gaps)
    # Upper bounds: never above the cap plus jitter (generous scheduling slack). Uncapped, gaps 3 and 4 would
    # be 0.32 s and 1.28 s.
    for gap in gaps:
        assert gap <= cap + jitter + 0.15, gaps


async def test_retry_after_s_is_honoured_and_counts_as_an_attempt(make_runner: RunnerFactory) -> None:
    # A global backoff of 5 s would blow the 2 s budget below: only after_s can explain a quick retry.
    runner = make_runner({"retry": {"max_attempts": 3, "initial_backoff_s": 5.0, "jitter_s": 0.0}})
    starts: list[float] = []

    @runner.agent("t")
    async def later(event: Event, ctx: Context) -> str:
        starts.append(time.perf_counter())
        if ctx.attempt == 1:
            raise Retry(after_s=0.1)
        return f"ok on {ctx.attempt}"

    async with runner:
        assert await runner.request("t", 1, timeout_s=2.0) == "ok on 2"
        s = runner.statistics().agents[0]
    assert 0.1 - 0.002 <= starts[1] - starts[0] < 1.0
    assert (s.handled, s.retries, s.failed_attempts) == (1, 1, 1)


async def test_retry_requests_still_run_out_of_attempts(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=2))

    @runner.agent("t")
    async def never_ready(event: Event, ctx: Context) -> None:
        raise Retry(after_s=0.0, reason="not ready yet")

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("t", 1, timeout_s=TIMEOUT_S)
        [letter] = await runner.dlq.list()
    assert info.value.reason == "exhausted"
    assert (letter.attempts, letter.error_type, letter.error) == (2, "Retry", "not ready yet")


async def test_skip_acknowledges_without_handling(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=3))
    calls = 0

    @runner.agent("t")
    async def skipper(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise Skip

    async with runner:
        assert await runner.request("t", 1, timeout_s=TIMEOUT_S) is None
        await runner.emit("t", 2)
        await runner.drain(timeout_s=TIMEOUT_S)
        s = runner.statistics()
        letters = await runner.dlq.list()
    assert calls == 2
    assert (s.skipped, s.handled, s.dead_lettered, s.agents[0].retries, s.agents[0].failed_attempts) == (2, 0, 0, 0, 0)
    assert s.bus.unacked == 0 and s.bus.buffered == 0
    assert letters == []


async def test_reject_dead_letters_at_once(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=5))
    calls = 0

    @runner.agent("t")
    async def picky(event: Event, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise Reject("missing customer id")

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("t", {"x": 1}, timeout_s=TIMEOUT_S)
        [letter] = await runner.dlq.list()
        s = runner.statistics().agents[0]
    assert calls == 1
    assert info.value.reason == "rejected"
    assert (letter.reason, letter.attempts, letter.error_type, letter.error) == (
        "rejected",
        1,
        "Reject",
        "missing customer id",
    )
    assert (s.retries, s.dead_lettered) == (0, 1)


async def test_per_agent_retry_overrides(make_runner: RunnerFactory) -> None:
    runner = make_runner(
        {
            "retry": {**NO_WAIT, "max_attempts": 4},
            "agents": {
                "from_config": {"retry": {"max_attempts": 1}},
                "both": {"retry": {"max_attempts": 3}},  # the config wins over the decorator
            },
        }
    )
    calls: dict[str, int] = {}

    def register(name: str, retry: RetryOverride | RetryConfig | None) -> None:
        @runner.agent(name, name=name, retry=retry)
        async def handler(event: Event, ctx: Context) -> None:
            calls[name] = ctx.attempt
            raise OSError("down")

    decorated: dict[str, RetryOverride | RetryConfig | None] = {
        "global": None,
        "from_config": None,
        "from_decorator": RetryOverride(max_attempts=2),
        "full_config": RetryConfig(max_attempts=5, initial_backoff_s=0.0, jitter_s=0.0),
        "both": RetryOverride(max_attempts=2),
    }
    for name, override in decorated.items():
        register(name, override)
    async with runner:
        for name in decorated:
            await runner.emit(name, 1)
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = {d.agent: d for d in await runner.dlq.list()}
    expected = {"global": 4, "from_config": 1, "from_decorator": 2, "full_config": 5, "both": 3}
    assert calls == expected
    assert {name: d.attempts for name, d in letters.items()} == expected


async def test_dlq_list_filters(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=1))

    @runner.agent("a", name="first")
    async def first(event: Event, ctx: Context) -> None:
        raise Reject(f"first {event.payload}")

    @runner.agent("a", name="second")
    async def second(event: Event, ctx: Context) -> None:
        if event.payload % 2:
            raise ValueError("odd")

    @runner.agent("b", name="third")
    async def third(event: Event, ctx: Context) -> None:
        raise Reject("third")

    async with runner:
        await runner.emit_many("a", [1, 2, 3], key="k")
        await runner.emit("b", 0)
        await runner.drain(timeout_s=TIMEOUT_S)
        everything = await runner.dlq.list()
        of_a = await runner.dlq.list(topic="a")
        of_second = await runner.dlq.list(agent="second")
        of_first_a = await runner.dlq.list(topic="a", agent="first", limit=2)
        none = await runner.dlq.list(topic="b", agent="first")
    assert len(everything) == 6
    assert {d.agent for d in of_a} == {"first", "second"} and len(of_a) == 5
    assert [(d.event.payload if d.event else None) for d in of_second] == [1, 3]
    assert [d.error for d in of_first_a] == ["first 1", "first 2"]
    assert none == []


async def test_replay_redelivers_only_to_the_failing_agent(make_runner: RunnerFactory) -> None:
    runner = make_runner(retry(max_attempts=2))
    broken = True
    good: list[int] = []
    flaky_ok: list[tuple[int, int]] = []

    @runner.agent("t")
    async def steady(event: Event, ctx: Context) -> None:
        good.append(event.payload)

    @runner.agent("t")
    async def flaky(event: Event, ctx: Context) -> None:
        if broken:
            raise ConnectionError("upstream down")
        flaky_ok.append((event.payload, ctx.attempt))

    async with runner:
        await runner.emit_many("t", [1, 2, 3], key="k")
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = await runner.dlq.list(agent="flaky")
        assert [d.event.payload for d in letters if d.event] == [1, 2, 3]
        broken = False
        assert await runner.dlq.replay([letters[0].id]) == 1
        await runner.drain(timeout_s=TIMEOUT_S)
        assert [d.id for d in await runner.dlq.list()] == [letters[1].id, letters[2].id]
        assert await runner.dlq.replay(agent="flaky") == 2
        await runner.drain(timeout_s=TIMEOUT_S)
        assert await runner.dlq.list() == []
        assert await runner.dlq.replay() == 0
        s = {a.name: a for a in runner.statistics().agents}
    assert sorted(good) == [1, 2, 3], "the agent that succeeded must not see the events again"
    assert flaky_ok == [(1, 1), (2, 1), (3, 1)], "a replay starts again at attempt 1"
    assert (s["steady"].handled, s["flaky"].handled, s["flaky"].dead_lettered) == (3, 3, 3)


async def test_dlq_is_bounded_and_counts_evictions(make_runner: RunnerFactory) -> None:
    runner = make_runner({"dlq": {"max_entries": 3}})

    @runner.agent("t")
    async def reject(event: Event, ctx: Context) -> None:
        raise Reject(f"no {event.payload}")

    async with runner:
        for i in range(5):
            await runner.emit("t", i, key="k")
        await runner.drain(timeout_s=TIMEOUT_S)
        letters = await runner.dlq.list()
        s = runner.statistics()
    assert [d.error for d in letters] == ["no 2", "no 3", "no 4"]
    assert (s.bus.dead_letters, s.bus.dead_letters_evicted, s.dead_lettered) == (3, 2, 5)


async def test_timeouts_dead_letter_with_reason_timeout_after_retries(
    make_runner: RunnerFactory, eventually: Eventually
) -> None:
    runner = make_runner(retry(max_attempts=3))
    attempts: list[int] = []

    @runner.agent("t", timeout_s=0.03)
    async def slow(event: Event, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        await asyncio.sleep(10)

    async with runner:
        with pytest.raises(DeadLetteredError) as info:
            await runner.request("t", 1, timeout_s=TIMEOUT_S)
        [letter] = await runner.dlq.list()
        s = runner.statistics()
    assert info.value.reason == "timeout"
    assert attempts == [1, 2, 3]
    assert (letter.reason, letter.attempts, letter.error_type) == ("timeout", 3, "HandlerTimeoutError")
    assert (s.agents[0].failed_attempts, s.pool.timeouts) == (3, 3)


async def test_dlq_disabled_drops_dead_letters_but_still_answers(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner({"dlq": {"enabled": False}})

    @runner.agent("t")
    async def reject(event: Event, ctx: Context) -> None:
        raise Reject("nope")

    async with runner:
        with pytest.raises(DeadLetteredError):
            await runner.request("t", 1, timeout_s=TIMEOUT_S)
        assert await runner.dlq.list() == []
        assert runner.statistics().dead_lettered == 1
    assert any("dlq.enabled is false" in r.getMessage() for r in caplog.records)
