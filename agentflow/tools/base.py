"""A tool: a name, a description, a JSON Schema for the arguments, and the policy every call runs under.

:class:`Tool` holds the one call path that every tool shares, Python functions
(:class:`~agentflow.tools.function.FunctionTool`) and MCP servers' tools (:class:`~agentflow.tools.mcp.MCPTool`)
alike: arguments validated and converted, then the attempt under the tool's timeout (one shared timer per tool,
not one per call), concurrency slot and circuit breaker, retried with backoff when the tool is idempotent.
Whatever goes wrong comes back as a :class:`ToolResult` whose ``content`` tells the model what happened, so a
bad call never crashes the agent::

    result = await get_weather.execute('{"city": "Oslo"}')
    result.outcome, result.content            # ("ok", '{"city":"Oslo",...}')
"""

from __future__ import annotations

import abc
import asyncio
import copy
import time
from collections.abc import AsyncIterator
from typing import Any, Final, Literal

import msgspec

from .. import tracing as _tracing
from .._deadlines import Deadlines, TimedTask, expire_task
from ..config import RetryConfig, ToolConfig
from ..config.schema import DEFAULT_MAX_RESULT_BYTES, DEFAULT_TOOL_TIMEOUT_S
from ..errors import (
    CircuitOpenError,
    MCPUnavailableError,
    ToolArgumentsError,
    ToolError,
    ToolExecutionError,
    ToolTimeoutError,
    UnknownToolError,
)
from ..metrics import Pow2Histogram
from ..resilience.breaker import BreakerConfig, CircuitBreaker
from ..resilience.retry import RetryPolicy
from .config import breaker_config

__all__ = ["OUTCOMES", "Outcome", "Tool", "ToolResult", "ToolStatistics"]

Outcome = Literal["ok", "error", "bad_arguments", "unknown_tool", "timeout", "unavailable"]
#: Every outcome of a tool call (the ``outcome`` label of the tool-call metrics).
OUTCOMES: Final[tuple[Outcome, ...]] = ("ok", "error", "bad_arguments", "unknown_tool", "timeout", "unavailable")

_now = time.perf_counter
_current_task = asyncio.current_task
_get_running_loop = asyncio.get_running_loop
_encode = msgspec.json.Encoder().encode


