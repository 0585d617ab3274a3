"""[monitoring.alerts]: alerts fire and clear with hysteresis, one log line per transition, a metric and /alerts;
each alert from the situation that must trigger it; event-loop lag is measured always."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentflow import CircuitBreaker, Context, Event, RateLimiter, Reject, Runner
from agentflow.insight.alerts import AlertMonitor, _Figure
from agentflow.testing import MockLLM

if TYPE_CHECKING:
    from conftest import RunnerFactory

#: Checks only when a test calls check(): the monitor's own loop sleeps an hour.
MANUAL = {"interval_s": 3600.0, "window_s": 7200.0}  # a ring of 3 snapshots: each window spans two checks


def firing(runner: Runner) -> dict[tuple[str, str], float]:
    text = runner.metrics.render().decode()
    return {
        (s.labels["alert"], s.labels["subject"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "agentflow_alert_firing"
        for s in f.samples
    }


def monitor(runner: Runner) -> AlertMonitor:
    assert runner.insight.alerts is not None
    return runner.insight.alerts


def test_hysteresis_fires_above_the_threshold_and_clears_only_after_staying_below_the_clear_level(
    make_runner: RunnerFactory,
) -> None:
    runner = make_runner({"monitoring": {"alerts": {"rss_mb": 1.0, "clear_ratio": 0.8, "clear_after": 2}}})
    mon = monitor(runner)
    states = []
    for value in (0.9, 1.2, 0.9, 0.95, 0.7, 0.9, 0.7, 0.79, 1.01):
        mon._update(_Figure("rss", "process", value, 1.0, "MB", f"{value} MB"), now=time.time())
        states.append(mon.alerts()[0].firing)
    # 0.9: under the threshold; 1.2 fires; 0.9 and 0.95 sit between 0.8 and 1.0 and keep it firing; 0.7 is one
    # check under 0.8, then 0.9 starts the count again; 0.7 and 0.79 are two in a row: cleared; 1.01 fires again.
    assert states == [False, True, True, True, True, True, True, False, True]
    assert mon.transitions == 3


async def test_an_alert_fires_and_clears_once_each_with_a_log_line_a_metric_and_the_alerts_route(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner(
        {
            "monitoring": {
                "metrics_enabled": True,
                "port": 0,
                "alerts": {**MANUAL, "handler_p95_s": 0.005, "min_events": 10, "clear_after": 2},
            },
            "agents": {"slow": {"concurrency": 2}},
        }
    )

    @runner.agent("slow")
    async def slow(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.02)

    caplog.set_level(logging.INFO, logger="agentflow.alerts")
    async with runner:
        mon = monitor(runner)
        await asyncio.sleep(0)  # the monitor takes its first snapshot
        await runner.emit_many("slow", list(range(20)))
        await runner.drain(timeout_s=10.0)
        [changed] = mon.check()
        assert (changed.alert, changed.subject, changed.firing) == ("handler_p95", "slow", True)
        assert changed.value is not None and changed.value > 0.005 and changed.threshold == 0.005
        # the profile's recommendation for this agent: its two slots are full while events wait
        assert changed.recommendation is not None and "[agents.slow] concurrency" in changed.recommendation
        assert firing(runner) == {("handler_p95", "slow"): 1.0}
        assert mon.check() == []  # the same events are still in the window: still firing, no new transition
        assert mon.check() == []  # an empty window: one check toward clearing
        [cleared] = mon.check()  # two in a row: cleared
        assert not cleared.firing and firing(runner) == {("handler_p95", "slow"): 0.0}
        assert runner.http_address is not None
        host, port = runner.http_address
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/alerts") as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
    [alert] = body["alerts"]
    assert alert["alert"] == "handler_p95" and alert["firing"] is False and alert["threshold"] == 0.005
    assert body["checks"] == 4 and body["firing"] == 0
    lines = [r for r in caplog.records if r.name == "agentflow.alerts"]
    assert [r.levelno for r in lines] == [logging.WARNING, logging.INFO]
    assert "Alert handler_p95 firing for 'slow': handler p95" in lines[0].getMessage()
    assert "[monitoring.alerts] handler_p95_s" in lines[0].getMessage()
    assert "Alert handler_p95 cleared for 'slow'" in lines[1].getMessage()


async def test_too_few_events_are_not_judged(make_runner: RunnerFactory) -> None:
    runner = make_runner({"monitoring": {"alerts": {**MANUAL, "handler_p95_s": 0.001, "min_events": 50}}})

    @runner.agent("a")
    async def a(event: Event, ctx: Context) -> None:
        await asyncio.sleep(0.005)

    async with runner:
        await asyncio.sleep(0)
        await runner.emit_many("a", list(range(10)))
        await runner.drain(timeout_s=5.0)
        assert monitor(runner).check() == []
        [alert] = monitor(runner).alerts()
        assert alert.value is None and not alert.firing


async def test_each_alert_fires_from_its_own_figure(make_runner: RunnerFactory) -> None:
    alerts = {**MANUAL, "min_events": 5, "error_rate": 0.5, "queue_wait_p95_s": 0.05, "event_loop_lag_s": 0.05,
              "rss_mb": 1.0, "breaker_open": True, "dlq_per_min": 1.0, "consumer_lag": 5}  # fmt: skip
    runner = make_runner({"monitoring": {"alerts": alerts}, "retry": {"max_attempts": 1}})
    release = asyncio.Event()

    @runner.agent("bad")
    async def bad(event: Event, ctx: Context) -> None:
        raise Reject("always")

    @runner.agent("stuck", concurrency=1)
    async def stuck(event: Event, ctx: Context) -> None:
        await release.wait()

    breaker = CircuitBreaker("provider/model", metrics=runner.metrics)
    async with runner:
        await asyncio.sleep(0.2)  # lag ticks before the block
        await runner.emit_many("bad", list(range(10)))
        await asyncio.sleep(0.05)  # handled at once: no queue wait
        await runner.emit_many("stuck", list(range(20)))
        time.sleep(0.3)  # noqa: ASYNC251 - holds the event loop on purpose: the lag timer must see it
        await asyncio.sleep(0.2)
        breaker.force_open()
        release.set()
        await runner.drain(timeout_s=5.0)
        fired = {(a.alert, a.subject) for a in monitor(runner).check() if a.firing}
        breaker.reset()
    assert fired == {
        ("error_rate", "bad"),
        ("queue_wait_p95", "stuck"),
        ("event_loop_lag", "process"),
        ("rss", "process"),
        ("breaker_open", "provider/model"),
        ("dlq_growth", "process"),
    }


async def test_rate_limit_wait_fires_while_calls_queue_on_a_providers_limiter(make_runner: RunnerFactory) -> None:
    async with MockLLM() as server:
        alerts = {**MANUAL, "min_events": 5, "rate_limit_wait_p95_s": 0.05}
        runner = make_runner(
            {"monitoring": {"alerts": alerts}, "llm": {"mock": {"base_url": server.url, "default_model": "m"}}}
        )
        # The provider's limiter, counting over 0.2 s instead of a minute: 10 calls at 2 per window queue for up
        # to 0.8 s, as calls past a provider's rpm queue for the rest of its minute.
        limiter = RateLimiter(rpm=2, period_s=0.2, name="mock/m", metrics=runner.metrics)

        @runner.agent("ask", concurrency=10)
        async def ask(event: Event, ctx: Context) -> None:
            await limiter.acquire()
            await ctx.llm.chat([{"role": "user", "content": "hi"}])

        async with runner:
            await asyncio.sleep(0)
            await runner.emit_many("ask", list(range(10)))
            await runner.drain(timeout_s=10.0)
            fired = [a for a in monitor(runner).check() if a.firing]
        await limiter.aclose()
    [alert] = fired
    assert (alert.alert, alert.subject) == ("rate_limit_wait", "mock/m")
    assert alert.value is not None and alert.value > 0.2 and "rate-limiter wait p95" in alert.figure
    assert "over 10 grants" in alert.figure


async def test_consumer_lag_fires_while_events_wait(make_runner: RunnerFactory) -> None:
    runner = make_runner({"monitoring": {"alerts": {**MANUAL, "consumer_lag": 5}}})
    release = asyncio.Event()

    @runner.agent("stuck", concurrency=1)
    async def stuck(event: Event, ctx: Context) -> None:
        await release.wait()

    async with runner:
        await runner.emit_many("stuck", list(range(20)))
        await asyncio.sleep(0.05)
        [alert] = monitor(runner).check()
        assert (alert.alert, alert.subject, alert.value) == ("consumer_lag", "stuck", 20.0)
        release.set()
        await runner.drain(timeout_s=5.0)


async def test_event_loop_lag_is_measured_always(make_runner: RunnerFactory) -> None:
    runner = make_runner({"monitoring": {"loop_lag_interval_s": 0.01}})

    @runner.agent("a")
    async def a(event: Event, ctx: Context) -> None:
        return None

    async with runner:
        assert runner.insight.alerts is None  # no threshold, no monitor: the lag timer runs all the same
        await asyncio.sleep(0.1)
        time.sleep(0.2)  # noqa: ASYNC251 - the block the timer must see
        await asyncio.sleep(0.05)
        stats = runner.insight.loop_lag.statistics()
    assert stats.ticks >= 5 and stats.max_ms >= 150.0
    assert runner.metrics.loop_lag.count == stats.ticks
    assert runner.metrics.loop_lag.counts[int(0.15 * 1e6).bit_length() :] != [0] * (64 - int(0.15 * 1e6).bit_length())
