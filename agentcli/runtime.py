"""Process plumbing for the CLI: the uvloop event loop, signal handlers, agentflow's log records, and what the
process runs on (versions, machine, clock) for the machine reports.

agentcli is the only place that starts an event loop or installs signal handlers; the library never does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import platform
import signal
import sys
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import uvloop
from rich.console import Console
from rich.markup import escape

from agentflow import __version__

__all__ = [
    "Interrupted",
    "command_line",
    "LogLimiter",
    "Machine",
    "Versions",
    "machine",
    "now_iso",
    "run_async",
    "version_lines",
    "versions",
]

T = TypeVar("T")

#: The console script's arguments, set by :func:`agentcli.main.main`; None when ``app`` is driven another way.
ARGV: list[str] | None = None


def command_line() -> list[str]:
    """The command as typed, for the reports: ``agentcli`` and its arguments."""
    return ["agentcli", *(ARGV if ARGV is not None else sys.argv[1:])]


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


class Versions(msgspec.Struct, frozen=True, kw_only=True):
    """The software a report was measured with; optional packages read "not installed"."""

    python: str
    agentflow: str
    uvloop: str
    msgspec: str
    aiohttp: str
    aiokafka: str
    openai: str
    platform: str


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    """The machine a report was measured on, and how busy it was when the measurement started."""

    cpu: str
    cores: int
    memory_gb: float | None
    #: 1-, 5- and 15-minute load averages at the start (None where the platform has none)
    load_average: tuple[float, float, float] | None
    python_implementation: str


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> Versions:
    return Versions(
        python=platform.python_version(),
        agentflow=__version__,
        uvloop=_version("uvloop"),
        msgspec=msgspec.__version__,
        aiohttp=_version("aiohttp"),
        aiokafka=_version("aiokafka"),
        openai=_version("openai"),
        platform=f"{platform.system()} {platform.machine()}",
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_gb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> Machine:
    load: tuple[float, float, float] | None
    try:
        one, five, fifteen = os.getloadavg()
        load = (round(one, 2), round(five, 2), round(fifteen, 2))
    except OSError:
        load = None
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 1,
        memory_gb=_memory_gb(),
        load_average=load,
        python_implementation=sys.implementation.name,
    )


def version_lines() -> list[str]:
    v = versions()
    return [
        f"agentflow {v.agentflow}",
        f"python {v.python} ({sys.implementation.name})",
        f"uvloop {v.uvloop}",
        f"msgspec {v.msgspec}",
        f"platform {v.platform}",
    ]


def now_iso() -> str:
    """Now, in UTC, to the second: when a report's measurement started."""
    return datetime.now(UTC).isoformat(timespec="seconds")
