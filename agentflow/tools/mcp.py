"""MCP servers as tools, through pools of sessions that are opened once and reused.

One :class:`MCPPool` per ``[mcp.NAME]``. It opens ``sessions_per_replica`` sessions to each replica when it
starts (a stdio replica is a process of its own; an HTTP replica a URL), and every call reuses them: there is
never an ``initialize`` per call. Calls go round-robin over the healthy sessions with room
(``max_in_flight_per_session``); a breaker per replica stops calls to a replica that keeps failing. Each
session pings its server every ``health_interval_s``; a session that fails, closes or does not answer a ping
within ``ping_timeout_s`` is closed and reopened with exponential backoff, and its replica is skipped until it
answers again. A call that failed before it was sent (the replica refused the connection, or no longer knew
the session) goes to another replica; a call in flight when its session broke is retried only when the tool is
idempotent, otherwise the error is the model's tool message.

With ``affinity = "key"`` (or ``"workflow"``) the calls of one event key (or workflow) stay on one session for
as long as it lives, which stateful servers need; ``isolate = true`` also guarantees that no session ever serves
two keys: a key gets a fresh session, and a session goes back to the pool only by being reopened.

The server's tools become :class:`MCPTool` s named ``NAME.tool`` in a :class:`~agentflow.tools.ToolRegistry`,
with the server's input schema, replaced when the server sends ``notifications/tools/list_changed``::

    registry = ToolRegistry()
    async with MCPPool("search", MCPConfig(transport="stdio", command="search-server"), registry=registry):
        result = await ToolBox(registry).call("search.web", {"q": "agentflow"})

This is the only module that imports the official ``mcp`` SDK (``pip install 'agentflow[mcp]'``). Each session
lives in a task of its own, because the SDK's transports are anyio context managers that must be entered and
left by the same task; the pool's tasks live in one TaskGroup owned by the pool's supervisor task.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import msgspec

try:
    import anyio
    import httpx2
    import mcp.types as mcp_types
    from mcp import ClientSession, StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError as SDKError
    from pydantic import ValidationError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("agentflow.tools.mcp needs the MCP SDK; install it with: pip install 'agentflow[mcp]'") from exc

from ..errors import (
    CircuitOpenError,
    ConfigError,
    LifecycleError,
    MCPError,
    MCPUnavailableError,
    ToolArgumentsError,
    ToolExecutionError,
)
from ..resilience.breaker import CircuitBreaker
from .config import MCPConfig, resolve_env_keys
from .registry import Tool, ToolRegistry

__all__ = ["MCPHub", "MCPPool", "MCPPoolStatistics", "MCPTool", "ReplicaStatistics"]

logger = logging.getLogger(__name__)

#: JSON-RPC error code (implementation-defined range) of a request that never left this process.
NOT_SENT: Final = -32099
_CLIENT_INFO = mcp_types.Implementation(name="agentflow", version="0.1.0")
_MAX_LIST_PAGES: Final = 100
_WAIT_SLICE_S: Final = 0.25
_NAME = re.compile(r"[A-Za-z0-9_-]+")


class ReplicaStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """One replica: its target (URL without credentials or query, or ``#n`` for a stdio process), whether it
    answers, its breaker's state and its sessions that are ready now."""

    index: int
    target: str
    up: bool
    breaker_state: str
    sessions_ready: int
    sessions: int


class MCPPoolStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a pool. ``opened`` counts successful ``initialize`` handshakes (one per session opened);
    ``reconnects`` the openings after the first of each session; ``evicted_hung`` the sessions closed because
    a ping went unanswered; ``failovers`` the calls sent again elsewhere."""

    name: str
    transport: str
    state: str
    sessions: int
    ready: int
    in_flight: int
    calls: int
    failed_calls: int
    failovers: int
    opened: int
    reconnects: int
    evicted_hung: int
    keys: int
    tools: int
    replicas: tuple[ReplicaStatistics, ...]


def _safe_target(url: str) -> str:
    """A URL without userinfo, query or fragment: what may appear in logs, reprs and metrics."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^@/?#]*@)?([^/?#]*)([^?#]*)", url)
    return url if m is None else m.group(1) + m.group(2) + m.group(3)


