"""Circuit breaker: windows, thresholds, open-wait backoff, half-open probes and their permits, manual states,
metrics and logs, the registry, and a breaker around an agent on the memory bus. Time is a fake clock."""

from __future__ import annotations

import asyncio
import logging
import re

import msgspec
import pytest
from conftest import REPO_ROOT
from prometheus_client.parser import text_string_to_metric_families

from agentflow import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Context,
    Event,
    Metrics,
    MicroBatcher,
    RateLimiter,
    RetryBudget,
    Runner,
    config_from_dict,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


class Boom(Exception):
    pass


def ok(b: CircuitBreaker, n: int = 1, clock: Clock | None = None, took: float = 0.0) -> None:
    for _ in range(n):
        p = b.acquire()
        if clock is not None:
            clock.advance(took)
        p.success()


def fail(b: CircuitBreaker, n: int = 1) -> None:
    for _ in range(n):
        b.acquire().failure(Boom("x"))


def make(clock: Clock, **cfg: object) -> CircuitBreaker:
    return CircuitBreaker("t", msgspec.convert(cfg, BreakerConfig), clock=clock)


def test_count_window_waits_for_minimum_calls_then_opens_at_the_threshold() -> None:
    clock = Clock()
    b = make(clock, window_size=10, minimum_calls=4, failure_rate_threshold=0.5)
    fail(b, 3)
    assert b.state is BreakerState.CLOSED  # 3 of 3 failed, but fewer than minimum_calls
    ok(b)  # the fourth call is judged too: 3 of 4 failed, 0.75 >= 0.5
    assert b.state is BreakerState.OPEN


def test_count_window_opens_exactly_when_the_rate_reaches_the_threshold() -> None:
    clock = Clock()
    b = make(clock, window_size=10, minimum_calls=10, failure_rate_threshold=0.5)
    ok(b, 6)
    fail(b, 4)
    assert b.state is BreakerState.CLOSED and b.statistics().failure_rate == 0.4
    fail(b)  # the window slides: the oldest success leaves, 5 of 10 failed
    s = b.statistics()
    assert (s.state, s.window_calls, s.window_failures) == ("open", 10, 5)


def test_minimum_calls_larger_than_the_count_window_is_capped_at_its_size() -> None:
    b = make(Clock(), window_size=4, minimum_calls=50)
    fail(b, 4)
    assert b.state is BreakerState.OPEN


def test_time_window_forgets_failures_older_than_window_size_seconds() -> None:
    clock = Clock()
    b = make(clock, window_type="time", window_size=10, minimum_calls=4, failure_rate_threshold=0.5)
    fail(b, 3)
    clock.advance(11)  # those failures leave the window
    ok(b, 2)
    fail(b, 1)
    s = b.statistics()
    assert (s.state, s.window_calls, s.window_failures) == ("closed", 3, 1)
    fail(b, 1)  # 2 of 4 in the last 10 s
    assert b.state is BreakerState.OPEN


def test_slow_calls_open_the_breaker_even_when_they_succeed() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=4, slow_call_duration_s=2.0, slow_call_rate_threshold=0.5)
    ok(b, 2, clock, took=0.1)
    ok(b, 1, clock, took=3.0)
    assert b.state is BreakerState.CLOSED
    ok(b, 1, clock, took=3.0)
    s = b.statistics()
    assert (s.state, s.window_slow, s.failures, s.slow) == ("open", 2, 0, 2)


def test_open_refuses_with_retry_after_then_half_opens_after_the_wait() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=2, open_wait_s=10.0)
    fail(b, 2)
    clock.advance(4)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    err = info.value
    assert (err.name, err.state, err.retry_after_s, err.after_s) == ("t", "open", 6.0, 6.0)
    assert "retry in 6 s" in str(err)
    clock.advance(6)
    assert b.state is BreakerState.HALF_OPEN


