"""What an agent holds of the tools: a :class:`ToolSet` (the selection) and a :class:`ToolBox` (``ctx.tools``).

A ToolSet is made once per agent from its ``tools=[...]`` patterns and follows the registry as MCP servers come
and go. A ToolBox is the per-event view: the same tools, the agent's ``max_parallel_tools``, and the event's key
and workflow, which route calls of stateful MCP servers::

    box = ToolBox(registry.select(["get_weather", "search.*"]), max_parallel=4, key=event.key)
    box.schemas()                                          # the request's "tools"
    results = await box.call_many(response.tool_calls)     # in parallel, in call order, never raises
    messages += [r.message() for r in results]

    async for batch in box.stream("tail_log", {"path": "app.log"}, batch_size=100, batch_timeout_s=0.05):
        handle(batch)                                      # items in batches as the tool yields them

Names on the wire: OpenAI function names allow only ``[A-Za-z0-9_-]``, so ``search.web`` is sent as
``search__web``; :meth:`ToolBox.call` accepts either spelling.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import re
from collections.abc import AsyncIterator, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from ..errors import ConfigError, ToolError, ToolTimeoutError, UnknownToolError
from ..llm.toolspec import CheckedTools
from .base import Tool, ToolResult
from .loops import call_parts
from .registry import ToolRegistry

if TYPE_CHECKING:
    from .metrics import AgentToolMetrics

__all__ = ["DEFAULT_MAX_PARALLEL_TOOLS", "ToolBox", "ToolSet", "unknown_tool_result", "wire_name"]

DEFAULT_MAX_PARALLEL_TOOLS: Final = 4
_MAX_NAMES_SHOWN: Final = 30
_WIRE_BAD = re.compile(r"[^A-Za-z0-9_-]")
_WIRE_MAX = 64


def wire_name(name: str) -> str:
    """The name the model sees: ``.`` becomes ``__``, other characters OpenAI refuses become ``_``, at most 64."""
    wire = _WIRE_BAD.sub("_", name.replace(".", "__"))
    if len(wire) > _WIRE_MAX:
        wire = wire[: _WIRE_MAX - 9] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return wire


class ToolSet:
    """The tools of a registry that match ``patterns`` (exact names or globs; None selects all).

    Looked up by name or wire name; rebuilt only when the registry's version moved.
    """

    __slots__ = ("_by_name", "_registry", "_schemas", "_tools", "_version", "patterns", "unknown_calls")

    def __init__(self, registry: ToolRegistry, patterns: Sequence[str] | None = None) -> None:
        self._registry = registry
        self.patterns = tuple(patterns) if patterns is not None else None
        self._version = -1
        self._by_name: dict[str, Tool] = {}
        self._tools: list[Tool] = []
        self._schemas: list[dict[str, Any]] = CheckedTools()
        self.unknown_calls = 0

    def _sync(self) -> None:
        registry = self._registry
        pats = self.patterns
        tools = [t for t in sorted(registry, key=lambda t: t.name) if pats is None or _matches(t.name, pats)]
        by_name: dict[str, Tool] = {}
        schemas: list[dict[str, Any]] = []
        taken: set[str] = set()
        for t in tools:
            wire = wire_name(t.name)
            n = 2
            while wire in taken:  # two names that only differ in characters the wire cannot carry
                suffix = f"_{n}"
                wire = wire_name(t.name)[: _WIRE_MAX - len(suffix)] + suffix
                n += 1
            taken.add(wire)
            by_name[wire] = t
            by_name[t.name] = t
            schemas.append(t.schema(wire))
        self._by_name = by_name
        self._tools = tools
        self._schemas = CheckedTools(schemas)  # checked once here, not on each model call
        self._version = registry.version

    def get(self, name: str) -> Tool | None:
        if self._version != self._registry.version:
            self._sync()
        return self._by_name.get(name)

    def tools(self) -> list[Tool]:
        if self._version != self._registry.version:
            self._sync()
        return list(self._tools)

    def names(self) -> list[str]:
        return [t.name for t in self.tools()]

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list (shared: do not modify it)."""
        if self._version != self._registry.version:
            self._sync()
        return self._schemas

    def missing(self) -> list[str]:
        """Patterns that select nothing now: a misspelt tool, or an MCP server that has not listed its tools."""
        if self.patterns is None:
            return []
        names = [t.name for t in self._registry]
        return [p for p in self.patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]

    def check(self, owner: str) -> None:
        """Raise :class:`ConfigError` when a pattern selects nothing, naming it and the closest tool name."""
        missing = self.missing()
        if not missing:
            return
        import difflib  # only on this error path

        names = self._registry.names()
        pattern = missing[0]
        close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        shown = ", ".join(names[:_MAX_NAMES_SHOWN]) + (" ..." if len(names) > _MAX_NAMES_SHOWN else "")
        raise ConfigError(
            f"{owner} asks for the tool {pattern!r}, which matches no registered tool{hint} Registered tools: "
            f"{shown or '(none)'}. Fix the name in tools=[...] (or [agents.NAME] tools), or register the tool with "
            "@runner.tool (an MCP server's tools are NAME.tool of its [mcp.NAME]).",
            key=pattern,
        )

    def __len__(self) -> int:
        return len(self.tools())

    def __repr__(self) -> str:
        return f"<ToolSet tools={len(self)} patterns={list(self.patterns) if self.patterns is not None else 'all'}>"


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(p == name or fnmatch.fnmatchcase(name, p) for p in patterns)