class _NotSentTransport(httpx2.AsyncBaseTransport):
    """The HTTP transport under the SDK's streamable-HTTP client, telling "not sent" from "lost".

    A POST that fails in transport would crash the SDK's transport task; this answers it with a JSON-RPC error
    instead, whose code says whether the request can have reached the server: ``NOT_SENT`` when the connection
    could not be made, ``CONNECTION_CLOSED`` when it broke after that.
    """

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx2.TransportError as exc:
            if request.method != "POST":
                raise
            try:
                request_id = json.loads(await request.aread()).get("id")
            except (ValueError, AttributeError):
                request_id = None
            if request_id is None:  # a notification: nobody waits for an answer
                raise
            not_sent = isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout)
            code = NOT_SENT if not_sent else mcp_types.CONNECTION_CLOSED
            body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": type(exc).__name__}}
            return httpx2.Response(
                503, headers={"content-type": "application/json"}, content=json.dumps(body).encode(), request=request
            )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _WatchedStream:
    """The transport's read stream, calling ``on_eof`` once it ends: the first sign that a server went away."""

    def __init__(self, inner: Any, on_eof: Any) -> None:
        self._inner = inner
        self._on_eof = on_eof

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_eof()
            raise

    def __aiter__(self) -> _WatchedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _WatchedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Replica:
    __slots__ = ("breaker", "down", "index", "sessions", "target")

    def __init__(self, index: int, target: str, breaker: CircuitBreaker) -> None:
        self.index = index
        self.target = target
        self.breaker = breaker
        self.down = False
        self.sessions: list[_Session] = []

    def mark_down(self, pool: MCPPool) -> None:
        if not self.down:
            self.down = True
            logger.warning(
                "MCP server %r: replica %d (%s) is down; skipping it until it answers.",
                pool.name,
                self.index,
                _safe_target(self.target),
            )
            for s in self.sessions:  # have every session of it check at once instead of at its next ping
                s.poke()

    def mark_up(self, pool: MCPPool) -> None:
        if self.down:
            self.down = False
            logger.info(
                "MCP server %r: replica %d (%s) answers again.", pool.name, self.index, _safe_target(self.target)
            )
            pool._notify()


