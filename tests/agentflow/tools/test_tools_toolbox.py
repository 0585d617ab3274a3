"""ctx.tools: selection by name and pattern, calls, parallel calls in order, streaming tools in batches."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import pytest

from agentflow.errors import ToolArgumentsError, ToolError, ToolTimeoutError, UnknownToolError
from agentflow.tools import Tool, ToolBox, ToolRegistry, tool, wire_name


@dataclass
class Call:
    """Shaped like the LLM client's ToolCall."""

    id: str
    name: str
    arguments: Any


class Probe:
    """Counts the calls running at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.running -= 1


def make_registry(probe: Probe) -> ToolRegistry:
    @tool
    async def wait(i: int, seconds: float) -> int:
        """Sleep, then return i."""
        await probe.hold(seconds)
        return i

    @tool
    async def explode() -> None:
        """Raises."""
        raise RuntimeError("kaput")

    @tool(timeout_s=0.05)
    async def stuck() -> None:
        """Never finishes in time."""
        await asyncio.sleep(10)

    registry = ToolRegistry()
    for t in (wait, explode, stuck):
        registry.add(t)
    return registry


async def test_unknown_tool_becomes_an_error_result_listing_the_tools() -> None:
    box = ToolBox(make_registry(Probe()))
    result = await box.call("wether", {"city": "Oslo"}, call_id="c1")
    assert result.outcome == "unknown_tool"
    assert isinstance(result.error, UnknownToolError)
    assert result.content == "There is no tool named 'wether'. Call one of the available tools: explode, stuck, wait."
    assert result.message()["tool_call_id"] == "c1"


async def test_call_many_runs_in_parallel_under_the_limit_and_keeps_call_order() -> None:
    probe = Probe()
    box = ToolBox(make_registry(probe), max_parallel=3)
    # Later calls finish first: the results must still come back in call order.
    calls = [Call(f"c{i}", "wait", {"i": i, "seconds": 0.06 - i * 0.01}) for i in range(6)]
    t0 = time.perf_counter()
    results = await box.call_many(calls)
    took = time.perf_counter() - t0
    assert [r.value for r in results] == [0, 1, 2, 3, 4, 5]
    assert [r.id for r in results] == [f"c{i}" for i in range(6)]
    assert probe.peak == 3
    assert took < 0.06 * 6 * 0.8  # not one after the other


async def test_one_failure_does_not_cancel_the_others() -> None:
    probe = Probe()
    box = ToolBox(make_registry(probe), max_parallel=8)
    results = await box.call_many(
        [
            ("wait", {"i": 1, "seconds": 0.1}),
            ("explode", {}),
            ("stuck", None),
            ("nope", {}),
            ("wait", '{"i": "x"}'),
            ("wait", '{"i": 2, "seconds": 0.1}'),
        ]
    )
    assert [r.outcome for r in results] == ["ok", "error", "timeout", "unknown_tool", "bad_arguments", "ok"]
    assert [r.value for r in results if r.ok] == [1, 2]
    assert results[1].content == "Tool 'explode' failed: RuntimeError: kaput"


async def test_call_many_takes_openai_shaped_calls_and_pairs() -> None:
    box = ToolBox(make_registry(Probe()))
    results = await box.call_many(
        [
            {"id": "call_a", "type": "function", "function": {"name": "wait", "arguments": '{"i": 5, "seconds": 0}'}},
            ("wait", {"i": 6, "seconds": 0}),
        ]
    )
    assert [(r.id, r.value) for r in results] == [("call_a", 5), ("", 6)]
    assert await box.call_many([]) == []


async def test_a_timeout_inside_call_many_stops_only_that_call() -> None:
    box = ToolBox(make_registry(Probe()), max_parallel=2)
    results = await box.call_many(
        [("stuck", None), ("wait", {"i": 1, "seconds": 0.12}), ("wait", {"i": 2, "seconds": 0})]
    )
    assert [r.outcome for r in results] == ["timeout", "ok", "ok"]


async def test_cancelling_call_many_cancels_every_running_call() -> None:
    probe = Probe()
    box = ToolBox(make_registry(probe), max_parallel=4)
    task = asyncio.ensure_future(box.call_many([("wait", {"i": i, "seconds": 5}) for i in range(4)]))
    await asyncio.sleep(0.05)
    assert probe.running == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.running == 0


async def test_selection_by_name_and_pattern_follows_the_registry() -> None:
    registry = make_registry(Probe())
    selection = registry.select(["wait", "search.*", "missing_tool"])
    box = ToolBox(selection)
    assert box.names() == ["wait"]
    assert selection.missing() == ["search.*", "missing_tool"]

    class Remote(Tool):
        async def _run(self, args: Any, key: str | None, workflow: str | None) -> Any:
            return {"query": args, "key": key}

        def prepare(self, arguments: Any) -> Any:
            return arguments

    registry.set_group("search", {"search.web": Remote("search.web", "Search the web.", {"type": "object"})})
    assert box.names() == ["search.web", "wait"]
    assert [s["function"]["name"] for s in box.schemas()] == ["search__web", "wait"]
    assert selection.missing() == ["missing_tool"]
    # The model calls it by its wire name, agent code by its own.
    by_wire = await ToolBox(selection, key="k1").call("search__web", {"q": 1})
    by_name = await box.call("search.web", {"q": 2})
    assert by_wire.value == {"query": {"q": 1}, "key": "k1"} and by_name.name == "search.web"
    assert "explode" not in box
    registry.set_group("search", {})
    assert box.names() == ["wait"]


def test_wire_names_are_what_openai_accepts() -> None:
    assert wire_name("search.web") == "search__web"
    assert wire_name("fs/read file") == "fs_read_file"
    long = wire_name("server." + "x" * 100)
    assert len(long) == 64 and long.startswith("server__xxx")
    assert long != wire_name("server." + "x" * 101)


# ---- streaming tools -------------------------------------------------------------------------------------


async def test_a_streaming_tool_delivers_every_item_in_order_in_batches() -> None:
    @tool
    async def numbers(n: int):  # type: ignore[no-untyped-def]
        """Yield 0..n-1."""
        for i in range(n):
            yield i

    registry = ToolRegistry()
    registry.add(numbers)
    box = ToolBox(registry)
    batches = [b async for b in box.stream("numbers", {"n": 1050}, batch_size=100, batch_timeout_s=0.05)]
    assert [x for b in batches for x in b] == list(range(1050))
    assert all(len(b) <= 100 for b in batches)
    assert len(batches) == 11


async def test_batches_come_as_items_arrive_not_when_the_tool_ends() -> None:
    @tool
    async def ticks():  # type: ignore[no-untyped-def]
        """A slow source: five items 30 ms apart."""
        for i in range(5):
            await asyncio.sleep(0.03)
            yield i

    registry = ToolRegistry()
    registry.add(ticks)
    box = ToolBox(registry)
    t0 = time.perf_counter()
    arrivals = []
    async for batch in box.stream("ticks", batch_size=100, batch_timeout_s=0.01):
        arrivals.append((time.perf_counter() - t0, batch))
    assert [x for _, b in arrivals for x in b] == [0, 1, 2, 3, 4]
    assert len(arrivals) >= 3  # the batch timer let each item (or two) through on its own
    assert arrivals[0][0] < 0.1  # the first batch came long before the 150 ms the tool runs


async def test_the_buffer_is_bounded_and_leaving_early_stops_the_tool() -> None:
    produced = 0
    closed = asyncio.Event()

    @tool
    async def endless():  # type: ignore[no-untyped-def]
        """Never ends."""
        nonlocal produced
        try:
            while True:
                produced += 1
                yield produced
                await asyncio.sleep(0)
        finally:
            closed.set()

    registry = ToolRegistry()
    registry.add(endless)
    box = ToolBox(registry)
    stream = box.stream("endless", batch_size=10, batch_timeout_s=0.01, max_buffered=50)
    first = await anext(stream)
    assert first == list(range(1, 11))
    await asyncio.sleep(0.05)  # the consumer dawdles: the tool must stop at the buffer's bound
    assert produced <= 10 + 50 + 1
    await stream.aclose()
    assert closed.is_set()


async def test_a_failing_stream_raises_after_the_items_it_sent() -> None:
    @tool
    async def flaky():  # type: ignore[no-untyped-def]
        """Two items, then an error."""
        yield 1
        yield 2
        raise OSError("disk gone")

    registry = ToolRegistry()
    registry.add(flaky)
    got: list[int] = []
    with pytest.raises(ToolError, match="disk gone"):
        async for batch in ToolBox(registry).stream("flaky", batch_size=10, batch_timeout_s=0.001):
            got.extend(batch)
    assert got == [1, 2]


async def test_a_stalled_stream_times_out() -> None:
    @tool(timeout_s=0.05)
    async def stalls():  # type: ignore[no-untyped-def]
        """One item, then silence."""
        yield "a"
        await asyncio.sleep(10)
        yield "b"

    registry = ToolRegistry()
    registry.add(stalls)
    got = []
    with pytest.raises(ToolTimeoutError, match="sent no item for 0.05 s"):
        async for batch in ToolBox(registry).stream("stalls", batch_size=10, batch_timeout_s=0.001):
            got.extend(batch)
    assert got == ["a"]


async def test_stream_refuses_unknown_tools_bad_arguments_and_plain_tools() -> None:
    @tool
    async def plain(x: int) -> int:
        """Not a stream."""
        return x

    @tool
    async def gen(x: int):  # type: ignore[no-untyped-def]
        """A stream."""
        yield x

    registry = ToolRegistry()
    registry.add(plain)
    registry.add(gen)
    box = ToolBox(registry)
    with pytest.raises(UnknownToolError):
        await anext(box.stream("nope"))
    with pytest.raises(ToolArgumentsError):
        await anext(box.stream("gen", {"x": "y"}))
    with pytest.raises(ToolError, match="does not stream"):
        await anext(box.stream("plain", {"x": 1}))
    # The model calls a streaming tool like any other: it gets the items as one list.
    result = await box.call("gen", {"x": 4})
    assert result.value == [4] and result.content == "[4]"