class ToolResult(msgspec.Struct, kw_only=True):
    """One tool call's outcome. ``content`` is what the model reads (the value as text, or the error's
    sentence), cut to the tool's ``max_result_bytes``; ``value`` the Python value (None on failure).

    ``message()`` is the OpenAI ``role: "tool"`` message; ``unwrap()`` returns ``value`` or raises ``error``.
    """

    name: str
    arguments: Any
    content: str
    outcome: Outcome
    duration_s: float
    id: str = ""
    value: Any = None
    error: Any = None
    truncated: bool = False
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None

    def message(self) -> dict[str, str]:
        return {"role": "tool", "tool_call_id": self.id, "content": self.content}

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class ToolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one tool: calls by outcome since it was made, calls running now, mean duration."""

    name: str
    calls: int
    outcomes: dict[str, int]
    in_flight: int
    mean_duration_s: float
    breaker_state: str | None


class _Stats:
    __slots__ = ("duration", "in_flight", "outcomes")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.in_flight = 0
        self.duration = Pow2Histogram()


class _Runtime:
    """What a tool needs of the event loop it runs on: its timer and its concurrency semaphore.

    Kept per loop, because a tool defined at module level may serve several loops one after another (tests).
    """

    __slots__ = ("deadlines", "loop", "semaphore")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, concurrency: int | None) -> None:
        self.loop = loop
        self.deadlines = Deadlines(timeout_s, expire_task)
        self.semaphore = asyncio.Semaphore(concurrency) if concurrency is not None else None


class Tool(abc.ABC):
    """A tool the model can call: ``name``, ``description``, ``parameters`` (JSON Schema) and call policy.

    Subclasses implement :meth:`prepare` (validate the model's arguments) and :meth:`_run` (do the work);
    everything else, the one call path included, lives here.
    """

    __slots__ = (
        "breaker",
        "concurrency",
        "description",
        "idempotent",
        "max_result_bytes",
        "name",
        "parameters",
        "retry",
        "streaming",
        "timeout_s",
        "_rt",
        "_stats",
    )

    def __init__(
        self,
        name: str,
        description: str,
        parameters: dict[str, Any],
        *,
        timeout_s: float = DEFAULT_TOOL_TIMEOUT_S,
        concurrency: int | None = None,
        idempotent: bool = False,
        retry: RetryPolicy | RetryConfig | None = None,
        breaker: CircuitBreaker | BreakerConfig | bool | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        streaming: bool = False,
    ) -> None:
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"A tool name must be a non-empty word without spaces, not {name!r}.")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s of tool {name!r} must be greater than 0, not {timeout_s!r}.")
        if concurrency is not None and concurrency < 1:
            raise ValueError(f"concurrency of tool {name!r} must be at least 1, not {concurrency!r}.")
        if max_result_bytes < 64:
            raise ValueError(f"max_result_bytes of tool {name!r} must be at least 64, not {max_result_bytes!r}.")
        self.name = name
        self.description = description
        self.parameters = parameters
        self.timeout_s = float(timeout_s)
        self.concurrency = concurrency
        self.idempotent = idempotent
        self.retry = RetryPolicy.from_config(retry) if isinstance(retry, RetryConfig) else retry
        self.breaker = self._make_breaker(breaker)
        self.max_result_bytes = max_result_bytes
        self.streaming = streaming
        self._rt: _Runtime | None = None
        self._stats = _Stats()

    def _make_breaker(self, breaker: CircuitBreaker | BreakerConfig | bool | None) -> CircuitBreaker | None:
        if breaker is None or breaker is False:
            return None
        if isinstance(breaker, CircuitBreaker):
            return breaker
        return CircuitBreaker(f"tool:{self.name}", None if breaker is True else breaker)

    # ---- what subclasses provide --------------------------------------------------------------------------

    @abc.abstractmethod
    def prepare(self, arguments: Any) -> Any:
        """Validate and convert the model's arguments (a JSON string, a mapping or None); raise
        :class:`ToolArgumentsError` with a sentence the model can act on."""

    @abc.abstractmethod
    async def _run(self, args: Any, key: str | None, workflow: str | None) -> Any:
        """Do the work with the prepared arguments; ``key`` and ``workflow`` are the caller's (affinity)."""

    def open_stream(self, args: Any) -> AsyncIterator[Any]:
        """The items of a streaming tool, for :meth:`ToolBox.stream`."""
        raise ToolError(
            f"Tool {self.name!r} does not stream results (it is not an async generator); call it with call().",
            tool=self.name,
        )

    # ---- the call path ------------------------------------------------------------------------------------

    def schema(self, wire_name: str | None = None) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {name, description, parameters}}``."""
        return {
            "type": "function",
            "function": {
                "name": wire_name or self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    async def execute(
        self, arguments: Any = None, *, call_id: str = "", key: str | None = None, workflow: str | None = None
    ) -> ToolResult:
        """Validate ``arguments``, run the tool under its policy and return the result; never raises for a
        failed call (only cancellation propagates). ``key`` and ``workflow`` route calls of stateful MCP
        servers (affinity)."""
        t0 = _now()
        try:
            args = self.prepare(arguments)
        except ToolArgumentsError as exc:
            return self._finish(call_id, arguments, None, exc, "bad_arguments", t0, 0)
        attempt = 1
        while True:
            try:
                value = await self._attempt(args, key, workflow)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the model's tool message
                err = exc if isinstance(exc, ToolError | CircuitOpenError) else self._wrap(exc)
            else:
                return self._finish(call_id, args, value, None, "ok", t0, attempt)
            policy = self.retry
            if policy is None or not self.idempotent or not policy.should_retry(attempt) or not _retriable(err):
                break
            await asyncio.sleep(policy.delay_s(attempt, err))
            attempt += 1
        return self._finish(call_id, args, None, err, _outcome(err), t0, attempt)

    async def _attempt(self, args: Any, key: str | None, workflow: str | None) -> Any:
        rt = self._rt
        loop = _get_running_loop()
        if rt is None or rt.loop is not loop:
            rt = self._rt = _Runtime(loop, self.timeout_s, self.concurrency)
        task = _current_task(loop)
        assert task is not None
        timed = TimedTask(task)
        deadlines = rt.deadlines
        deadlines.add(loop, timed, None, self.timeout_s)
        stats = self._stats
        stats.in_flight += 1
        permit = None
        try:
            if self.breaker is not None:
                permit = self.breaker.acquire()  # raises CircuitOpenError: nothing was tried
            sem = rt.semaphore
            if sem is None:
                value = await self._run(args, key, workflow)
            else:
                async with sem:
                    value = await self._run(args, key, workflow)
        except BaseException as exc:
            if timed.timed_out():
                # Our timer cancelled the attempt (as asyncio.timeout does); a cancellation from outside as well
                # propagates untouched.
                timeout = ToolTimeoutError(
                    f"Tool {self.name!r} did not finish within {self.timeout_s:g} s and was cancelled; call it "
                    "with a smaller request, or try another approach.",
                    tool=self.name,
                    timeout_s=self.timeout_s,
                )
                if permit is not None:
                    permit.failure(timeout)
                raise timeout from None
            if permit is not None:
                if isinstance(exc, Exception):
                    permit.failure(exc)
                else:
                    permit.cancel()
            raise
        else:
            timed.settle()  # finished as the timer fired, having swallowed its cancellation: take it back
            if permit is not None:
                permit.success()
            return value
        finally:
            deadlines.discard(timed)
            stats.in_flight -= 1

    def _wrap(self, exc: Exception) -> ToolError:
        err = ToolExecutionError(f"Tool {self.name!r} failed: {type(exc).__name__}: {exc}", tool=self.name)
        err.__cause__ = exc
        return err

    def _finish(
        self,
        call_id: str,
        arguments: Any,
        value: Any,
        err: BaseException | None,
        outcome: Outcome,
        t0: float,
        attempts: int,
    ) -> ToolResult:
        took = _now() - t0
        stats = self._stats
        stats.outcomes[outcome] += 1
        stats.duration.observe(took)
        if _tracing.TRACER is not None:  # a span per call, MCP tools naming their server ([tracing])
            pool = getattr(self, "pool", None)
            server = getattr(pool, "name", None) if pool is not None else None
            _tracing.tool_call(self.name, call_id, outcome, t0, attempts, server=server, error=err)
        content, truncated = self.clip(self.render(value) if err is None else str(err))
        return ToolResult(
            name=self.name,
            arguments=arguments,
            content=content,
            outcome=outcome,
            duration_s=took,
            id=call_id,
            value=value,
            error=err,
            truncated=truncated,
            attempts=attempts,
        )

    def render(self, value: Any) -> str:
        """The value as the model reads it: a string as is, anything else as JSON (``str()`` if not JSON)."""
        if type(value) is str:
            return value
        try:
            return _encode(value).decode()
        except (TypeError, ValueError):
            return str(value)

    def clip(self, text: str) -> tuple[str, bool]:
        """``text`` cut to ``max_result_bytes`` of UTF-8 with a note that says so, and whether it was cut."""
        limit = self.max_result_bytes
        if len(text) * 4 <= limit:  # no string of this length can be over the limit: skip the encoding
            return text, False
        data = text.encode()
        if len(data) <= limit:
            return text, False
        note = (
            f"\n[Result truncated: it was {len(data)} bytes, only the first {{}} are shown. Ask for less, for "
            "example with narrower arguments.]"
        )
        keep = max(0, limit - len(note) - 8)
        return data[:keep].decode(errors="ignore") + note.format(keep), True

    # ---- configuration and introspection ------------------------------------------------------------------

    def configured(self, cfg: ToolConfig | None) -> Tool:
        """A copy of this tool with the overrides of ``[tools.NAME]`` applied (this tool itself if none)."""
        if cfg is None:
            return self
        new = copy.copy(self)
        new._rt = None
        new._stats = _Stats()
        if cfg.timeout_s is not None:
            new.timeout_s = cfg.timeout_s
        if cfg.concurrency is not None:
            new.concurrency = cfg.concurrency
        if cfg.idempotent is not None:
            new.idempotent = cfg.idempotent
        if cfg.max_result_bytes is not None:
            new.max_result_bytes = cfg.max_result_bytes
        if cfg.retry is not None:
            new.retry = RetryPolicy.from_config(cfg.retry)
        if cfg.breaker is not None:
            new.breaker = CircuitBreaker(
                f"tool:{self.name}", breaker_config(cfg.breaker, where=f"tools.{self.name}.breaker")
            )
        return new

    @property
    def duration(self) -> Pow2Histogram:
        """Durations of every call (all outcomes), for the metrics collector."""
        return self._stats.duration

    def statistics(self) -> ToolStatistics:
        s = self._stats
        calls = sum(s.outcomes.values())
        return ToolStatistics(
            name=self.name,
            calls=calls,
            outcomes=dict(s.outcomes),
            in_flight=s.in_flight,
            mean_duration_s=s.duration.sum / calls if calls else 0.0,
            breaker_state=self.breaker.state.value if self.breaker is not None else None,
        )

    def __repr__(self) -> str:
        s = self._stats
        failed = sum(s.outcomes.values()) - s.outcomes["ok"]
        return (
            f"<{type(self).__name__} {self.name!r} in_flight={s.in_flight} ok={s.outcomes['ok']} failed={failed} "
            f"timeout_s={self.timeout_s:g}>"
        )


def _retriable(err: BaseException) -> bool:
    # Bad arguments stay bad, and an open breaker says when to come back: neither is worth an immediate retry.
    return not isinstance(err, ToolArgumentsError | UnknownToolError | CircuitOpenError)


def _outcome(err: BaseException) -> Outcome:
    if isinstance(err, ToolTimeoutError):
        return "timeout"
    if isinstance(err, ToolArgumentsError):
        return "bad_arguments"
    if isinstance(err, UnknownToolError):
        return "unknown_tool"
    if isinstance(err, MCPUnavailableError | CircuitOpenError):
        return "unavailable"
    return "error"
