"""Python functions as tools: :func:`tool` turns an ``async def`` into a :class:`FunctionTool`::

    @tool(timeout_s=5, idempotent=True)
    async def get_weather(city: str, days: int = 1) -> Forecast:
        \"\"\"The forecast for a city.

        Args:
            city: The city's name, in English.
            days: How many days ahead, 1 to 7.
        \"\"\"

The name is the function's, the description its docstring, the parameters' JSON Schema comes from the type
hints (see :mod:`agentflow.tools._schema`); the same msgspec type validates and converts the arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, overload

import msgspec

from ..config import RetryConfig
from ..config.schema import DEFAULT_MAX_RESULT_BYTES, DEFAULT_TOOL_TIMEOUT_S
from ..errors import ToolArgumentsError
from ..resilience.breaker import BreakerConfig, CircuitBreaker
from ..resilience.retry import RetryPolicy
from ._schema import describe, parameters_schema, parameters_struct
from .base import Tool

__all__ = ["FunctionTool", "tool"]


class FunctionTool(Tool):
    """A tool made from an ``async def`` (or an async generator, a streaming tool) by :func:`tool`.

    Calling the object calls the function directly: ``await get_weather("Oslo")``.
    """

    __slots__ = ("_no_params", "args_type", "fn")

    def __init__(
        self, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None, **policy: Any
    ):
        tool_name: str = name or str(getattr(fn, "__name__", ""))
        if "." in tool_name:
            raise ValueError(
                f"Tool name {tool_name!r} contains '.', which separates an MCP server's name from its tools; "
                "use '_' or '-' instead."
            )
        streaming = inspect.isasyncgenfunction(fn)
        if not streaming and not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"Tool {tool_name!r} must be an async function (async def) or an async generator; run blocking "
                "code inside it with asyncio.to_thread."
            )
        summary, docs = describe(fn)
        self.fn = fn
        self.args_type = parameters_struct(fn, tool_name, docs)
        self._no_params = not self.args_type.__struct_fields__
        super().__init__(
            tool_name,
            description if description is not None else summary,
            parameters_schema(self.args_type),
            streaming=streaming,
            **policy,
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def prepare(self, arguments: Any) -> dict[str, Any]:
        if self._no_params and not arguments:  # None, "", {}: nothing to check, nothing to convert
            return {}
        t = self.args_type
        try:
            if arguments is None or arguments == "":
                s = msgspec.convert({}, t)
            elif isinstance(arguments, str | bytes):
                s = msgspec.json.decode(arguments, type=t, strict=False)
            else:
                s = msgspec.convert(arguments, t, strict=False)
        except msgspec.ValidationError as exc:
            raise ToolArgumentsError(
                f"The arguments for tool {self.name!r} do not match its parameters: {exc}. Call it again with "
                "arguments that match its schema.",
                tool=self.name,
            ) from None
        except msgspec.DecodeError as exc:
            raise ToolArgumentsError(
                f"The arguments for tool {self.name!r} are not valid JSON ({exc}); send a JSON object.",
                tool=self.name,
            ) from None
        return msgspec.structs.asdict(s)

    async def _run(self, args: dict[str, Any], key: str | None, workflow: str | None) -> Any:
        if self.streaming:
            return await self._collect(args)
        return await self.fn(**args)

    async def _collect(self, args: dict[str, Any]) -> list[Any]:
        # A streaming tool called for one answer: gather items until the rendered list would be over the
        # result limit (the rest could not be shown anyway), then stop the generator.
        items: list[Any] = []
        size = 2
        agen = self.fn(**args)
        try:
            async for item in agen:
                items.append(item)
                size += len(self.render(item)) + 1
                if size > self.max_result_bytes:
                    break
        finally:
            await agen.aclose()
        return items

    def open_stream(self, args: dict[str, Any]) -> AsyncIterator[Any]:
        if not self.streaming:
            return super().open_stream(args)
        agen: AsyncIterator[Any] = self.fn(**args)
        return agen


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    concurrency: int | None = None,
    idempotent: bool = False,
    retry: RetryPolicy | RetryConfig | None = None,
    breaker: CircuitBreaker | BreakerConfig | bool | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
    concurrency: int | None = None,
    idempotent: bool = False,
    retry: RetryPolicy | RetryConfig | None = None,
    breaker: CircuitBreaker | BreakerConfig | bool | None = None,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Make a :class:`FunctionTool` of an async function; usable bare (``@tool``) or with options::

        @tool(timeout_s=5, concurrency=4, idempotent=True, retry=RetryConfig(max_attempts=3))
        async def get_weather(city: str, days: int = 1) -> Forecast:
            \"\"\"The forecast for a city.\"\"\"

    The name is the function's, the description its docstring (up to an ``Args:`` section, whose entries
    describe the parameters), the parameters' JSON Schema comes from the type hints.
    """

    def make(f: Callable[..., Any]) -> FunctionTool:
        return FunctionTool(
            f,
            name=name,
            description=description,
            timeout_s=timeout_s,
            concurrency=concurrency,
            idempotent=idempotent,
            retry=retry,
            breaker=breaker,
            max_result_bytes=max_result_bytes,
        )

    return make if fn is None else make(fn)