def test_successful_probes_close_and_clear_the_backoff() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=2, open_wait_s=10.0, half_open_max_calls=3)
    fail(b, 2)
    clock.advance(10)
    probes = [b.acquire() for _ in range(3)]
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()  # a fourth call while three probes run
    assert info.value.state == "half_open" and info.value.retry_after_s is None
    for p in probes:
        p.success()
    s = b.statistics()
    assert (s.state, s.open_count, s.window_calls) == ("closed", 0, 0)


def test_failed_probes_reopen_with_an_exponentially_longer_wait_capped_at_max() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=2, open_wait_s=10.0, open_wait_multiplier=3.0, max_open_wait_s=50.0)
    fail(b, 2)
    waits = []
    for _ in range(4):
        waits.append(b.retry_after_s())
        clock.advance(waits[-1] or 0.0)
        assert b.state is BreakerState.HALF_OPEN
        fail(b, 3)  # 3 of half_open_max_calls=5 failed: over 0.5 whatever the other two do, reopen now
        assert b.state is BreakerState.OPEN
    assert waits == [10.0, 30.0, 50.0, 50.0]
    clock.advance(50)
    ok(b, 5)
    assert b.state is BreakerState.CLOSED
    fail(b, 2)
    assert b.retry_after_s() == 10.0  # closing reset the backoff


async def test_a_cancelled_half_open_call_gives_its_permit_back() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=1, open_wait_s=1.0, half_open_max_calls=1)
    fail(b, 1)
    clock.advance(1)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b:
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(probe())
    await entered.wait()
    assert b.statistics().probes_in_flight == 1
    with pytest.raises(CircuitOpenError):
        b.acquire()  # the only permit is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = b.statistics()
    assert (s.state, s.probes_in_flight, s.cancelled, s.failures) == ("half_open", 0, 1, 1)
    await b.call(lambda: asyncio.sleep(0))  # the permit is free again: the probe goes through and closes
    assert b.state is BreakerState.CLOSED


async def test_a_probe_cancelled_by_call_also_releases() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=1, open_wait_s=1.0, half_open_max_calls=1)
    fail(b, 1)
    clock.advance(1)
    task = asyncio.create_task(b.call(lambda: asyncio.sleep(3600)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.statistics().probes_in_flight == 0
    b.acquire().success()
    assert b.state is BreakerState.CLOSED


def test_a_probe_from_before_a_transition_is_not_counted_in_the_new_state() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=2, open_wait_s=1.0)
    early = b.acquire()  # taken while closed
    fail(b, 2)
    clock.advance(1)
    assert b.state is BreakerState.HALF_OPEN
    early.failure(Boom("late"))
    assert b.statistics().probes_in_flight == 0 and b.state is BreakerState.HALF_OPEN


def test_forced_open_refuses_until_reset_and_disabled_lets_everything_through() -> None:
    clock = Clock()
    b = make(clock, minimum_calls=1)
    b.force_open()
    clock.advance(1e6)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert (info.value.state, info.value.retry_after_s) == ("forced_open", None)
    b.open_for(5)  # manual states win over open_for
    assert b.state is BreakerState.FORCED_OPEN
    b.disable()
    fail(b, 50)
    s = b.statistics()
    assert (s.state, s.window_calls) == ("disabled", 0)
    b.reset()
    assert b.state is BreakerState.CLOSED
    fail(b, 1)
    assert b.state is BreakerState.OPEN


def test_open_for_opens_for_that_long_and_never_shortens_a_longer_wait() -> None:
    clock = Clock()
    b = make(clock, open_wait_s=30.0, minimum_calls=1)
    b.open_for(2.5)  # a 429 with Retry-After: 2.5
    assert b.state is BreakerState.OPEN and b.retry_after_s() == 2.5
    b.open_for(1.0)
    assert b.retry_after_s() == 2.5
    b.open_for(4.0)
    assert b.retry_after_s() == 4.0
    clock.advance(4)
    assert b.state is BreakerState.HALF_OPEN


def test_is_failure_decides_what_counts_and_is_ignored_counts_nothing() -> None:
    clock = Clock()
    b = CircuitBreaker(
        "t",
        BreakerConfig(minimum_calls=2),
        clock=clock,
        is_failure=lambda e: not isinstance(e, ValueError),  # a bad request: the upstream is fine
        is_ignored=lambda e: isinstance(e, KeyError),
    )
    for _ in range(10):
        b.acquire().failure(ValueError("400"))
        b.acquire().failure(KeyError("ignored"))
    s = b.statistics()
    assert (s.state, s.window_calls, s.successes, s.ignored, s.failures) == ("closed", 10, 10, 10, 0)
    fail(b, 10)
    assert b.state is BreakerState.OPEN


def test_permit_outcome_is_recorded_once() -> None:
    b = make(Clock(), minimum_calls=2)
    p = b.acquire()
    p.failure(Boom())
    p.failure(Boom())
    p.cancel()
    s = b.statistics()
    assert (s.failures, s.cancelled, s.window_calls) == (1, 0, 1)


async def test_context_manager_and_call_record_outcomes_per_task() -> None:
    b = make(Clock(), minimum_calls=100)

    async def use(fail_it: bool) -> None:
        async with b:
            await asyncio.sleep(0)
            if fail_it:
                raise Boom()

    results = await asyncio.gather(*(use(i % 2 == 0) for i in range(10)), return_exceptions=True)
    assert sum(isinstance(r, Boom) for r in results) == 5
    assert await b.call(lambda: asyncio.sleep(0, result=7)) == 7
    s = b.statistics()
    assert (s.successes, s.failures, s.window_calls) == (6, 5, 11)
    assert "state=closed" in repr(b) and "window=5/11" in repr(b)


def test_config_is_validated_with_a_sentence() -> None:
    with pytest.raises(ValueError, match="failure_rate_threshold must be a fraction"):
        BreakerConfig(failure_rate_threshold=1.5)
    with pytest.raises(ValueError, match="at most max_open_wait_s"):
        BreakerConfig(open_wait_s=10, max_open_wait_s=5)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"window_size": 0}, BreakerConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"window_sise": 10}, BreakerConfig)


