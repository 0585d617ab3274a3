"""``runner.dlq`` and ``GET /v1/dlq`` on both buses: replayed events that fail again stay visible, and listings
page through any number of dead letters exactly once, oldest or newest first.

Every test takes ``bus_factory`` (conftest.py), so each runs on the memory bus and on Kafka (the real broker).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from agentflow import Bus, Context, DeadLetter, Event, Reject, Runner, new_event_id

if TYPE_CHECKING:
    from conftest import BusFactory, Eventually, RunnerFactory

TIMEOUT_S = 30.0
MONITORING = {"metrics_enabled": True, "port": 0, "ingest_enabled": True}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session:
        yield session


def dlq_url(runner: Runner) -> str:
    assert runner.http_address is not None
    return "http://{}:{}/v1/dlq".format(*runner.http_address)


async def get_page(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params=params) as resp:
        return resp.status, await resp.json()


def letter(n: int, *, topic: str = "orders", agent: str = "picky") -> DeadLetter:
    eid = new_event_id()
    return DeadLetter(
        topic=topic,
        agent=agent,
        reason="rejected",
        error_type="Reject",
        error=f"no {n}",
        attempts=1,
        failed_at=1_000.0 + n // 3,  # three letters share each failed_at: the id breaks the tie
        event=Event(topic=topic, payload=n, key=f"k{n % 5}", id=eid, created_at=0.0, correlation_id=eid),
    )


async def write_letters(bus: Bus, letters: list[DeadLetter]) -> None:
    for i in range(0, len(letters), 500):
        await asyncio.gather(*(bus.dead_letter(d) for d in letters[i : i + 500]))


async def test_an_event_that_fails_again_after_a_replay_is_listed_again(
    bus_factory: BusFactory, make_runner: RunnerFactory, eventually: Eventually, http: aiohttp.ClientSession
) -> None:
    bus = await bus_factory(partitions=2)
    runner = make_runner({"monitoring": MONITORING, "retry": {"max_attempts": 1}}, bus=bus)
    tries: list[int] = []

    @runner.agent("orders")
    async def picky(event: Event, ctx: Context) -> None:
        tries.append(event.payload)
        raise Reject("still not accepted")

    async with runner:
        eid = await runner.emit("orders", 7, key="k")
        await eventually(lambda: runner.statistics().dead_lettered == 1, timeout_s=TIMEOUT_S, what="a dead letter")
        [first] = await runner.dlq.list()
        assert first.event_id == eid and first.id != eid

        assert await runner.dlq.replay([first.id]) == 1
        await eventually(lambda: runner.statistics().dead_lettered == 2, timeout_s=TIMEOUT_S, what="failed again")
        [second] = await runner.dlq.list()
        assert second.event_id == eid and second.id != first.id, "the new failure is a new, visible dead letter"
        status, page = await get_page(http, dlq_url(runner))
        assert status == 200 and [d["id"] for d in page["dead_letters"]] == [second.id]
        assert page["dead_letters"][0]["event_id"] == eid and page["next_cursor"] is None

        assert await runner.dlq.replay(agent="picky") == 1
        await eventually(lambda: runner.statistics().dead_lettered == 3, timeout_s=TIMEOUT_S, what="a third time")
        [third] = await runner.dlq.list()
        assert third.event_id == eid and third.id not in (first.id, second.id)
        assert await runner.dlq.replay([first.id, second.id]) == 0, "replayed dead letters are gone for good"
        assert [d.id for d in await runner.dlq.list()] == [third.id]
    assert tries == [7, 7, 7]


async def test_pages_cover_more_than_a_thousand_dead_letters_exactly_once_in_both_orders(
    bus_factory: BusFactory, make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    bus = await bus_factory(dlq_max_entries=5_000)
    letters = [letter(n, agent="picky" if n % 4 else "other") for n in range(2_345)]
    await write_letters(bus, letters)
    oldest = sorted(letters, key=lambda d: (d.failed_at, d.id))
    ids = [d.id for d in oldest]
    runner = make_runner({"monitoring": MONITORING}, bus=bus)
    async with runner:
        assert len(await runner.dlq.list()) == 2_345, "no cap on the total"
        for order, expected in (("oldest", ids), ("newest", ids[::-1])):
            seen: list[str] = []
            cursor = None
            while True:
                page = await runner.dlq.page(limit=1000, cursor=cursor, order=order)  # type: ignore[arg-type]
                seen += [d.id for d in page.dead_letters]
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert seen == expected, order

        # Over HTTP, newest first: the newest failure leads; each cursor gives the next page.
        url = dlq_url(runner)
        status, first = await get_page(http, url, order="newest", limit="1000")
        assert status == 200 and first["count"] == 1000
        assert first["dead_letters"][0]["id"] == ids[-1]
        assert first["dead_letters"][0]["event"]["payload"] == oldest[-1].event.payload  # type: ignore[union-attr]
        seen = [d["id"] for d in first["dead_letters"]]
        cursor = first["next_cursor"]
        while cursor is not None:
            status, page_body = await get_page(http, url, cursor=cursor, limit="1000")  # the cursor keeps its order
            assert status == 200, page_body
            seen += [d["id"] for d in page_body["dead_letters"]]
            cursor = page_body["next_cursor"]
        assert seen == ids[::-1]

        # Filters and a cursor together: only the other agent's letters, oldest first, in pages of 100.
        others = [d.id for d in oldest if d.agent == "other"]
        got: list[str] = []
        params = {"agent": "other", "limit": "100"}
        while True:
            status, body = await get_page(http, url, **params)
            got += [d["id"] for d in body["dead_letters"]]
            if body["next_cursor"] is None:
                break
            params["cursor"] = body["next_cursor"]
        assert got == others


async def test_a_cursor_marks_a_position_so_changes_between_pages_lose_nothing(
    bus_factory: BusFactory, make_runner: RunnerFactory
) -> None:
    bus = await bus_factory()
    letters = [letter(n) for n in range(30)]
    await write_letters(bus, letters)
    oldest = sorted(letters, key=lambda d: (d.failed_at, d.id))
    runner = make_runner(bus=bus)
    async with runner:
        page = await runner.dlq.page(limit=10)
        assert [d.id for d in page.dead_letters] == [d.id for d in oldest[:10]] and page.next_cursor
        # Entries already seen are removed and a newer one arrives: the next pages still hold every other entry.
        await bus.remove_dead_letters([d.id for d in oldest[:5]])
        late = letter(99)
        await bus.dead_letter(late)
        rest: list[str] = []
        cursor: str | None = page.next_cursor
        while cursor is not None:
            nxt = await runner.dlq.page(limit=10, cursor=cursor)
            rest += [d.id for d in nxt.dead_letters]
            cursor = nxt.next_cursor
        assert rest == [d.id for d in oldest[10:]] + [late.id]
        newest = await runner.dlq.page(limit=1, order="newest")
        assert [d.id for d in newest.dead_letters] == [late.id]


async def test_replay_of_more_than_one_chunk_replays_each_once_and_keeps_the_ones_failing_again(
    bus_factory: BusFactory, make_runner: RunnerFactory, eventually: Eventually
) -> None:
    bus = await bus_factory(partitions=2, buffer_size=5_000, dlq_max_entries=5_000)
    runner = make_runner({"retry": {"max_attempts": 1}, "runner": {"event_buffer_size": 5_000}}, bus=bus)
    tries: list[int] = []

    @runner.agent("orders")
    async def picky(event: Event, ctx: Context) -> None:
        tries.append(event.payload)
        raise Reject("still not accepted")

    n = 1_100
    async with runner:
        letters = [letter(i) for i in range(n)]
        await write_letters(bus, letters)
        assert await runner.dlq.replay(agent="picky") == n
        await eventually(lambda: len(tries) == n, timeout_s=60, what="every replayed event handled")
        await eventually(lambda: runner.statistics().dead_lettered == n, timeout_s=60, what="each failed again")
        again = await runner.dlq.list()
    assert sorted(tries) == list(range(n)), "each dead letter replayed exactly once"
    assert len(again) == n and not {d.id for d in again} & {d.id for d in letters}
    assert sorted(d.event_id or "" for d in again) == sorted(d.event_id or "" for d in letters)


async def test_bad_limit_order_and_cursor_are_refused_with_a_sentence(
    bus_factory: BusFactory, make_runner: RunnerFactory, http: aiohttp.ClientSession
) -> None:
    bus = await bus_factory()
    await write_letters(bus, [letter(n) for n in range(3)])
    runner = make_runner({"monitoring": MONITORING}, bus=bus)
    async with runner:
        newest_cursor = (await runner.dlq.page(limit=1, order="newest")).next_cursor
        assert newest_cursor is not None
        for kwargs, words in (
            ({"limit": 0}, "from 1 to 1000"),
            ({"limit": 1001}, "from 1 to 1000"),
            ({"cursor": "not-a-cursor"}, "not one a dead-letter listing returned"),
            ({"cursor": ""}, "not one a dead-letter listing returned"),
            ({"order": "sideways"}, "neither 'oldest' nor 'newest'"),
            ({"order": "sideways", "cursor": newest_cursor}, "neither 'oldest' nor 'newest'"),
            ({"cursor": newest_cursor, "order": "oldest"}, "pages newest first"),
        ):
            with pytest.raises(ValueError, match=words):
                await runner.dlq.page(**kwargs)
        assert len((await runner.dlq.page(cursor=newest_cursor)).dead_letters) == 2, "the cursor keeps its order"

        url = dlq_url(runner)
        for params, words in (
            ({"limit": "0"}, "limit='0' is not a whole number from 1 to 1000"),
            ({"limit": "1001"}, "from 1 to 1000"),
            ({"limit": "ten"}, "from 1 to 1000"),
            ({"limit": "9" * 5000}, "from 1 to 1000"),
            ({"cursor": "bm9wZQ"}, "not one a dead-letter listing returned"),
            ({"cursor": "@@@"}, "not one a dead-letter listing returned"),
            ({"order": "up"}, "neither 'oldest' nor 'newest'"),
            ({"cursor": newest_cursor, "order": "oldest"}, "pages newest first"),
        ):
            status, body = await get_page(http, url, **params)
            assert status == 400 and words in body["error"], (params, body)
            assert body["error"].endswith("."), "errors are whole sentences"
