"""Python tools: schema from type hints and docstring, argument validation and conversion, call policy."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
import pytest

from agentflow.config import RetryConfig
from agentflow.errors import (
    CircuitOpenError,
    ToolArgumentsError,
    ToolExecutionError,
    ToolTimeoutError,
    UnknownToolError,
)
from agentflow.resilience.breaker import BreakerConfig
from agentflow.tools import FunctionTool, ToolConfig, ToolRegistry, tool


class Forecast(msgspec.Struct):
    city: str
    days: int
    temperatures: list[float]


class Place(msgspec.Struct):
    name: str
    country: str = "NO"


@tool
async def get_weather(city: str, days: int = 1) -> Forecast:
    """The forecast for a city.

    Several lines of summary are kept.

    Args:
        city: The city's name, in English.
        days: How many days ahead,
            from 1 to 7.

    Returns:
        The forecast.
    """
    return Forecast(city, days, [20.5] * days)


@tool(name="locate", description="Find a place.", timeout_s=5, idempotent=True)
async def _locate(place: Place, limit: Annotated[int, msgspec.Meta(ge=1, le=10, description="At most this many.")] = 3):
    return [place.name] * limit


def test_schema_comes_from_the_type_hints_and_the_docstring() -> None:
    entry = get_weather.schema()
    assert entry["type"] == "function"
    fn = entry["function"]
    assert fn["name"] == "get_weather"
    assert fn["description"] == "The forecast for a city.\n\nSeveral lines of summary are kept."
    params = fn["parameters"]
    assert params["type"] == "object"
    assert params["required"] == ["city"]
    assert params["additionalProperties"] is False
    assert params["properties"]["city"] == {"type": "string", "description": "The city's name, in English."}
    assert params["properties"]["days"] == {
        "type": "integer",
        "default": 1,
        "description": "How many days ahead, from 1 to 7.",
    }
    assert "title" not in params


def test_nested_types_go_under_defs_and_meta_descriptions_are_kept() -> None:
    params = _locate.parameters
    assert _locate.name == "locate"
    assert _locate.description == "Find a place."
    assert params["properties"]["place"] == {"$ref": "#/$defs/Place"}
    assert params["$defs"]["Place"]["required"] == ["name"]
    limit = params["properties"]["limit"]
    assert limit["minimum"] == 1 and limit["maximum"] == 10 and limit["description"] == "At most this many."
    assert _locate.timeout_s == 5 and _locate.idempotent


async def test_arguments_are_validated_and_converted_before_the_call() -> None:
    from_json = await get_weather.execute('{"city": "Oslo", "days": "2"}')
    assert from_json.outcome == "ok"
    assert from_json.value == Forecast("Oslo", 2, [20.5, 20.5])
    assert from_json.arguments == {"city": "Oslo", "days": 2}
    assert from_json.content == '{"city":"Oslo","days":2,"temperatures":[20.5,20.5]}'
    from_dict = await get_weather.execute({"city": "Bergen"})
    assert from_dict.value.days == 1
    nested = await _locate.execute({"place": {"name": "Tromsø"}, "limit": 2})
    assert nested.value == ["Tromsø", "Tromsø"]


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({}, "missing required field `city`"),
        ({"city": "Oslo", "days": "many"}, "Expected `int`"),
        ({"city": "Oslo", "hours": 3}, "unknown field `hours`"),
        ('{"city": ', "not valid JSON"),
        ("[1, 2]", "Expected `object`, got `array`"),
    ],
)
async def test_bad_arguments_become_an_error_result_the_model_can_act_on(arguments: Any, says: str) -> None:
    result = await get_weather.execute(arguments, call_id="call_1")
    assert result.outcome == "bad_arguments"
    assert not result.ok and isinstance(result.error, ToolArgumentsError)
    assert says in result.content
    assert result.content.startswith("The arguments for tool 'get_weather'")
    assert result.message() == {"role": "tool", "tool_call_id": "call_1", "content": result.content}
    assert result.attempts == 0
    with pytest.raises(ToolArgumentsError):
        result.unwrap()


async def test_meta_constraints_are_checked() -> None:
    result = await _locate.execute({"place": {"name": "x"}, "limit": 11})
    assert result.outcome == "bad_arguments"
    assert "<= 10" in result.content


async def test_a_tool_without_parameters_takes_none_empty_or_an_empty_object() -> None:
    @tool
    async def ping() -> str:
        """Answer pong."""
        return "pong"

    for arguments in (None, "", {}, "{}"):
        assert (await ping.execute(arguments)).content == "pong"
    assert (await ping.execute({"x": 1})).outcome == "bad_arguments"


def test_tool_refuses_what_it_cannot_describe() -> None:
    def sync(x: int) -> int:
        return x

    async def star(*args: int) -> None:
        pass

    async def dotted() -> None:
        pass

    with pytest.raises(TypeError, match="must be an async function"):
        tool(sync)
    with pytest.raises(TypeError, match="cannot be passed by name"):
        tool(star)
    with pytest.raises(ValueError, match="contains '.'"):
        tool(dotted, name="search.web")


async def test_an_exception_becomes_an_error_result_with_its_type_and_message() -> None:
    @tool
    async def broken(x: int) -> int:
        """Always fails."""
        raise LookupError(f"no row {x}")

    result = await broken.execute({"x": 7})
    assert result.outcome == "error"
    assert result.content == "Tool 'broken' failed: LookupError: no row 7"
    assert isinstance(result.error, ToolExecutionError)
    assert isinstance(result.error.__cause__, LookupError)


async def test_a_tool_past_its_timeout_is_cancelled_and_reported() -> None:
    finished = []

    @tool(timeout_s=0.05)
    async def slow() -> str:
        """Takes too long."""
        await asyncio.sleep(5)
        finished.append(True)
        return "late"

    result = await slow.execute()
    assert result.outcome == "timeout"
    assert isinstance(result.error, ToolTimeoutError) and result.error.timeout_s == 0.05
    assert "did not finish within 0.05 s" in result.content
    assert 0.04 < result.duration_s < 1.0
    assert finished == []
    # The timeout cancelled only the tool: this task goes on undisturbed.
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)


async def test_a_cancellation_from_outside_is_not_turned_into_a_timeout() -> None:
    started = asyncio.Event()

    @tool(timeout_s=10)
    async def waits() -> None:
        """Waits."""
        started.set()
        await asyncio.sleep(10)

    task = asyncio.ensure_future(waits.execute())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waits.statistics().in_flight == 0


async def test_long_results_are_truncated_and_the_message_says_so() -> None:
    @tool(max_result_bytes=200)
    async def big() -> str:
        """A long answer."""
        return "é" * 1000

    result = await big.execute()
    assert result.truncated
    assert len(result.content.encode()) <= 200
    assert "Result truncated: it was 2000 bytes" in result.content
    assert result.value == "é" * 1000  # the Python value is whole; only the model's copy is cut
    short = await get_weather.execute({"city": "x"})
    assert not short.truncated


async def test_idempotent_tools_are_retried_and_others_are_not() -> None:
    calls = {"safe": 0, "unsafe": 0}
    retry = RetryConfig(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.001, jitter_s=0.0)

    @tool(idempotent=True, retry=retry)
    async def safe() -> str:
        """Flaky but safe to repeat."""
        calls["safe"] += 1
        if calls["safe"] < 3:
            raise ConnectionError("reset")
        return "done"

    @tool(retry=retry)
    async def unsafe() -> str:
        """Flaky, with side effects."""
        calls["unsafe"] += 1
        raise ConnectionError("reset")

    ok = await safe.execute()
    assert (ok.outcome, ok.attempts, calls["safe"]) == ("ok", 3, 3)
    failed = await unsafe.execute()
    assert (failed.outcome, failed.attempts, calls["unsafe"]) == ("error", 1, 1)


async def test_bad_arguments_are_not_retried() -> None:
    calls = []

    @tool(idempotent=True, retry=RetryConfig(max_attempts=5, initial_backoff_s=0.0, jitter_s=0.0))
    async def strict(n: int) -> int:
        """Needs an int."""
        calls.append(n)
        return n

    assert (await strict.execute({"n": "x"})).outcome == "bad_arguments"
    assert calls == []


async def test_a_breaker_stops_calls_to_a_failing_tool() -> None:
    @tool(breaker=BreakerConfig(window_size=2, minimum_calls=2, failure_rate_threshold=0.5, open_wait_s=60))
    async def down() -> None:
        """A dependency that is down."""
        raise ConnectionError("refused")

    assert [(await down.execute()).outcome for _ in range(2)] == ["error", "error"]
    refused = await down.execute()
    assert refused.outcome == "unavailable"
    assert isinstance(refused.error, CircuitOpenError)
    assert "refused the call" in refused.content
    assert down.statistics().breaker_state == "open"


async def test_concurrency_bounds_the_calls_of_one_tool_running_at_once() -> None:
    running = peak = 0

    @tool(concurrency=2)
    async def limited() -> None:
        """At most two at once."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    results = await asyncio.gather(*(limited.execute() for _ in range(6)))
    assert [r.outcome for r in results] == ["ok"] * 6
    assert peak == 2