def test_transitions_are_logged_once_and_exported_as_metrics(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    metrics = Metrics()
    seen: list[tuple[str, str, str]] = []
    b = CircuitBreaker(
        "openai/gpt-4o",
        BreakerConfig(minimum_calls=2, open_wait_s=1.0, half_open_max_calls=1),
        clock=clock,
        metrics=metrics,
        on_transition=lambda n, a, z: seen.append((n, a.value, z.value)),
    )
    caplog.set_level(logging.INFO, logger="agentflow.resilience.breaker")
    fail(b, 2)
    with pytest.raises(CircuitOpenError):
        b.acquire()
    clock.advance(1)
    ok(b, 1)
    assert seen == [
        ("openai/gpt-4o", "closed", "open"),
        ("openai/gpt-4o", "open", "half_open"),
        ("openai/gpt-4o", "half_open", "closed"),
    ]
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(records) == 3
    assert records[0][0] == "WARNING"
    assert "opened (closed -> open) for 1 s: 2 of the last 2 calls failed" in records[0][1]
    assert [lvl for lvl, _ in records[1:]] == ["INFO", "INFO"]
    text = metrics.render().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    state = {k[1][1][1]: v for k, v in samples.items() if k[0] == "agentflow_breaker_state"}
    assert state == {"closed": 1.0, "open": 0.0, "half_open": 0.0, "forced_open": 0.0, "disabled": 0.0}
    key = ("agentflow_breaker_transitions_total", (("breaker", "openai/gpt-4o"), ("from", "closed"), ("to", "open")))
    assert samples[key] == 1.0
    rejected = ("agentflow_breaker_calls_total", (("breaker", "openai/gpt-4o"), ("outcome", "rejected")))
    assert samples[rejected] == 1.0


def test_registry_keys_breakers_and_bounds_their_number() -> None:
    clock = Clock()
    reg = BreakerRegistry(BreakerConfig(minimum_calls=1), clock=clock, max_breakers=2)
    a = reg.get("openai", "gpt-4o")
    assert reg.get("openai", "gpt-4o") is a and a.name == "openai/gpt-4o"
    fail(a, 1)
    reg.get("openai", "gpt-4o-mini")
    stats = reg.statistics()
    assert {k: v.state for k, v in stats.items()} == {"openai/gpt-4o": "open", "openai/gpt-4o-mini": "closed"}
    assert repr(reg) == "<BreakerRegistry breakers=2 closed=1 open=1>"
    with pytest.raises(ValueError, match="max_breakers=2"):
        reg.get("other", "model")


async def test_agent_breaker_retries_events_while_open_and_loses_none() -> None:
    # The upstream fails the first 4 calls; the breaker opens after 2 failures, so later attempts fail fast
    # with CircuitOpenError and wait its retry_after_s (50 ms) instead of the policy's backoff.
    config = config_from_dict({"retry": {"max_attempts": 50, "initial_backoff_s": 0.001, "jitter_s": 0.0}})
    runner = Runner(config)
    breaker = CircuitBreaker("upstream", BreakerConfig(minimum_calls=2, open_wait_s=0.05, half_open_max_calls=1))
    calls = 0

    @runner.agent("jobs", concurrency=4, breaker=breaker)
    async def work(event: Event, ctx: Context) -> int:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise Boom("upstream down")
        return int(event.payload)

    async with runner:
        results = await asyncio.gather(*(runner.request("jobs", i, timeout_s=20) for i in range(20)))
        stats = runner.statistics()
    assert results == list(range(20))
    b = breaker.statistics()
    assert b.rejected > 0  # attempts refused while open, and retried
    assert b.failures == 4 and b.successes == 20
    assert stats.handled == 20 and stats.dead_lettered == 0
    assert stats.agents[0].retries == b.rejected + b.failures
    assert calls == 24  # refused attempts never reached the handler


async def test_agent_breaker_from_config_is_named_after_the_agent_and_counts_timeouts() -> None:
    config = config_from_dict({"retry": {"max_attempts": 1}})
    runner = Runner(config)

    @runner.agent("slow", timeout_s=0.01, breaker=BreakerConfig(minimum_calls=1))
    async def sleepy(event: Event, ctx: Context) -> None:
        await asyncio.sleep(10)

    async with runner:
        await runner.emit("slow", 1)
        await runner.drain(timeout_s=5)
        text = runner.metrics.render().decode()
    assert 'agentflow_breaker_state{breaker="sleepy",state="open"} 1.0' in text
    assert 'agentflow_breaker_calls_total{breaker="sleepy",outcome="failure"} 1.0' in text


@pytest.fixture
def metrics_doc() -> str:
    return (REPO_ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")


async def test_every_resilience_family_is_rendered_and_documented_with_its_labels(metrics_doc: str) -> None:
    # tests/test_metrics_docs.py checks the families a plain runner renders; these appear only once a breaker,
    # limiter, budget or batcher exists, so this renders one of each and checks the same table rows.
    doc = metrics_doc
    section = doc.split("\n## Every metric\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        n: set(re.findall(r"`(\w+)`", labels))
        for n, labels in re.findall(r"^\| `(agentflow_\w+)` \| ([^|]*) \|", section, re.M)
    }
    metrics = Metrics()
    b = CircuitBreaker("b", BreakerConfig(minimum_calls=1), metrics=metrics)
    fail(b, 1)
    lim = RateLimiter(rpm=10, name="l", metrics=metrics)
    await lim.acquire()
    RetryBudget(name="r", metrics=metrics).try_spend()

    async def echo(items: list[int]) -> list[int]:
        return items

    async with MicroBatcher(echo, name="m", metrics=metrics) as mb:
        await mb.submit(1)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    ours = {f.name: f for f in families if f.name.split("_")[1] in ("breaker", "rate", "retry", "batch")}
    assert len(ours) == 12
    for name, f in ours.items():
        documented = name + "_total" if f.type == "counter" else name
        labels = {k for s in f.samples for k in s.labels} - {"le"}
        assert rows.get(documented) == labels, documented
    for outcome in ("success", "failure", "ignored", "rejected", "cancelled"):
        assert f"`{outcome}`" in section
