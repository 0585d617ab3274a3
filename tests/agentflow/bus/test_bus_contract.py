"""The bus contract (agentflow/bus/base.py), written once against ``Bus``/``Subscription``.

Every test takes ``bus_factory`` (conftest.py), which is parametrised by backend; nothing here knows which bus
it talks to. Subscribe before publishing: on the memory bus, events of a topic no group has joined are dropped.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest

from agentflow import (
    BackpressureError,
    DeadLetter,
    Event,
    LifecycleError,
    RawEvent,
    Subscription,
    new_event_id,
)
from agentflow.bus import Item

if TYPE_CHECKING:
    from conftest import BusFactory

TIMEOUT_S = 5.0


def ev(topic: str, payload: object, key: str | None = None) -> Event:
    eid = new_event_id()
    return Event(topic=topic, payload=payload, key=key, id=eid, created_at=0.0, correlation_id=eid)


async def take(sub: Subscription, n: int, *, max_n: int = 1000, ack: bool = True) -> list[Item]:
    """Take exactly ``n`` items (waiting as needed), acknowledging each unless ``ack`` is false."""
    out: list[Item] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(out) < n:
            items = sub.take_nowait(min(max_n, n - len(out)))
            if not items:
                assert await sub.wait(), "subscription closed while items were still expected"
                continue
            for it in items:
                if ack:
                    sub.ack(it)
            out.extend(items)
    return out


async def take_from_all(subs: list[Subscription], n: int) -> list[list[Item]]:
    """Take and ack ``n`` items in all from several members of one group; what each member got, in order.

    Records reach a Kafka consumer through a fetch, so this polls until all ``n`` arrived.
    """
    got: list[list[Item]] = [[] for _ in subs]
    async with asyncio.timeout(TIMEOUT_S):
        while sum(map(len, got)) < n:
            progress = False
            for i, sub in enumerate(subs):
                items = sub.take_nowait(1000)
                for it in items:
                    sub.ack(it)
                got[i] += items
                progress = progress or bool(items)
            if not progress:
                await asyncio.sleep(0.005)
    return got


async def settle() -> None:
    """Let every ready task run (publishers waiting for room included)."""
    for _ in range(5):
        await asyncio.sleep(0)


def payloads(items: list[Item]) -> list[object]:
    return [it.payload for it in items if isinstance(it, Event)]


# ---- ordering and partitioning ---------------------------------------------------------------------------


async def test_per_key_order_many_keys_interleaved(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=4, buffer_size=10_000)
    sub = await bus.subscribe("orders", "g")
    keys = [f"k{i}" for i in range(25)]
    expected: dict[str, list[int]] = defaultdict(list)
    seq = 0
    for round_ in range(20):
        # Single events, a same-key batch and a mixed-key batch, interleaved across keys.
        for key in keys:
            await bus.publish("orders", [ev("orders", (key, seq), key)])
            expected[key].append(seq)
            seq += 1
        key = keys[round_ % len(keys)]
        batch = [ev("orders", (key, seq + i), key) for i in range(3)]
        expected[key].extend(range(seq, seq + 3))
        seq += 3
        await bus.publish("orders", batch)
        mixed = [ev("orders", (k, seq + i), k) for i, k in enumerate(keys[:5])]
        for i, k in enumerate(keys[:5]):
            expected[k].append(seq + i)
        seq += 5
        await bus.publish("orders", mixed)
    got = await take(sub, seq, max_n=7)
    seen: dict[str, list[int]] = defaultdict(list)
    for key, n in payloads(got):  # type: ignore[misc]
        seen[key].append(n)
    assert seen == expected
    assert sub.statistics().acked == seq


async def test_same_key_always_lands_in_the_same_partition(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=4, buffer_size=10_000)
    # Four members of one group: one partition each, so the member that gets a key names its partition.
    subs = [await bus.subscribe("t", "g") for _ in range(4)]
    parts = [s.statistics().partitions for s in subs]
    assert sorted(p for ps in parts for p in ps) == [0, 1, 2, 3]
    assert all(len(ps) == 1 for ps in parts)
    assert [s.partitions for s in bus.statistics().subscriptions] == parts
    keys = [f"key-{i}" for i in range(40)]
    for _ in range(5):
        await bus.publish("t", [ev("t", k, k) for k in keys])
    owner: dict[str, set[int]] = defaultdict(set)
    for i, items in enumerate(await take_from_all(subs, 200)):
        for it in items:
            owner[it.key].add(i)  # type: ignore[index]
    assert set(owner) == set(keys)
    assert all(len(members) == 1 for members in owner.values()), owner
    assert len({next(iter(m)) for m in owner.values()}) > 1, "40 keys should spread over several partitions"


async def test_one_member_owns_every_partition(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=3)
    sub = await bus.subscribe("t", "g")
    assert sub.statistics().partitions == (0, 1, 2)
    other = await bus.subscribe("t", "g")
    assert set(sub.statistics().partitions) | set(other.statistics().partitions) == {0, 1, 2}
    assert not set(sub.statistics().partitions) & set(other.statistics().partitions)
    await other.aclose()
    assert sub.statistics().partitions == (0, 1, 2), "partitions of a member that left are reassigned"


async def test_fan_out_every_group_gets_every_event(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    a = await bus.subscribe("t", "group-a")
    b = await bus.subscribe("t", "group-b")
    events = [ev("t", i, f"k{i % 7}") for i in range(60)]
    await bus.publish("t", events)
    got_a = await take(a, 60)
    got_b = await take(b, 60)
    assert sorted(payloads(got_a)) == list(range(60))  # type: ignore[type-var]
    assert sorted(payloads(got_b)) == list(range(60))  # type: ignore[type-var]
    assert a.take_nowait(10) == [] and b.take_nowait(10) == []


async def test_members_of_one_group_share_the_events(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=4)
    s1 = await bus.subscribe("t", "g")
    s2 = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, f"k{i % 20}") for i in range(80)])
    items1, items2 = await take_from_all([s1, s2], 80)
    got1, got2 = payloads(items1), payloads(items2)
    assert not set(got1) & set(got2)  # type: ignore[arg-type]
    assert sorted(got1 + got2) == list(range(80))  # type: ignore[type-var]
    assert got1 and got2, "20 keys over 4 partitions should reach both members"


# ---- acknowledgement and redelivery ----------------------------------------------------------------------


async def test_acked_events_are_not_redelivered_after_close(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(10)])
    assert payloads(await take(sub, 10)) == list(range(10))
    assert sub.statistics().unacked == 0
    await sub.aclose()
    await sub.aclose()  # idempotent
    again = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", "marker", "k")])
    assert payloads(await take(again, 1)) == ["marker"]
    assert again.take_nowait(100) == []


async def test_unacked_events_are_redelivered_in_order_after_close(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=2)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(10)])
    taken = await take(sub, 6, ack=False)
    assert payloads(taken) == list(range(6))
    sub.ack(taken[0])
    sub.ack(taken[1])
    assert sub.statistics().unacked == 4
    await sub.aclose()
    assert await sub.wait() is False
    again = await bus.subscribe("t", "g")
    assert payloads(await take(again, 8)) == list(range(2, 10))
    assert again.take_nowait(100) == []


async def test_requeue_puts_items_back_ahead_of_newer_ones(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(8)])
    taken = await take(sub, 5, ack=False)
    sub.ack(taken[0])
    sub.ack(taken[1])
    sub.requeue(taken[2:])
    st = sub.statistics()
    assert (st.requeued, st.unacked, st.buffered) == (3, 0, 6)
    await bus.publish("t", [ev("t", 8, "k")])
    assert payloads(await take(sub, 7)) == [2, 3, 4, 5, 6, 7, 8]


async def test_requeue_of_keyless_items_keeps_their_order(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i) for i in range(4)])
    taken = await take(sub, 4, ack=False)
    sub.requeue(taken)
    assert payloads(await take(sub, 4)) == [0, 1, 2, 3]


async def test_wait_wakes_on_publish_and_returns_false_on_close(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    sub = await bus.subscribe("t", "g")
    waiter = asyncio.create_task(sub.wait())
    await settle()
    assert not waiter.done()
    await bus.publish("t", [ev("t", 1, "k")])
    async with asyncio.timeout(TIMEOUT_S):
        assert await waiter is True
    assert payloads(await take(sub, 1)) == [1]
    waiter = asyncio.create_task(sub.wait())
    await settle()
    assert not waiter.done()
    await sub.aclose()
    async with asyncio.timeout(TIMEOUT_S):
        assert await waiter is False


# ---- backpressure ----------------------------------------------------------------------------------------


async def test_publish_nowait_raises_when_full_and_publishes_nothing(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=3)
    sub = await bus.subscribe("t", "g")
    bus.publish_nowait("t", [ev("t", i, "k") for i in range(3)])
    before = bus.statistics()
    assert before.buffered == 3
    with pytest.raises(BackpressureError, match="full"):
        bus.publish_nowait("t", [ev("t", 3, "k")])
    after = bus.statistics()
    assert (after.buffered, after.published) == (3, before.published)
    assert payloads(await take(sub, 3)) == [0, 1, 2]
    bus.publish_nowait("t", [ev("t", 3, "k")])
    assert payloads(await take(sub, 1)) == [3]


async def test_publish_nowait_never_takes_a_buffer_past_its_size(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=4)
    await bus.subscribe("t", "g")
    # A batch bigger than the room left must be refused as a whole, not squeezed in past the bound.
    with pytest.raises(BackpressureError):
        bus.publish_nowait("t", [ev("t", i, "k") for i in range(10)])
    assert bus.statistics().buffered <= 4


async def test_publish_of_a_batch_never_takes_a_buffer_past_its_size(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=4)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(3)])
    pub = asyncio.create_task(bus.publish("t", [ev("t", i, "k") for i in range(3, 13)]))
    got: list[Item] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(got) < 13:
            await settle()
            assert bus.statistics().buffered <= 4, "a waiting publisher squeezed a batch in past buffer_size"
            got += await take(sub, 1)
        await pub
    assert payloads(got) == list(range(13))


async def test_publish_waits_for_room_then_completes(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=2)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", 0, "k"), ev("t", 1, "k")])
    pub = asyncio.create_task(bus.publish("t", [ev("t", 2, "k")]))
    await settle()
    assert not pub.done()
    assert bus.statistics().publishers_waiting == 1
    assert payloads(await take(sub, 1)) == [0]
    async with asyncio.timeout(TIMEOUT_S):
        await pub
    assert bus.statistics().publishers_waiting == 0
    assert payloads(await take(sub, 2)) == [1, 2]


async def test_waiting_publishers_are_served_fifo(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", "first", "k")])
    done_order: list[int] = []

    async def publish(i: int) -> None:
        await bus.publish("t", [ev("t", i, "k")])
        done_order.append(i)

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(publish(i)))
        await settle()  # each queues behind the previous one
    assert bus.statistics().publishers_waiting == 5
    got = await take(sub, 6, max_n=1)
    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*tasks)
    assert payloads(got) == ["first", 0, 1, 2, 3, 4]
    assert done_order == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("victim", [0, 1, 2])
async def test_cancelled_waiting_publisher_does_not_strand_the_others(bus_factory: BusFactory, victim: int) -> None:
    bus = await bus_factory(partitions=1, buffer_size=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", "first", "k")])
    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(bus.publish("t", [ev("t", i, "k")])))
        await settle()
    tasks[victim].cancel()
    await settle()
    got = await take(sub, 3, max_n=1)
    async with asyncio.timeout(TIMEOUT_S):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[victim], asyncio.CancelledError)
    assert payloads(got) == ["first"] + [i for i in range(3) if i != victim]
    assert bus.statistics().publishers_waiting == 0
    assert sub.take_nowait(10) == []


async def test_publisher_cancelled_just_after_its_turn_came_passes_the_turn_on(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", "first", "k")])
    p1 = asyncio.create_task(bus.publish("t", [ev("t", 1, "k")]))
    await settle()
    p2 = asyncio.create_task(bus.publish("t", [ev("t", 2, "k")]))
    await settle()
    [first] = sub.take_nowait(1)  # hands the room to p1 ...
    sub.ack(first)
    p1.cancel()  # ... which is cancelled before it can use it
    got = await take(sub, 1)
    async with asyncio.timeout(TIMEOUT_S):
        await p2
    assert payloads(got) == [2]
    assert p1.cancelled()


async def test_a_full_topic_does_not_hold_up_another_topic(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=1)
    await bus.subscribe("slow", "g")  # never consumed
    fast = await bus.subscribe("fast", "g")
    await bus.publish("slow", [ev("slow", 0, "k")])
    stuck = asyncio.create_task(bus.publish("slow", [ev("slow", 1, "k")]))
    await settle()
    assert not stuck.done()
    try:
        # "fast" has room: neither publish nor publish_nowait may queue behind the publisher waiting on "slow".
        async with asyncio.timeout(1.0):
            await bus.publish("fast", [ev("fast", "a", "k")])
        assert payloads(await take(fast, 1)) == ["a"]
        bus.publish_nowait("fast", [ev("fast", "b", "k")])
        assert payloads(await take(fast, 1)) == ["b"]
    finally:
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)


# ---- raw events, routing, dead letters, lifecycle --------------------------------------------------------


async def test_publish_raw_delivers_a_raw_event(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    sub = await bus.subscribe("t", "g")
    await bus.publish_raw("t", b"\x00not-an-event", key="k1")
    [item] = await take(sub, 1)
    assert isinstance(item, RawEvent)
    assert (item.topic, item.data, item.key) == ("t", b"\x00not-an-event", "k1")


async def test_publish_to_topic_without_groups_counts_unrouted(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    before = bus.statistics().unrouted
    await bus.publish("nobody", [ev("nobody", i) for i in range(3)])
    bus.publish_nowait("nobody", [ev("nobody", 3)])
    assert bus.statistics().unrouted == before + 4


async def test_subscriber_count_counts_groups(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    assert bus.subscriber_count("t") == 0
    await bus.subscribe("t", "a")
    assert bus.subscriber_count("t") == 1
    await bus.subscribe("t", "a")
    assert bus.subscriber_count("t") == 1, "a second member of the same group is not a second subscriber"
    await bus.subscribe("t", "b")
    await bus.subscribe("other", "c")
    assert bus.subscriber_count("t") == 2


def letter(topic: str, n: int) -> DeadLetter:
    return DeadLetter(
        id=f"id-{n}",
        topic=topic,
        agent="a",
        reason="exhausted",
        error_type="ValueError",
        error=f"boom {n}",
        attempts=3,
        failed_at=float(n),
        event=ev(topic, n, "k"),
    )


async def test_dead_letters_add_list_filter_remove(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    for n, topic in enumerate(["a", "b", "a", "c", "a"]):
        await bus.dead_letter(letter(topic, n))
    assert [d.id for d in await bus.dead_letters()] == [f"id-{n}" for n in range(5)]
    assert [d.id for d in await bus.dead_letters(topic="a")] == ["id-0", "id-2", "id-4"]
    assert [d.id for d in await bus.dead_letters(topic="a", limit=2)] == ["id-0", "id-2"]
    assert await bus.dead_letters(topic="zzz") == []
    kept = (await bus.dead_letters(topic="b"))[0]
    assert kept.event is not None and kept.event.payload == 1 and kept.error == "boom 1"
    assert bus.statistics().dead_letters == 5
    assert await bus.remove_dead_letters(["id-0", "id-4", "no-such-id"]) == 2
    assert [d.id for d in await bus.dead_letters()] == ["id-1", "id-2", "id-3"]
    assert bus.statistics().dead_letters == 3


def failure(event: Event, agent: str, failed_at: float) -> DeadLetter:
    """A dead letter with an id of its own (the default), as agents write them."""
    return DeadLetter(
        topic=event.topic,
        agent=agent,
        reason="rejected",
        error_type="Reject",
        error="no",
        attempts=1,
        failed_at=failed_at,
        event=event,
    )


async def test_each_dead_letter_of_one_event_is_listed_and_removed_on_its_own(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    e = ev("t", 1, "k")
    first, other_agent = failure(e, "a", 1.0), failure(e, "b", 2.0)
    await bus.dead_letter(first)
    await bus.dead_letter(other_agent)
    assert first.id != other_agent.id and first.event_id == other_agent.event_id == e.id
    assert await bus.remove_dead_letters([first.id]) == 1
    again = failure(e, "a", 3.0)  # the same event failing again for agent "a" after a replay
    await bus.dead_letter(again)
    listed = await bus.dead_letters()
    assert [d.id for d in listed] == [other_agent.id, again.id]
    assert [d.event_id for d in listed] == [e.id, e.id]
    assert await bus.remove_dead_letters([first.id]) == 0, "a removed dead letter stays removed"
    assert await bus.remove_dead_letters([again.id]) == 1
    assert [d.id for d in await bus.dead_letters()] == [other_agent.id]
    assert bus.statistics().dead_letters == 1


async def test_dead_letters_page_by_position_in_both_orders(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    letters = [
        failure(ev("ab"[n % 2], n, f"k{n % 3}"), "xy"[n % 3 == 0], float(n // 4))  # four share each failed_at
        for n in range(41)
    ]
    for d in reversed(letters):  # written newest first: the listing orders by position, not by arrival
        await bus.dead_letter(d)
    oldest = sorted(letters, key=lambda d: (d.failed_at, d.id))
    assert await bus.dead_letters() == oldest
    assert await bus.dead_letters(newest_first=True) == oldest[::-1]
    for newest_first in (False, True):
        expected = oldest[::-1] if newest_first else oldest
        pages: list[list[DeadLetter]] = []
        after = None
        while True:
            page = await bus.dead_letters(limit=7, newest_first=newest_first, after=after)
            if not page:
                break
            pages.append(page)
            after = (page[-1].failed_at, page[-1].id)
        assert [d for p in pages for d in p] == expected and [len(p) for p in pages] == [7] * 5 + [6]
    of_y_in_a = [d for d in oldest if d.agent == "y" and d.topic == "a"]
    assert await bus.dead_letters(topic="a", agent="y") == of_y_in_a
    mid = oldest[20]
    assert await bus.dead_letters(until=(mid.failed_at, mid.id)) == oldest[:21]
    assert await bus.dead_letters(newest_first=True, until=(mid.failed_at, mid.id), limit=3) == oldest[:19:-1][:3]
    assert await bus.dead_letters(after=(oldest[-1].failed_at, oldest[-1].id)) == []


async def test_dead_letters_are_bounded_and_evictions_counted(bus_factory: BusFactory) -> None:
    bus = await bus_factory(dlq_max_entries=3)
    for n in range(5):
        await bus.dead_letter(letter("t", n))
    assert [d.id for d in await bus.dead_letters()] == ["id-2", "id-3", "id-4"]
    st = bus.statistics()
    assert (st.dead_letters, st.dead_letters_evicted) == (3, 2)


async def test_closed_bus_refuses_publish_with_lifecycle_error(bus_factory: BusFactory) -> None:
    bus = await bus_factory()
    await bus.subscribe("t", "g")
    await bus.aclose()
    await bus.aclose()  # idempotent
    with pytest.raises(LifecycleError, match="closed"):
        await bus.publish("t", [ev("t", 1)])
    with pytest.raises(LifecycleError, match="closed"):
        bus.publish_nowait("t", [ev("t", 1)])
    with pytest.raises(LifecycleError, match="closed"):
        await bus.publish_raw("t", b"x")
    with pytest.raises(LifecycleError):
        await bus.start()


async def test_closing_the_bus_releases_waiting_publishers_and_subscribers(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=1, buffer_size=1)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", 0, "k")])
    pub = asyncio.create_task(bus.publish("t", [ev("t", 1, "k")]))
    other = await bus.subscribe("u", "g")
    waiter = asyncio.create_task(other.wait())
    await settle()
    await bus.aclose()
    async with asyncio.timeout(TIMEOUT_S):
        with pytest.raises(LifecycleError):
            await pub
        assert await waiter is False
    assert await sub.wait() is False


async def test_statistics_follow_take_ack_requeue(bus_factory: BusFactory) -> None:
    bus = await bus_factory(partitions=2)
    sub = await bus.subscribe("t", "g")
    await bus.publish("t", [ev("t", i, "k") for i in range(5)])
    st = bus.statistics()
    assert (st.published, st.buffered, st.unacked) == (5, 5, 0)
    items = await take(sub, 4, ack=False)
    sub.ack(items[0])
    sub.requeue(items[3:])
    s = sub.statistics()
    assert (s.topic, s.group, s.taken, s.acked, s.requeued, s.unacked, s.buffered) == ("t", "g", 4, 1, 1, 2, 2)
    st = bus.statistics()
    assert (st.buffered, st.unacked, len(st.subscriptions)) == (2, 2, 1)
    assert st.backend == bus.backend