class _Session:
    """One session to one replica, owned by its task (:meth:`run`): opened, watched, reopened, closed there."""

    def __init__(self, pool: MCPPool, replica: _Replica, index: int) -> None:
        self.pool = pool
        self.replica = replica
        self.index = index
        self.state = "connecting"
        self.client: ClientSession | None = None
        self.in_flight = 0
        self.generation = 0
        self.owner: str | None = None  # isolate: the one key this session serves in this generation
        self.used = False  # isolate: served a key in this generation, so it may not serve another
        self.opened = 0
        self.hung = 0
        self._broken = False
        self._wakeup = asyncio.Event()
        self._connecting: anyio.CancelScope | None = None
        self.listing: list[mcp_types.Tool] = []

    def usable(self) -> bool:
        return self.state == "ready" and not self.replica.down and not self._broken

    def fail(self, reason: str) -> None:
        """Close this session (its task reopens it): it broke, hung, or must be recycled."""
        if not self._broken:
            self._broken = True
            if self.state == "ready":
                self.state = "closing"
            if not self.pool._closing:
                logger.info(
                    "MCP server %r: closing session %d of replica %d: %s",
                    self.pool.name,
                    self.index,
                    self.replica.index,
                    reason,
                )
        self._wakeup.set()

    def poke(self) -> None:
        self._wakeup.set()

    def stop(self) -> None:
        """Close for good: a session in use closes gracefully; one still connecting is cancelled."""
        self.fail("the pool is closing")
        if self._connecting is not None:
            self._connecting.cancel()

    def _on_message(self) -> Any:
        pool = self.pool

        async def handler(message: Any) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                pool._refresh_from = self  # ask the session that changed: replicas may differ for a moment
                pool._refresh.set()
            elif isinstance(message, Exception):
                logger.debug("MCP server %r session %d: transport reported %r", pool.name, self.index, message)

        return handler

    def _on_eof(self) -> None:
        self.fail("the connection closed")

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        pool = self.pool
        cfg = pool.config
        if cfg.transport == "stdio":
            params = StdioServerParameters(
                command=cfg.command, args=list(cfg.args), env=pool._env_values or None, cwd=cfg.cwd
            )
            async with stdio_client(params) as streams:
                yield streams
        else:
            timeout = httpx2.Timeout(cfg.connect_timeout_s, read=300.0)
            client = httpx2.AsyncClient(transport=_NotSentTransport(), headers=pool._headers, timeout=timeout)
            async with client, streamable_http_client(self.replica.target, http_client=client) as streams:
                yield streams

    async def run(self) -> None:
        pool = self.pool
        cfg = pool.config
        backoff = cfg.reconnect_backoff_s
        while not pool._closing:
            self.state = "connecting"
            self._broken = False
            self._wakeup.clear()
            was_ready = False
            try:
                # Closing cancels this scope while the session connects; once it is ready, closing goes through
                # _broken instead, so the transport shuts down gracefully (an HTTP session is deleted).
                with anyio.CancelScope() as scope:
                    self._connecting = scope
                    async with AsyncExitStack() as stack:
                        read, write = await stack.enter_async_context(self._transport())
                        client = await stack.enter_async_context(
                            ClientSession(
                                _WatchedStream(read, self._on_eof),
                                write,
                                message_handler=self._on_message(),
                                client_info=_CLIENT_INFO,
                            )
                        )
                        with anyio.fail_after(cfg.connect_timeout_s):
                            await client.initialize()
                            # Listing once per session also fills the SDK's cache of output schemas, which it
                            # would otherwise fill with a tools/list inside the session's first call.
                            self.listing = await _list_all(client)
                        self._connecting = None
                        self.client = client
                        self.state = "ready"
                        self.opened += 1
                        was_ready = True
                        backoff = cfg.reconnect_backoff_s
                        self.replica.mark_up(pool)
                        pool._session_ready(self)
                        await self._watch(client)
                        self.state = "closing"
                        self.client = None
            except Exception as exc:  # noqa: BLE001 - any failure of a session is the same: reopen it later
                if not pool._closing:
                    logger.warning(
                        "MCP server %r: session %d of replica %d (%s) failed: %s",
                        pool.name,
                        self.index,
                        self.replica.index,
                        _safe_target(self.replica.target),
                        _describe(exc),
                    )
                    if not was_ready:
                        self.replica.mark_down(pool)
            finally:
                self._connecting = None
                self.client = None
                self.generation += 1
                self.owner = None
                self.used = False
                self.state = "backoff"
                pool._notify()
            if pool._closing:
                break
            delay = backoff * (0.5 + random.random() / 2)
            backoff = min(max(backoff * 2, cfg.reconnect_backoff_s), cfg.max_reconnect_backoff_s)
            self._wakeup.clear()
            with anyio.move_on_after(delay):
                while not pool._closing:  # woken early only to close
                    await self._wakeup.wait()
                    self._wakeup.clear()
        self.state = "closed"

    async def _watch(self, client: ClientSession) -> None:
        """Ping every ``health_interval_s`` (at once when poked) until the session fails or the pool closes."""
        cfg = self.pool.config
        while True:
            with anyio.move_on_after(cfg.health_interval_s):
                await self._wakeup.wait()
            self._wakeup.clear()
            if self._broken or self.pool._closing:
                return
            try:
                with anyio.fail_after(cfg.ping_timeout_s):
                    await client.send_ping()
            except TimeoutError:
                self.hung += 1
                self.fail(f"it did not answer a ping within {cfg.ping_timeout_s:g} s")
                return
            except Exception as exc:  # noqa: BLE001
                self.fail(f"a ping failed: {_describe(exc)}")
                return
            self.replica.mark_up(self.pool)


async def _list_all(client: ClientSession) -> list[mcp_types.Tool]:
    found: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_LIST_PAGES):  # a server that pages forever cannot hang the pool
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await client.list_tools(params=params)
        found.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return found


