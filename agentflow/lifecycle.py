"""One lifecycle for every resource: created → starting → running → closing → closed.

Runner, Producer, buses, LLM hub and clients, the mock LLM server, rate limiters, micro-batchers, the state store
and its backends, and the MCP hub and pools all follow it (:class:`Lifecycle`): ``start`` once (a resource that
may be shared, such as a bus, lets a second ``start`` through while it runs), ``aclose`` idempotent and safe to
call concurrently, a closed resource refusing to start again with a sentence, and ``async with`` doing both::

    async with MemoryBus() as bus:     # start ... aclose
        ...
    await bus.start()                  # LifecycleError: Cannot restart a MemoryBus once it has been closed; ...

Closing is shielded from cancellation (:func:`shielded`): a caller cancelled while a resource closes — even twice —
does not cut the cleanup short, so the resource always ends ``closed`` and every later ``aclose`` returns at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, ClassVar, Final, Self

from .errors import LifecycleError

__all__ = ["RUNNING", "Lifecycle", "State", "shielded"]

logger = logging.getLogger(__name__)


class State(enum.Enum):
    """Where a resource is in its life; a closed resource cannot be started again."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


async def shielded(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to the end even if the caller is cancelled (again) meanwhile; then re-raise that."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True  # keep waiting: the cleanup must finish before this task may end
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            logger.error("A cleanup interrupted by a cancellation failed: %r", task.exception())
        raise asyncio.CancelledError
    task.result()


#: ``State.RUNNING`` as a module constant: hot paths check it on every call, and reading an enum member through
#: its class costs about 0.1 µs on Python 3.11 (a fifth of a memory-backend state read).
RUNNING: Final = State.RUNNING


class Lifecycle:
    """The lifecycle of a resource (see the module docstring). Subclasses implement ``_open`` and ``_close``.

    ``_close`` runs once, shielded, also after a failed ``_open`` (so it must cope with a half-opened resource);
    ``_drain`` runs before it, cancellable (a graceful phase that a cancellation may cut short). Class settings:
    ``started_when_created`` for resources usable from construction (a rate limiter), ``shared`` for resources
    that several owners start (a bus: a second ``start`` is a no-op while it runs).
    """

    started_when_created: ClassVar[bool] = False
    shared: ClassVar[bool] = False

    _lifecycle: State = State.CREATED
    _closed_event: asyncio.Event | None = None

    @property
    def state(self) -> State:
        if self._lifecycle is State.CREATED and self.started_when_created:
            return State.RUNNING
        return self._lifecycle

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    @property
    def closed(self) -> bool:
        return self._lifecycle is State.CLOSING or self._lifecycle is State.CLOSED

    def _kind(self) -> str:
        """How messages name this resource (its class name unless overridden)."""
        return type(self).__name__

    async def start(self) -> None:
        state = self.state
        if state is State.CLOSING or state is State.CLOSED:
            raise LifecycleError(f"Cannot restart a {self._kind()} once it has been closed; create a new one.")
        if state is not State.CREATED:
            if state is State.RUNNING and (self.shared or self.started_when_created):
                return
            raise LifecycleError(f"The {self._kind()} is already started; start it once.")
        self._lifecycle = State.STARTING
        try:
            await self._open()
        except BaseException:
            await self.aclose()
            raise
        if self._lifecycle is State.STARTING:
            self._lifecycle = State.RUNNING

    async def aclose(self) -> None:
        """Close (idempotent, safe to call concurrently, shielded from cancellation)."""
        if self._lifecycle is State.CLOSED:
            return
        if self._lifecycle is State.CLOSING:
            if self._closed_event is not None:
                await asyncio.shield(self._closed_event.wait())
            return
        self._lifecycle = State.CLOSING
        self._closed_event = asyncio.Event()
        try:
            try:
                await self._drain()
            finally:
                await shielded(self._close())
        finally:
            self._lifecycle = State.CLOSED
            self._closed_event.set()

    def _check_running(self, what: str) -> None:
        """Raise a LifecycleError sentence unless the resource runs: ``what`` says what was attempted."""
        state = self.state
        if state is State.RUNNING:
            return
        if state is State.CREATED or state is State.STARTING:
            raise LifecycleError(
                f"Cannot {what}: the {self._kind()} has not started; use 'async with' or await start() first."
            )
        raise LifecycleError(f"Cannot {what}: the {self._kind()} has been closed; create a new one.")

    async def _open(self) -> None:
        """Acquire what the resource needs (connections, tasks)."""

    async def _drain(self) -> None:
        """The graceful part of closing (finish what is in flight); a cancellation may cut it short."""

    async def _close(self) -> None:
        """Release everything; runs once, to the end."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
