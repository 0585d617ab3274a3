"""One session to one replica, in a task of its own: opened, health-checked, reopened with backoff, closed."""

from __future__ import annotations

import asyncio
import logging
import random
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Final

import anyio
import mcp.types as mcp_types
from mcp import ClientSession
from mcp.shared.exceptions import MCPError as SDKError

from ...resilience.breaker import CircuitBreaker
from ._transport import NOT_SENT, _safe_target, _WatchedStream, open_transport

if TYPE_CHECKING:
    from ._pool import MCPPool

logger = logging.getLogger(__name__)

_CLIENT_INFO = mcp_types.Implementation(name="agentflow", version="0.1.0")
_MAX_LIST_PAGES: Final = 100


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
        self.attempts = 0
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
                        read, write = await stack.enter_async_context(
                            open_transport(pool.config, self.replica.target, pool._headers, pool._env_values)
                        )
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
                self.attempts += 1
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


def _is_failure(exc: BaseException) -> bool:
    # Only what says the replica is unwell counts: a lost connection or session. A server's error answer is fine.
    if isinstance(exc, anyio.ClosedResourceError | anyio.BrokenResourceError):
        return True
    return isinstance(exc, SDKError) and exc.code in (NOT_SENT, mcp_types.CONNECTION_CLOSED, mcp_types.INVALID_REQUEST)


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
