"""Process plumbing for the CLI: the uvloop event loop, signal handlers, and agentflow's log records.

agentcli is the only place that starts an event loop or installs signal handlers; the library never does.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop
from rich.console import Console
from rich.markup import escape

__all__ = ["Interrupted", "LogLimiter", "run_async"]

T = TypeVar("T")


class LogLimiter(logging.Handler):
    """Shows the first few agentflow warnings of a run and counts the rest (one per dead letter adds up)."""

    def __init__(self, console: Console, limit: int = 5) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.limit = limit
        self.seen = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        if self.seen <= self.limit:
            self.console.print(
                f"[yellow]{record.levelname.lower()}[/] {escape(record.name)}: {escape(record.getMessage())}"
            )

    def summary(self) -> str | None:
        hidden = self.seen - self.limit
        return f"{hidden:,} more agentflow log records were not shown." if hidden > 0 else None


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM (``signum``) and has shut down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop; SIGINT/SIGTERM cancel it (the runner then shuts down gracefully)."""

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signalled: list[int] = []
        installed: list[int] = []

        def on_signal(sig: int) -> None:
            signalled.append(sig)
            task.cancel()

        for sig in (int(signal.SIGINT), int(signal.SIGTERM)):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals here
                pass
        try:
            return await coro
        except asyncio.CancelledError:
            if signalled:
                task.uncancel()
                raise Interrupted(signalled[0]) from None
            raise
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    return uvloop.run(guarded())
