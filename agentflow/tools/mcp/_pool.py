"""The session pool of one MCP server: routing, failover, affinity, tool listing, lifecycle."""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final

import anyio
import mcp.types as mcp_types
import msgspec
from mcp.shared.exceptions import MCPError as SDKError
from pydantic import ValidationError

from ...config import MCPConfig
from ...errors import CircuitOpenError, ConfigError, MCPError, MCPUnavailableError
from ...lifecycle import Lifecycle, State
from ...metrics import Metrics
from ...resilience.breaker import CircuitBreaker
from ..config import breaker_config, resolve_env_keys
from ..registry import ToolRegistry
from ._session import _describe, _is_failure, _list_all, _Replica, _Session
from ._tool import MCPTool
from ._transport import NOT_SENT, _safe_target

logger = logging.getLogger(__name__)

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


class _Lost(msgspec.Struct, frozen=True):
    """A try whose session or replica failed under it: whether the request may have reached the server."""

    sent: bool
    reason: str


class MCPPool(Lifecycle):
    """The session pool of one ``[mcp.NAME]`` server and its tools; see the module docstring.

    Its lifecycle is :class:`~agentflow.lifecycle.Lifecycle`'s: ``start`` once, ``async with``, and ``aclose()``
    idempotent and shielded, stopping every stdio process it started. With
    ``registry``, the server's tools are kept there as ``NAME.tool`` (removed again on close).
    """

    def __init__(
        self,
        name: str,
        config: MCPConfig,
        *,
        registry: ToolRegistry | None = None,
        env: Mapping[str, str] | None = None,
        metrics: Metrics | None = None,
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
        self._closing = False
        breaker = breaker_config(config.breaker, where=f"mcp.{name}.breaker")
        self._replicas = [
            _Replica(i, target, CircuitBreaker(f"mcp:{name}/{i}", breaker, is_failure=_is_failure, metrics=metrics))
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
        self._supervisor: asyncio.Task[None] | None = None
        self.tools: dict[str, MCPTool] = {}
        self._calls = 0
        self._failed = 0
        self._failovers = 0

    @property
    def breakers(self) -> list[CircuitBreaker]:
        """The breaker of each replica, in replica order (named ``mcp:NAME/<index>``)."""
        return [r.breaker for r in self._replicas]

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def _kind(self) -> str:
        return f"MCP pool {self.name!r}"

    async def _open(self) -> None:
        """Open every session (waiting at most ``connect_timeout_s``) and list the server's tools.

        Raises :class:`MCPUnavailableError` (after closing what it opened) when no session could be opened.
        """
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(started), name=f"agentflow-mcp-{self.name}")
        await started
        with anyio.move_on_after(self.config.connect_timeout_s):
            while not all(s.opened or s.attempts for s in self._sessions):  # every first try is over
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

    async def _supervise(self, started: asyncio.Future[None]) -> None:
        # The pool's tasks live here, not in the caller's task: start() and aclose() may come from different
        # tasks (a test fixture's setup and teardown), and a TaskGroup must be left by the task that entered it.
        async with asyncio.TaskGroup() as tg:
            for s in self._sessions:
                tg.create_task(s.run(), name=f"agentflow-mcp-{self.name}-{s.index}")
            tg.create_task(self._refresher(), name=f"agentflow-mcp-{self.name}-tools")
            started.set_result(None)

    async def _close(self) -> None:
        """Close every session (stdio processes stopped and reaped) and remove the tools; runs once, shielded:
        a caller cancelled while closing still gets every process stopped before it goes on."""
        self._closing = True
        for s in self._sessions:
            s.stop()
        self._refresh.set()
        self._notify()
        task = self._supervisor
        if task is not None:
            try:
                await task
            except Exception:  # noqa: BLE001 - a bug in a session task; closing must finish anyway
                logger.exception("MCP server %r: a pool task failed while closing", self.name)
        if self.registry is not None:
            self.registry.set_group(self.name, {})

    # ---- tools --------------------------------------------------------------------------------------------

    async def list_tools(self) -> list[mcp_types.Tool]:
        """The server's tools (all pages), through any ready session, filtered by ``tools``/``exclude_tools``."""
        # Listing leaves no state on the server, so any ready session will do, even one a key owns.
        s = self._refresh_from
        self._refresh_from = None
        if s is None or not s.usable():
            s = next((x for x in self._sessions if x.usable()), None)
        if s is None:
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
        if self._lifecycle is not State.RUNNING:
            raise MCPUnavailableError(f"MCP pool {self.name!r} is not running.", tool=tool, server=self.name)
        cfg = self.config
        affinity = key if cfg.affinity == "key" else workflow if cfg.affinity == "workflow" else None
        tried: set[int] = set()
        attempts = len(self._replicas) + 1
        self._calls += 1
        while True:
            attempts -= 1
            s, permit = await self._acquire(affinity, tried)
            outcome = await self._attempt(s, permit, tool, arguments)
            if not isinstance(outcome, _Lost):
                return outcome
            tried.add(s.replica.index)
            if (outcome.sent and not idempotent) or attempts <= 0:
                self._failed += 1
                raise self._lost(tool, outcome)
            self._failovers += 1  # not sent, or safe to send again: another replica
            if len(tried) >= len(self._replicas):
                tried.clear()  # every replica failed once: wait for any to come back

    async def _attempt(
        self, s: _Session, permit: Any, tool: str, arguments: dict[str, Any] | None
    ) -> mcp_types.CallToolResult | _Lost:
        """One try on session ``s``: the result, or what was lost when the session or replica failed under it.

        Raises :class:`MCPError` for an answer the caller must see (the server refused the call, or answered
        with something unusable); those count as fine answers for the replica's breaker.
        """
        client = s.client
        assert client is not None
        s.in_flight += 1
        try:
            result = await client.call_tool(tool, arguments)
        except SDKError as exc:
            code = exc.code
            if code not in (NOT_SENT, mcp_types.INVALID_REQUEST, mcp_types.CONNECTION_CLOSED):
                permit.success()  # the server answered with an error of its own
                self._failed += 1
                raise MCPError(
                    f"MCP server {self.name!r} refused the call to {tool!r}: {exc.message} (code {code}).",
                    tool=tool,
                    server=self.name,
                ) from None
            if code == NOT_SENT:
                s.replica.mark_down(self)
            permit.failure(exc)
            s.fail(_describe(exc))
            # Never reached the server, or the server no longer knew the session: it did not run. A connection
            # that closed under the request may have run it.
            return _Lost(sent=code == mcp_types.CONNECTION_CLOSED, reason=_describe(exc))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            permit.failure(exc)  # the session's streams were closed before the request could be written
            s.fail("its streams are closed")
            return _Lost(sent=False, reason="its session's streams were closed")
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

    def _lost(self, tool: str, lost: _Lost) -> MCPError:
        if lost.sent:
            return MCPError(
                f"The session to MCP server {self.name!r} broke while the call to {tool!r} was in flight, so it may "
                "or may not have run; it was not retried because the tool is not idempotent.",
                tool=tool,
                server=self.name,
            )
        return MCPUnavailableError(
            f"MCP server {self.name!r} could not be reached for the call to {tool!r}; {lost.reason}.",
            tool=tool,
            server=self.name,
        )

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
            state=self.state.value,
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
