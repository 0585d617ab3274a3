"""A dead letter that cannot be written is retried, never fatal, and its event stays unacknowledged meanwhile.

The bus here is a real MemoryBus whose dead-letter queue refuses writes until told otherwise (a subclass, as a
broker outage would refuse them); the Kafka side, with the broker frozen for real, is in
tests/test_kafka_dlq_outage.py. The agent code under test is the same for every bus.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agentflow import (
    BusUnavailableError,
    Context,
    DeadLetter,
    Event,
    MemoryBus,
    Reject,
    Runner,
    config_from_dict,
)

if TYPE_CHECKING:
    from conftest import Eventually

TIMEOUT_S = 10.0


class RefusingDLQ(MemoryBus):
    """A memory bus whose dead-letter writes fail while ``refusing`` is set."""

    def __init__(self) -> None:
        super().__init__(partitions=2, buffer_size=100)
        self.refusing = True
        self.refused = 0

    async def dead_letter(self, letter: DeadLetter) -> None:
        if self.refusing:
            self.refused += 1
            raise BusUnavailableError("The dead-letter queue is unreachable (refused by the test).")
        await super().dead_letter(letter)


def make(bus: MemoryBus) -> tuple[Runner, list[str]]:
    runner = Runner(config_from_dict({"runner": {"shutdown_grace_s": 0.5}}), bus=bus)
    handled: list[str] = []

    @runner.agent("t")
    async def work(event: Event, ctx: Context) -> None:
        if event.payload == "poison":
            raise Reject("this one is rejected")
        handled.append(event.payload)

    return runner, handled


async def test_a_failed_dead_letter_write_is_retried_until_written_and_the_worker_goes_on(
    eventually: Eventually,
) -> None:
    bus = RefusingDLQ()
    runner, handled = make(bus)
    async with runner:
        poison = await runner.emit("t", "poison", key="a")
        await eventually(lambda: bus.refused >= 3, timeout_s=TIMEOUT_S, what="the dead-letter write retried")
        # Not fatal, not acknowledged: the runner runs, the event is in flight, and it reports the failure.
        assert runner.state.value == "running"
        assert runner.statistics().in_flight == 1
        assert runner._dead_letters_failing() == 1
        assert 'agentflow_dead_letter_writes_failing{agent="work"} 1.0' in runner.metrics.render().decode()
        # Other events go on being handled meanwhile (another key).
        await runner.emit("t", "fine", key="b")
        await eventually(lambda: handled == ["fine"], timeout_s=TIMEOUT_S, what="a good event handled")
        bus.refusing = False  # the queue is back
        await eventually(lambda: len(bus._dead) == 1, timeout_s=TIMEOUT_S, what="the dead letter written")
        await eventually(lambda: runner.statistics().in_flight == 0, timeout_s=TIMEOUT_S, what="its ack")
        assert runner._dead_letters_failing() == 0
        letters = await runner.dlq.list()
    assert [(d.event_id, d.reason) for d in letters] == [(poison, "rejected")]


async def test_shutdown_during_a_failing_dead_letter_write_gives_the_event_back(eventually: Eventually) -> None:
    bus = RefusingDLQ()
    await bus.start()
    try:
        runner, _ = make(bus)
        async with runner:
            poison = await runner.emit("t", "poison")
            await eventually(lambda: bus.refused >= 2, timeout_s=TIMEOUT_S, what="the dead-letter write retried")
        # The runner closed cleanly (no error), its retry cancelled, and the event went back to the bus.
        assert runner.statistics().returned == 1
        assert bus._dead == type(bus._dead)()
        # Delivered again to the next runner on the same bus, which can write the dead letter.
        bus.refusing = False
        again, _ = make(bus)
        async with again:
            await eventually(lambda: len(bus._dead) == 1, timeout_s=TIMEOUT_S, what="the dead letter written")
        assert [d.event_id for d in bus._dead] == [poison]
    finally:
        await bus.aclose()


async def test_a_batch_agent_gives_back_its_whole_batch_when_shutdown_cancels_its_dead_letter_writes(
    eventually: Eventually,
) -> None:
    bus = RefusingDLQ()
    await bus.start()
    try:
        runner = Runner(config_from_dict({"runner": {"shutdown_grace_s": 0.2}}), bus=bus)

        @runner.agent("t", batch_size=8)
        async def reject_all(events: list[Event], ctx: object) -> None:
            raise Reject("the whole batch is rejected")

        async with runner:
            await runner.emit_many("t", ["a", "b", "c"])
            await eventually(lambda: bus.refused >= 2, timeout_s=TIMEOUT_S, what="the dead-letter write retried")
        assert runner.statistics().returned == 3
        assert runner.statistics().dead_lettered == 0
    finally:
        await bus.aclose()


async def test_a_batch_with_an_undecodable_item_gives_it_back_when_shutdown_cancels_its_write(
    eventually: Eventually,
) -> None:
    bus = RefusingDLQ()
    await bus.start()
    try:
        runner = Runner(config_from_dict({"runner": {"shutdown_grace_s": 0.2}}), bus=bus)
        handled: list[object] = []

        @runner.agent("t", batch_size=8)
        async def collect(events: list[Event], ctx: object) -> None:
            handled.extend(e.payload for e in events)

        async with runner:
            await runner.emit_encoded("t", b"\xc1 not msgpack")
            await eventually(lambda: bus.refused >= 2, timeout_s=TIMEOUT_S, what="the dead-letter write retried")
            stats = runner.statistics()
            assert stats.in_flight == 1 and stats.dead_lettered == 0
        assert runner.statistics().returned == 1
        bus.refusing = False
        again = Runner(config_from_dict({}), bus=bus)

        @again.agent("t", batch_size=8, name="collect")  # the same agent, so the same consumer group
        async def collect_again(events: list[Event], ctx: object) -> None:
            handled.extend(e.payload for e in events)

        async with again:
            await eventually(lambda: len(bus._dead) == 1, timeout_s=TIMEOUT_S, what="the dead letter written")
        assert bus._dead[0].reason == "undecodable" and bus._dead[0].raw == b"\xc1 not msgpack"
    finally:
        await bus.aclose()


async def test_concurrent_failing_writes_are_all_counted_and_all_written(eventually: Eventually) -> None:
    bus = RefusingDLQ()
    runner, _ = make(bus)
    async with runner:
        ids = [await runner.emit("t", "poison", key=f"k{i}") for i in range(5)]
        await eventually(lambda: runner._dead_letters_failing() == 5, timeout_s=TIMEOUT_S, what="5 failing writes")
        bus.refusing = False
        await eventually(lambda: len(bus._dead) == 5, timeout_s=TIMEOUT_S, what="every dead letter written")
        await asyncio.sleep(0)
        assert runner._dead_letters_failing() == 0
    assert sorted(d.event_id for d in bus._dead) == sorted(ids)
