"""Process plumbing for the CLI: the uvloop event loop, the signal handlers (a graceful first Ctrl-C, an immediate
second one), and what the process runs on (versions, machine, clock) for the machine reports.

agentcli is the only place that starts an event loop or installs signal handlers; the library never does.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import msgspec
import uvloop

from agentflow import __version__

__all__ = [
    "Interrupted",
    "Interruption",
    "Machine",
    "Stop",
    "Versions",
    "command_line",
    "interruption",
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


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM (``signum``) and has shut down."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stop:
    """How a run that can end early with what it measured is told to: the first SIGINT or SIGTERM calls the
    callbacks registered with :meth:`on_stop` (stop the load, keep the figures) instead of cancelling the run.

    ``signum`` is the signal that stopped it (None: it ran to its end) and ``at`` when (``time.monotonic()``).
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at: float | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def on_stop(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self.signum is not None:
            callback()

    def remove(self, callback: Callable[[], None]) -> None:
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def trigger(self, signum: int) -> bool:
        """Stop gracefully; False when nothing registered a way to (the caller cancels instead)."""
        if not self._callbacks:
            return False
        self.signum, self.at = signum, time.monotonic()
        for callback in list(self._callbacks):
            callback()
        return True


def run_async(coro: Coroutine[Any, Any, T], stop: Stop | None = None) -> T:
    """Run ``coro`` on uvloop. The first SIGINT/SIGTERM stops it gracefully through ``stop`` when it registered a
    way to, else cancels it (the runner then shuts down and :class:`Interrupted` is raised); the second exits
    the process at once with 128 + the signal number."""

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        signalled: list[int] = []
        installed: list[int] = []

        def on_signal(sig: int) -> None:
            signalled.append(sig)
            if len(signalled) > 1:
                sys.stderr.write(f"\n{signal.Signals(sig).name} again: exiting now, nothing more is written.\n")
                sys.stderr.flush()
                os._exit(128 + sig)
            if stop is not None and stop.trigger(sig):
                sys.stderr.write(
                    f"\n{signal.Signals(sig).name}: stopping the load and writing what was measured so far; "
                    "press Ctrl-C again to exit at once.\n"
                )
                sys.stderr.flush()
                return
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


class Interruption(msgspec.Struct, frozen=True, kw_only=True):
    """A run that a signal stopped before its end: the report covers what ran until then."""

    signal: Annotated[str, msgspec.Meta(description="SIGINT (Ctrl-C) or SIGTERM")]
    covered_s: Annotated[float, msgspec.Meta(description="seconds from the start of the measurement to the signal")]
    planned_s: Annotated[float | None, msgspec.Meta(description="how long the run was to take, when known")] = None


def interruption(stop: Stop, started: float, planned_s: float | None = None) -> Interruption | None:
    """The :class:`Interruption` of a run that ``stop`` stopped (None when it ran to its end); ``started`` is
    ``time.monotonic()`` at the start of the measurement."""
    if stop.signum is None or stop.at is None:
        return None
    return Interruption(signal=stop.signal_name, covered_s=round(stop.at - started, 3), planned_s=planned_s)


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
