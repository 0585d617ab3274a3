"""What the commands print, in a terminal and in CI: the global flags, the consoles, and the progress lines.

In a terminal the commands draw live views (rich). Anywhere else — piped, redirected, in CI — nothing is
redrawn: tables print at their full width (a number is never cut to ``100…`` and no line is wrapped), and a
long run prints one progress line every ``--progress-every`` seconds instead, the way k6 does::

    agentcli loadtest: 0:00:05 of 0:00:20, 100.0/s (target 100/s), 500 done, 0 errors, p99 1.23 ms

``--quiet`` drops the live views and the progress lines, and keeps the summary, the reports and the errors.
The flags are the root command's (``agentcli --quiet loadtest ...``); :data:`OPTIONS` holds them for the
commands.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

__all__ = ["OPTIONS", "GlobalOptions", "ProgressLines", "clock", "console", "error_line", "is_terminal"]

#: The width of a console that is not a terminal: wide enough that no table or line of ours is ever cut.
WIDE = 100_000


@dataclass(slots=True)
class GlobalOptions:
    """The root command's flags, set before any command runs."""

    debug: bool = False
    quiet: bool = False
    log_format: str = "text"
    progress_every_s: float = 5.0


OPTIONS = GlobalOptions()


def is_terminal(*, stderr: bool = False) -> bool:
    return Console(stderr=stderr).is_terminal


def console(*, stderr: bool = False) -> Console:
    """A console for a command's output: the terminal's own, or one that never truncates nor wraps."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=WIDE, soft_wrap=True)


def error_line(message: str) -> None:
    """Print ``Error: message`` on stderr, whole, as one line."""
    console(stderr=True).print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)


class ProgressLines:
    """One line every ``OPTIONS.progress_every_s`` on stdout when it is not a terminal (and not ``--quiet``).

    Callers ask :meth:`due` as often as they like and print :meth:`line` when it is true; the clock starts at
    construction.
    """

    def __init__(self, out: Console, *, every_s: float | None = None, enabled: bool | None = None) -> None:
        self.out = out
        self.every_s = OPTIONS.progress_every_s if every_s is None else every_s
        self.enabled = (not out.is_terminal and not OPTIONS.quiet) if enabled is None else enabled
        self.t0 = time.monotonic()
        self._next = self.t0 + self.every_s

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def due(self) -> bool:
        if not self.enabled:
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        # Skip the ticks a busy loop missed rather than printing them in a burst.
        while self._next <= now:
            self._next += self.every_s
        return True

    def line(self, text: str) -> None:
        self.out.print(text, highlight=False, markup=False, soft_wrap=True)
        out = self.out.file
        if out is sys.stdout or hasattr(out, "flush"):
            out.flush()


def clock(seconds: float) -> str:
    """``0:01:05`` for 65 seconds."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