def unknown_tool_result(name: str, arguments: Any, call_id: str, known: Iterable[str]) -> ToolResult:
    """The result of a call to a tool the agent does not have: an error message listing the tools it has."""
    names = sorted(known)
    shown = ", ".join(names[:_MAX_NAMES_SHOWN]) + (" ..." if len(names) > _MAX_NAMES_SHOWN else "")
    err = UnknownToolError(
        f"There is no tool named {name!r}. Call one of the available tools: {shown or '(none)'}.", tool=name
    )
    return ToolResult(
        name=name, arguments=arguments, content=str(err), outcome="unknown_tool", duration_s=0.0, id=call_id, error=err
    )


async def _ready(result: ToolResult) -> ToolResult:
    return result


class ToolBox:
    """``ctx.tools``: call the agent's tools one at a time, several in parallel, or as a stream.

    ``max_parallel`` bounds the calls :meth:`call_many` runs at once; ``key`` and ``workflow`` are the event's,
    passed to MCP servers configured with affinity.
    """

    __slots__ = ("_set", "key", "max_parallel", "metrics", "workflow")

    def __init__(
        self,
        tools: ToolSet | ToolRegistry,
        *,
        max_parallel: int = DEFAULT_MAX_PARALLEL_TOOLS,
        key: str | None = None,
        workflow: str | None = None,
        metrics: AgentToolMetrics | None = None,
    ) -> None:
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel!r}.")
        self._set = tools if isinstance(tools, ToolSet) else tools.select(None)
        self.max_parallel = max_parallel
        self.key = key
        self.workflow = workflow
        #: The agent's counters (parallel width here, turns and loops in ctx.llm.run); None outside a runner.
        self.metrics = metrics

    def schemas(self) -> list[dict[str, Any]]:
        """The ``tools`` of a chat request (OpenAI function entries)."""
        return self._set.schemas()

    def names(self) -> list[str]:
        return self._set.names()

    def get(self, name: str) -> Tool | None:
        return self._set.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._set.get(name) is not None

    def call(self, name: str, arguments: Any = None, *, call_id: str = "") -> Coroutine[Any, Any, ToolResult]:
        """``await box.call(name, args)``: the :class:`ToolResult`; a failed call is a result, never raised.

        ``arguments`` may be a mapping, a JSON string (as the model sent it) or None.
        """
        # A plain function returning the tool's coroutine: one coroutine layer less on every call.
        t = self._set.get(name)
        if t is None:
            self._set.unknown_calls += 1
            return _ready(unknown_tool_result(name, arguments, call_id, self._set.names()))
        return t.execute(arguments, call_id=call_id, key=self.key, workflow=self.workflow)

    async def call_many(self, calls: Iterable[Any]) -> list[ToolResult]:
        """Run tool calls in parallel, at most ``max_parallel`` at once; results in call order.

        One call failing (bad arguments, unknown tool, timeout, exception) is that call's result and does not
        cancel the others.
        """
        items = [call_parts(c) for c in calls]
        n = len(items)
        if n == 0:
            return []
        if self.metrics is not None:
            self.metrics.observe_width(min(n, self.max_parallel))
        if n == 1:
            cid, name, args = items[0]
            return [await self.call(name, args, call_id=cid)]
        results: list[ToolResult | None] = [None] * n
        order = iter(range(n))

        async def worker() -> None:
            for i in order:  # the workers share one iterator: each index is taken once
                cid, name, args = items[i]
                results[i] = await self.call(name, args, call_id=cid)

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(n, self.max_parallel) - 1):
                tg.create_task(worker())
            await worker()  # this task is a worker too: one task fewer to start
        return [r for r in results if r is not None]

    async def stream(
        self,
        name: str,
        arguments: Any = None,
        *,
        batch_size: int = 100,
        batch_timeout_s: float = 0.05,
        max_buffered: int | None = None,
    ) -> AsyncIterator[list[Any]]:
        """The items of a streaming tool in lists: a list as soon as ``batch_size`` items are in, or
        ``batch_timeout_s`` after the first item of a list came, whichever is first.

        At most ``max_buffered`` items (default ``4 * batch_size``) wait for the consumer; then the tool waits.
        The tool's ``timeout_s`` bounds the wait for each next item. Unlike :meth:`call`, failures raise
        (:class:`~agentflow.errors.ToolError` subclasses), after the items that came before them.
        """
        if batch_size < 1 or batch_timeout_s < 0:
            raise ValueError("batch_size must be at least 1 and batch_timeout_s at least 0.")
        t = self._set.get(name)
        if t is None:
            raise UnknownToolError(f"There is no tool named {name!r}.", tool=name)
        limit = max_buffered if max_buffered is not None else 4 * batch_size
        pump = _Pump(t, t.open_stream(t.prepare(arguments)), batch_size, batch_timeout_s, max(limit, batch_size))
        try:
            while True:
                batch = await pump.next_batch()
                if batch is None:
                    return
                yield batch
        finally:
            await pump.aclose()

    def __repr__(self) -> str:
        return f"<ToolBox tools={len(self._set)} max_parallel={self.max_parallel} key={self.key!r}>"


