"""The profiling routes of the HTTP service, with ``[monitoring] profiling = true`` (off by default):
``GET /debug/profile?seconds=N`` (a CPU profile of the live process, speedscope JSON), ``GET /debug/heap`` (the
top allocations, tracemalloc), ``GET /debug/tasks`` (every asyncio task with its coroutine stack) and
``GET /debug/loop`` (event-loop lag).

They need the bearer token whenever one is set, and the server refuses to start with them beyond loopback
without one. Nothing runs until a request asks: the CPU sampler exists only for the seconds of its request, and
one runs at a time (a second request gets 409).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from aiohttp import web

from ..insight.sampler import DEFAULT_INTERVAL_S, MAX_SECONDS, cpu_profile, heap_profile, task_dump
from .auth import BadRequest, BearerToken, JsonRoutes
from .insight import query_number

if TYPE_CHECKING:
    from ..config import MonitoringConfig
    from ..runner import Runner

__all__ = ["DebugRoutes"]


class DebugRoutes(JsonRoutes):
    """``/debug/profile``, ``/debug/heap``, ``/debug/tasks`` and ``/debug/loop`` of one runner."""

    def __init__(self, runner: Runner, config: MonitoringConfig, token: BearerToken, refused: dict[int, int]) -> None:
        super().__init__(config, token, refused)
        self._runner = runner
        self._profiling = False
        # Set when the server closes: a CPU profile being taken ends at once with what it has, so a shutdown is
        # not held for the rest of its seconds.
        self._closing = asyncio.Event()
        #: CPU profiles served, for statistics and tests.
        self.profiles = 0

    def close(self) -> None:
        """The server is closing: end a CPU profile being taken (its answer says ``stopped_early``)."""
        self._closing.set()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/debug/profile", self.profile)
        app.router.add_get("/debug/heap", self.heap)
        app.router.add_get("/debug/tasks", self.tasks)
        app.router.add_get("/debug/loop", self.loop)

    async def profile(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            seconds = query_number(request, "seconds", 10.0, 0.1, MAX_SECONDS)
            interval_ms = query_number(request, "interval_ms", DEFAULT_INTERVAL_S * 1e3, 1.0, 1000.0)
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        if self._profiling:
            return self._error(409, "A CPU profile is being taken already; wait for it to finish and ask again.")
        self._profiling = True
        try:
            body = await cpu_profile(
                seconds, interval_s=interval_ms / 1e3, name=f"agentflow pid {os.getpid()}", stop=self._closing
            )
        finally:
            self._profiling = False
        self.profiles += 1
        return self._reply(200, body)

    async def heap(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            limit = int(query_number(request, "limit", 25, 1, 1000))
            frames = int(query_number(request, "frames", 1, 1, 50))
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        stop = request.query.get("stop", "false").lower() in ("1", "true", "yes")
        # A snapshot of a big heap takes a while: off the loop, so the worker keeps handling events meanwhile.
        body = await asyncio.to_thread(heap_profile, limit=limit, frames=frames, stop=stop)
        return self._reply(200, body)

    async def tasks(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        try:
            limit = int(query_number(request, "limit", 1000, 1, 100_000))
            frames = int(query_number(request, "frames", 20, 1, 200))
        except BadRequest as exc:
            return self._error(exc.status, exc.message)
        return self._reply(200, task_dump(limit=limit, frames=frames))

    async def loop(self, request: web.Request) -> web.Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        return self._reply(200, {"lag": self._runner.insight.loop_lag.statistics(), "tasks": len(asyncio.all_tasks())})
