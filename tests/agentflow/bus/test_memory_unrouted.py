"""The memory bus drops nothing silently: events of a topic no agent reads are counted by topic (bounded),
exported as ``agentflow_events_unrouted_total{topic}``, logged at a bounded rate, or refused with
``[bus] refuse_unrouted``."""

from __future__ import annotations

import logging

import pytest
from conftest import RunnerFactory
from prometheus_client.parser import text_string_to_metric_families

from agentflow import BusError, Context, Event
from agentflow.bus.memory import MAX_UNROUTED_TOPICS


def unrouted_samples(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "agentflow_events_unrouted":
            return {s.labels["topic"]: s.value for s in family.samples if s.name.endswith("_total")}
    raise AssertionError("agentflow_events_unrouted is not exported")


async def test_unrouted_events_are_counted_by_topic_exported_and_logged_once_in_a_while(
    make_runner: RunnerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    runner = make_runner()

    @runner.agent("questions")
    async def answer(event: Event, ctx: Context) -> None:
        return None

    with caplog.at_level(logging.WARNING, logger="agentflow.bus.memory"):
        async with runner:
            for _ in range(3):
                await runner.emit("questoins", {"q": "typo"})  # nobody reads it
            await runner.emit_many("nobody", [1, 2])
            runner.emit_nowait("nobody", 3)
            samples = unrouted_samples(runner.metrics.render().decode())
    assert samples == {"questoins": 3.0, "nobody": 3.0}
    stats = runner.statistics().bus
    assert stats.unrouted == 6 and stats.unrouted_by_topic == {"questoins": 3, "nobody": 3}
    warnings = [r for r in caplog.records if "no subscriber" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one warning for the burst, not one per event
    assert "'questoins'" in warnings[0].getMessage() and "refuse_unrouted" in warnings[0].getMessage()


async def test_unrouted_topic_labels_are_bounded(make_runner: RunnerFactory) -> None:
    runner = make_runner()
    async with runner:
        for i in range(MAX_UNROUTED_TOPICS + 50):
            await runner.emit(f"t{i}", i)
    counts = runner.statistics().bus.unrouted_by_topic
    assert len(counts) == MAX_UNROUTED_TOPICS + 1 and counts["_other"] == 50
    assert sum(counts.values()) == MAX_UNROUTED_TOPICS + 50


async def test_refuse_unrouted_makes_emit_raise_and_publishes_nothing(make_runner: RunnerFactory) -> None:
    runner = make_runner({"bus": {"refuse_unrouted": True}})
    seen: list[object] = []

    @runner.agent("questions")
    async def answer(event: Event, ctx: Context) -> object:
        seen.append(event.payload)
        return event.payload

    async with runner:
        for emit in (lambda: runner.emit("questoins", 1), lambda: runner.emit_many("questoins", [1, 2])):
            with pytest.raises(BusError, match=r"No agent subscribes to topic 'questoins'.*nothing was published"):
                await emit()
        with pytest.raises(BusError, match="refuse_unrouted"):
            runner.emit_nowait("questoins", 1)
        assert await runner.request("questions", 7, timeout_s=5) == 7
    assert runner.statistics().bus.unrouted == 0 and seen == [7]