class _Pump:
    """Runs a streaming tool in a task of its own and hands its items over in batches.

    The producer appends to a list; the consumer is woken when a batch is full, when the first item of a
    batch arrives (to arm the batch timer), and when the stream ends. A full buffer makes the producer wait.
    """

    def __init__(self, t: Tool, agen: AsyncIterator[Any], size: int, wait_s: float, limit: int) -> None:
        self.tool = t
        self.agen = agen
        self.size = size
        self.wait_s = wait_s
        self.limit = limit
        self.loop = asyncio.get_running_loop()
        self.buf: list[Any] = []
        self.first_at = 0.0
        self.last_at = self.loop.time()
        self.done = False
        self.error: BaseException | None = None
        self.wake: asyncio.Future[None] | None = None
        self.space: asyncio.Future[None] | None = None
        self.task = self.loop.create_task(self._produce())
        self.watchdog = self.loop.call_later(t.timeout_s, self._check_stall)

    async def _produce(self) -> None:
        buf = self.buf
        size = self.size
        loop = self.loop
        try:
            async for item in self.agen:
                buf.append(item)
                n = len(buf)
                self.last_at = loop.time()
                if n == 1:
                    self.first_at = self.last_at
                    self._wake()
                elif n >= size:
                    self._wake()
                if n >= self.limit:
                    self.space = loop.create_future()
                    await self.space
        except asyncio.CancelledError:
            raise
        except ToolError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - handed to the consumer as the tool's failure
            err = ToolError(f"Tool {self.tool.name!r} failed: {type(exc).__name__}: {exc}", tool=self.tool.name)
            err.__cause__ = exc
            self.error = err
        finally:
            self.done = True
            self._wake()

    def _wake(self) -> None:
        w = self.wake
        if w is not None and not w.done():
            w.set_result(None)

    def _check_stall(self) -> None:
        if self.done:
            return
        idle = self.loop.time() - self.last_at
        timeout_s = self.tool.timeout_s
        if idle >= timeout_s and len(self.buf) < self.limit:  # a full buffer is the consumer's delay, not the tool's
            self.error = ToolTimeoutError(
                f"Tool {self.tool.name!r} sent no item for {timeout_s:g} s and was stopped.",
                tool=self.tool.name,
                timeout_s=timeout_s,
            )
            self.task.cancel()
            self.done = True
            self._wake()
        else:
            self.watchdog = self.loop.call_later(max(timeout_s - idle, 0.001), self._check_stall)

    async def next_batch(self) -> list[Any] | None:
        buf = self.buf
        loop = self.loop
        while True:
            n = len(buf)
            if n and (n >= self.size or self.done or loop.time() >= self.first_at + self.wait_s):
                batch = buf[: self.size]
                del buf[: self.size]
                if buf:
                    self.first_at = loop.time()  # the rest start a new batch; its timer starts now
                space = self.space
                if space is not None and not space.done():
                    space.set_result(None)
                return batch
            if self.done:
                if self.error is not None:
                    raise self.error
                return None
            fut = self.wake = loop.create_future()
            timer = loop.call_at(self.first_at + self.wait_s, self._wake) if n else None
            try:
                await fut
            finally:
                self.wake = None
                if timer is not None:
                    timer.cancel()

    async def aclose(self) -> None:
        self.watchdog.cancel()
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            if not self.task.cancelled():
                raise
        finally:
            aclose = getattr(self.agen, "aclose", None)
            if aclose is not None:
                await aclose()