async def test_statistics_and_repr_show_live_state() -> None:
    @tool
    async def counted(fail: bool = False) -> str:
        """Counts."""
        if fail:
            raise ValueError("asked to")
        return "x"

    await counted.execute()
    await counted.execute({"fail": True})
    await counted.execute({"nope": 1})
    stats = counted.statistics()
    assert stats.calls == 3
    assert stats.outcomes["ok"] == 1 and stats.outcomes["error"] == 1 and stats.outcomes["bad_arguments"] == 1
    assert stats.in_flight == 0 and stats.mean_duration_s > 0
    assert repr(counted) == "<FunctionTool 'counted' in_flight=0 ok=1 failed=2 timeout_s=30>"


async def test_the_tool_stays_callable_as_the_function() -> None:
    assert await get_weather("Oslo", days=1) == Forecast("Oslo", 1, [20.5])
    assert isinstance(get_weather, FunctionTool)


async def test_registry_applies_tools_overrides_as_tools_are_added() -> None:
    registry = ToolRegistry(
        {
            "get_weather": ToolConfig(timeout_s=2.5, concurrency=3, idempotent=True, max_result_bytes=100),
            "gone": ToolConfig(timeout_s=1),
        }
    )
    configured = registry.add(get_weather)
    assert configured is not get_weather  # the module-level tool keeps its own settings
    assert (configured.timeout_s, configured.concurrency, configured.idempotent) == (2.5, 3, True)
    assert configured.max_result_bytes == 100
    assert get_weather.timeout_s == 30
    assert registry.unused_configs() == ["gone"]
    assert registry["get_weather"] is configured
    with pytest.raises(ValueError, match="already registered"):
        registry.add(get_weather)
    with pytest.raises(UnknownToolError):
        registry["missing"]

    async def plain(x: int) -> int:
        """A function becomes a tool when added."""
        return x

    added = registry.add(plain)
    assert added.name == "plain" and "plain" in registry
    assert registry.names() == ["get_weather", "plain"]


def test_tool_config_loads_from_toml_shaped_data() -> None:
    cfg = msgspec.convert({"timeout_s": 5, "retry": {"max_attempts": 2}, "breaker": {"minimum_calls": 5}}, ToolConfig)
    assert cfg.retry == RetryConfig(max_attempts=2)
    assert cfg.breaker is not None and cfg.breaker.minimum_calls == 5
    with pytest.raises(msgspec.ValidationError, match="unknown field `timeout`"):
        msgspec.convert({"timeout": 5}, ToolConfig)