def _describe(exc: BaseException) -> str:
    """One line for a log: the innermost causes of an exception group, type and message."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions[:3])
    if isinstance(exc, SDKError):
        return f"MCP error {exc.code}: {exc.message}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class MCPTool(Tool):
    """A tool of an MCP server, called through its pool. ``remote_name`` is the server's own name for it.

    Arguments are passed as the JSON object the model sent; the server validates them against its schema, and
    its complaint comes back as the tool message.
    """

    __slots__ = ("pool", "remote_name")

    def __init__(self, pool: MCPPool, remote: mcp_types.Tool) -> None:
        ann = remote.annotations
        idempotent = bool(ann is not None and (ann.idempotent_hint or ann.read_only_hint))
        super().__init__(
            f"{pool.name}.{remote.name}",
            remote.description or remote.title or "",
            dict(remote.input_schema),
            timeout_s=pool.config.call_timeout_s,
            idempotent=idempotent,
        )
        self.pool = pool
        self.remote_name = remote.name

    def prepare(self, arguments: Any) -> dict[str, Any]:
        if arguments is None or arguments == "":
            return {}
        if isinstance(arguments, str | bytes):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise ToolArgumentsError(
                    f"The arguments for tool {self.name!r} are not valid JSON ({exc}); send a JSON object.",
                    tool=self.name,
                ) from None
        if not isinstance(arguments, Mapping):
            raise ToolArgumentsError(
                f"The arguments for tool {self.name!r} must be a JSON object, not {type(arguments).__name__}.",
                tool=self.name,
            )
        return dict(arguments)

    async def _run(self, args: dict[str, Any], key: str | None, workflow: str | None) -> Any:
        result = await self.pool.call(self.remote_name, args, key=key, workflow=workflow, idempotent=self.idempotent)
        text = "\n".join(_block_text(b) for b in result.content)
        if result.is_error:
            raise ToolExecutionError(f"Tool {self.name!r} reported an error: {text or '(no message)'}", tool=self.name)
        if result.structured_content is not None:
            return result.structured_content
        return text


def _block_text(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    resource = getattr(block, "resource", None)
    if resource is not None and isinstance(getattr(resource, "text", None), str):
        return str(resource.text)
    mime = getattr(block, "mime_type", None) or getattr(resource, "mime_type", None) or ""
    return f"[{block.type} content{' ' + mime if mime else ''} not shown]"


class MCPPool:
    """The session pool of one ``[mcp.NAME]`` server and its tools; see the module docstring.

    An async context manager; ``aclose()`` is idempotent and stops every stdio process it started. With
    ``registry``, the server's tools are kept there as ``NAME.tool`` (removed again on close).
    """

    def __init__(
        self,
        name: str,
        config: MCPConfig,
        *,
        registry: ToolRegistry | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"MCP server name {name!r} may only use letters, digits, '_' and '-' (it prefixes its tools' names).",
                key=f"mcp.{name}",
            )
        self.name = name
        self.config = config
        self.registry = registry
        # Resolved secrets live only here and in the HTTP clients: never in a repr, a log line or a metric.
        self._headers = resolve_env_keys(config.headers, env, where=f"mcp.{name}.headers")
        self._env_values = resolve_env_keys(config.env, env, where=f"mcp.{name}.env")
        self._state = "created"
        self._closing = False
        self._replicas = [
            _Replica(i, target, CircuitBreaker(f"mcp:{name}/{i}", config.breaker))
            for i, target in enumerate(config.replica_targets())
        ]
        self._sessions: list[_Session] = []
        for r in self._replicas:
            for _ in range(config.sessions_per_replica):
                s = _Session(self, r, len(self._sessions))
                r.sessions.append(s)
                self._sessions.append(s)
        self._rr = 0
        self._keys: OrderedDict[str, tuple[_Session, int]] = OrderedDict()
        self._waiters: list[asyncio.Future[None]] = []
        self._refresh = asyncio.Event()
        self._refresh_from: _Session | None = None
        self._first_round: asyncio.Event = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.tools: dict[str, MCPTool] = {}
        self._calls = 0
        self._failed = 0
        self._failovers = 0

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> MCPPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open every session (waiting at most ``connect_timeout_s``) and list the server's tools.

        Raises :class:`MCPUnavailableError` (after closing what it opened) when no session could be opened.
        """
        if self._state != "created":
            raise LifecycleError(f"MCP pool {self.name!r} starts once; create a new one.")
        self._state = "running"
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(started), name=f"agentflow-mcp-{self.name}")
        try:
            await started
            with anyio.move_on_after(self.config.connect_timeout_s):
                while not all(s.opened or s.state == "backoff" for s in self._sessions):
                    await self._wait_change(_WAIT_SLICE_S)
            if not any(s.usable() for s in self._sessions):
                raise MCPUnavailableError(
                    f"MCP server {self.name!r} could not be reached: no session opened within "
                    f"{self.config.connect_timeout_s:g} s. Check that it runs and the [mcp.{self.name}] settings "
                    "(the log says why each attempt failed).",
                    server=self.name,
                )
            ready = next(s for s in self._sessions if s.usable())
            self._install(self._filter(ready.listing))  # listed as the session opened: no call of its own
        except BaseException:
            await self.aclose()
            raise

    async def _supervise(self, started: asyncio.Future[None]) -> None:
        # The pool's tasks live here, not in the caller's task: start() and aclose() may come from different
        # tasks (a test fixture's setup and teardown), and a TaskGroup must be left by the task that entered it.
        async with asyncio.TaskGroup() as tg:
            for s in self._sessions:
                tg.create_task(s.run(), name=f"agentflow-mcp-{self.name}-{s.index}")
            tg.create_task(self._refresher(), name=f"agentflow-mcp-{self.name}-tools")
            started.set_result(None)

    async def aclose(self) -> None:
        """Close every session (stdio processes stopped and reaped) and remove the tools; idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._closing = True
        for s in self._sessions:
            s.stop()
        self._refresh.set()
        self._notify()
        task = self._supervisor
        if task is not None:
            # Shielded: a caller cancelled while closing still gets every process stopped before it goes on.
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                await asyncio.wait([task])
                raise
            except Exception:  # noqa: BLE001 - a bug in a session task; closing must finish anyway
                logger.exception("MCP server %r: a pool task failed while closing", self.name)
        if self.registry is not None:
            self.registry.set_group(self.name, {})

    # ---- tools --------------------------------------------------------------------------------------------

    async def list_tools(self) -> list[mcp_types.Tool]:
        """The server's tools (all pages), through any ready session, filtered by ``tools``/``exclude_tools``."""
        s = self._refresh_from
        self._refresh_from = None
        if s is None or not s.usable():
            s, permit = await self._acquire(None, set())
            permit.success()
        client = s.client
        assert client is not None
        s.in_flight += 1
        try:
            return self._filter(await _list_all(client))
        finally:
            s.in_flight -= 1
            self._notify()

    def _filter(self, found: list[mcp_types.Tool]) -> list[mcp_types.Tool]:
        cfg = self.config
        return [
            t
            for t in found
            if any(fnmatch.fnmatchcase(t.name, p) for p in cfg.tools)
            and not any(fnmatch.fnmatchcase(t.name, p) for p in cfg.exclude_tools)
        ]

    def _install(self, listed: list[mcp_types.Tool]) -> None:
        tools = {f"{self.name}.{t.name}": MCPTool(self, t) for t in listed}
        self.tools = tools
        if self.registry is not None:
            self.registry.set_group(self.name, tools)

    async def refresh_tools(self) -> None:
        """List the server's tools again and replace ``NAME.*`` in the registry."""
        self._install(await self.list_tools())

    async def _refresher(self) -> None:
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            if self._closing:
                return
            try:
                await self.refresh_tools()
            except Exception as exc:  # noqa: BLE001 - keep the old list; the next notification tries again
                logger.warning("MCP server %r: could not refresh its tools: %s", self.name, _describe(exc))

    # ---- calls --------------------------------------------------------------------------------------------

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        workflow: str | None = None,
        idempotent: bool = False,
    ) -> mcp_types.CallToolResult:
        """Call ``tool`` (the server's name for it) on a session of the pool; see the module docstring for
        routing, failover and retries. Raises :class:`MCPError` or :class:`MCPUnavailableError`."""
        if self._state != "running":
            raise MCPUnavailableError(f"MCP pool {self.name!r} is not running.", tool=tool, server=self.name)
        cfg = self.config
        affinity = key if cfg.affinity == "key" else workflow if cfg.affinity == "workflow" else None
        tried: set[int] = set()
        attempts = len(self._replicas) + 1
        self._calls += 1
        while True:
            attempts -= 1
            s, permit = await self._acquire(affinity, tried)
            client = s.client
            assert client is not None
            s.in_flight += 1
            try:
                result = await client.call_tool(tool, arguments)
            except SDKError as exc:
                code = exc.code
                if code == NOT_SENT or code == mcp_types.INVALID_REQUEST:
                    # Never reached the server, or the server no longer knew the session: it did not run.
                    sent = False
                    if code == NOT_SENT:
                        s.replica.mark_down(self)
                elif code == mcp_types.CONNECTION_CLOSED:
                    sent = True
                else:  # the server answered with an error of its own: a fine answer for the breaker
                    permit.success()
                    self._failed += 1
                    raise MCPError(
                        f"MCP server {self.name!r} refused the call to {tool!r}: {exc.message} (code {code}).",
                        tool=tool,
                        server=self.name,
                    ) from None
                permit.failure(exc)
                s.fail(_describe(exc))
                tried.add(s.replica.index)
                if (sent and not idempotent) or attempts <= 0:
                    self._failed += 1
                    if sent:
                        raise MCPError(
                            f"The session to MCP server {self.name!r} broke while the call to {tool!r} was in flight, "
                            "so it may or may not have run; it was not retried because the tool is not idempotent.",
                            tool=tool,
                            server=self.name,
                        ) from None
                    raise MCPUnavailableError(
                        f"MCP server {self.name!r} could not be reached for the call to {tool!r}; {_describe(exc)}.",
                        tool=tool,
                        server=self.name,
                    ) from None
                self._failovers += 1
                if len(tried) >= len(self._replicas):
                    tried.clear()  # every replica failed once: wait for any to come back
                continue
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                permit.failure(exc)
                s.fail("its streams are closed")
                tried.add(s.replica.index)
                if attempts <= 0:
                    self._failed += 1
                    raise MCPUnavailableError(
                        f"MCP server {self.name!r} could not be reached for the call to {tool!r}.",
                        tool=tool,
                        server=self.name,
                    ) from None
                self._failovers += 1
                continue
            except (ValidationError, RuntimeError) as exc:
                permit.success()
                self._failed += 1
                raise MCPError(
                    f"MCP server {self.name!r} answered the call to {tool!r} with a result agentflow cannot use: "
                    f"{_describe(exc)}",
                    tool=tool,
                    server=self.name,
                ) from None
            except BaseException:
                permit.cancel()  # cancelled (a timeout of the tool, or shutdown): no outcome to count
                raise
            else:
                permit.success()
                return result
            finally:
                s.in_flight -= 1
                if self._waiters:
                    self._notify()

    async def _acquire(self, affinity: str | None, tried: set[int]) -> tuple[_Session, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.acquire_timeout_s
        while True:
            if self._closing:
                raise MCPUnavailableError(f"MCP pool {self.name!r} is closing.", server=self.name)
            picked = self._pick(affinity, tried)
            if picked is not None:
                return picked
            remaining = deadline - loop.time()
            if remaining <= 0:
                ready = sum(s.usable() for s in self._sessions)
                raise MCPUnavailableError(
                    f"No session of MCP server {self.name!r} could take the call within "
                    f"{self.config.acquire_timeout_s:g} s ({ready} of {len(self._sessions)} sessions ready, "
                    f"{self.config.max_in_flight_per_session} calls in flight allowed on each); nothing was sent.",
                    server=self.name,
                )
            await self._wait_change(min(remaining, _WAIT_SLICE_S))

    def _pick(self, affinity: str | None, tried: set[int]) -> tuple[_Session, Any] | None:
        limit = self.config.max_in_flight_per_session
        isolate = self.config.isolate
        if affinity is None:
            picked = self._round_robin(tried, limit, isolate)
            if picked is not None and isolate:
                picked[0].used = True  # a call without a key may leave state too: no key gets this session now
            return picked
        bound = self._keys.get(affinity)
        if bound is not None:
            s, gen = bound
            if s.generation == gen and s.usable() and s.replica.index not in tried:
                self._keys.move_to_end(affinity)
                if s.in_flight >= limit:
                    return None  # stay on this session (its state): wait for room
                permit = self._permit(s)
                return (s, permit) if permit is not None else None
            del self._keys[affinity]  # its session is gone, and the state with it
        picked = self._claim(affinity, tried) if isolate else self._round_robin(tried, limit, False)
        if picked is not None:
            self._keys[affinity] = (picked[0], picked[0].generation)
            while len(self._keys) > self.config.max_keys:
                self._keys.popitem(last=False)
        return picked

    def _round_robin(self, tried: set[int], limit: int, unowned: bool) -> tuple[_Session, Any] | None:
        sessions = self._sessions
        n = len(sessions)
        start = self._rr
        for k in range(n):
            s = sessions[(start + k) % n]
            if not s.usable() or s.in_flight >= limit or s.replica.index in tried or (unowned and s.owner):
                continue
            permit = self._permit(s)
            if permit is not None:
                self._rr = (start + k + 1) % n
                return s, permit
        return None

    def _claim(self, key: str, tried: set[int]) -> tuple[_Session, Any] | None:
        """isolate: a ready session that has served nobody in its generation. With none free, one idle session
        that did serve (the least recently used key's) is reopened, and the caller waits for it."""
        for s in self._sessions:
            if s.usable() and not s.used and s.replica.index not in tried:
                permit = self._permit(s)
                if permit is not None:
                    s.owner = key
                    s.used = True
                    return s, permit
        if any(s.state in ("connecting", "closing") for s in self._sessions):
            return None  # a session is being reopened already: wait for it rather than close another
        for s in self._sessions:
            if s.usable() and s.used and s.owner is None and s.in_flight == 0:
                s.fail("it served calls without a key, and a key needs a fresh session (isolate)")
                return None
        for old, (s, gen) in list(self._keys.items()):  # least recently used first
            if s.generation != gen:
                del self._keys[old]
            elif s.in_flight == 0:
                del self._keys[old]
                s.fail("its key was the least recently used, and another key needs a fresh session (isolate)")
                return None
        return None

    def _permit(self, s: _Session) -> Any:
        try:
            return s.replica.breaker.acquire()
        except CircuitOpenError:
            return None

    def _session_ready(self, s: _Session) -> None:
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _wait_change(self, timeout_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            with anyio.move_on_after(timeout_s):
                await fut
        finally:
            if not fut.done():
                fut.cancel()

    # ---- introspection ------------------------------------------------------------------------------------

    def statistics(self) -> MCPPoolStatistics:
        sessions = self._sessions
        opened = sum(s.opened for s in sessions)
        return MCPPoolStatistics(
            name=self.name,
            transport=self.config.transport,
            state=self._state,
            sessions=len(sessions),
            ready=sum(s.usable() for s in sessions),
            in_flight=sum(s.in_flight for s in sessions),
            calls=self._calls,
            failed_calls=self._failed,
            failovers=self._failovers,
            opened=opened,
            reconnects=sum(max(0, s.opened - 1) for s in sessions),
            evicted_hung=sum(s.hung for s in sessions),
            keys=len(self._keys),
            tools=len(self.tools),
            replicas=tuple(
                ReplicaStatistics(
                    index=r.index,
                    target=_safe_target(r.target),
                    up=not r.down,
                    breaker_state=r.breaker.state.value,
                    sessions_ready=sum(s.usable() for s in r.sessions),
                    sessions=len(r.sessions),
                )
                for r in self._replicas
            ),
        )

    def __repr__(self) -> str:
        st = self.statistics()
        return (
            f"<MCPPool {self.name!r} {st.transport} state={st.state} ready={st.ready}/{st.sessions} "
            f"in_flight={st.in_flight} calls={st.calls} failed={st.failed_calls} failovers={st.failovers} "
            f"reconnects={st.reconnects} tools={st.tools}>"
        )


class MCPHub:
    """Every ``[mcp.*]`` server of a runner: their pools, started together and closed together.

    ``async with MCPHub(config.mcp, registry=registry) as hub:`` puts every server's tools into ``registry``.
    """

    def __init__(
        self,
        servers: Mapping[str, MCPConfig],
        *,
        registry: ToolRegistry,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.pools = {name: MCPPool(name, cfg, registry=registry, env=env) for name, cfg in servers.items()}
        self._state = "created"

    async def __aenter__(self) -> MCPHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start every pool at once; if one fails, close them all and raise its error."""
        if self._state != "created":
            raise LifecycleError("An MCPHub starts once; create a new one.")
        self._state = "running"
        try:
            async with asyncio.TaskGroup() as tg:
                for pool in self.pools.values():
                    tg.create_task(pool.start())
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                raise exc.exceptions[0] from None
            raise

    async def aclose(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        for pool in self.pools.values():
            await pool.aclose()

    def statistics(self) -> dict[str, MCPPoolStatistics]:
        return {name: pool.statistics() for name, pool in self.pools.items()}

    def __repr__(self) -> str:
        return f"<MCPHub state={self._state} servers={sorted(self.pools)}>"
