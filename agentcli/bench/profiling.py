"""``--profile cpu|memory``: profilers that wrap the measured part of each agentflow run (never the raw one).

Both are async context managers entered once per run and reporting once at the end, so ``--repeat 3``
profiles all three runs together. Profiling slows the run (cProfile roughly 2x, tracemalloc more), so the
figures of a profiled run describe where time or memory goes, not how fast agentflow is.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from .measure import rss_peak_mb

__all__ = ["CpuProfiler", "MemoryProfiler", "NullProfiler", "ProfileSummary", "Profiler"]


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    """What ``finish`` printed, for the HTML report: a title, the column names and the rows."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    note: str


class Profiler(Protocol):
    """Entered around the measured phase of each agentflow run; ``finish`` reports once at the end."""

    kind: str

    async def __aenter__(self) -> None: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def finish(self, console: Console) -> ProfileSummary | None: ...


class NullProfiler:
    """Profiles nothing."""

    kind = "none"

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None

    def finish(self, console: Console) -> ProfileSummary | None:
        return None


class CpuProfiler:
    """cProfile over the measured runs; ``finish`` dumps pstats to ``output`` and prints the top by tottime."""

    kind = "cpu"
    TOP = 15

    def __init__(self, output: Path) -> None:
        self.output = output
        self._prof = cProfile.Profile()

    async def __aenter__(self) -> None:
        self._prof.enable()

    async def __aexit__(self, *exc: object) -> None:
        self._prof.disable()

    def finish(self, console: Console) -> ProfileSummary | None:
        self._prof.dump_stats(self.output)
        stats = pstats.Stats(self._prof)
        rows: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # {(file, line, func): (cc, nc, tt, ct, callers)}
        top = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[: self.TOP]
        table = Table(title=f"CPU profile: top {self.TOP} functions by own time (tottime)", title_justify="left")
        for name, justify in (
            ("ncalls", "right"),
            ("tottime s", "right"),
            ("cumtime s", "right"),
            ("function", "left"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        lines: list[tuple[str, ...]] = []
        for (file, line, func), (cc, nc, tt, ct, _callers) in top:
            calls = str(nc) if nc == cc else f"{nc}/{cc}"
            where = f"{func}" if file == "~" else f"{func}  {_short(file)}:{line}"
            lines.append((calls, f"{tt:.3f}", f"{ct:.3f}", where))
            table.add_row(*lines[-1])
        console.print(table)
        note = f"pstats written to {self.output}; explore it with: python -m pstats {self.output}"
        console.print(note)
        return ProfileSummary(str(table.title), ("ncalls", "tottime s", "cumtime s", "function"), lines, note)


class MemoryProfiler:
    """tracemalloc over the measured runs, snapshotting near the traced peak.

    A sampler task looks at the traced total every ``sample_s`` and takes a snapshot whenever it is 10% above
    the last one, so the allocation sites reported are those holding memory near the peak, not just what is
    left once the run has drained.
    """

    kind = "memory"
    TOP_FILE = 25
    TOP_PRINT = 10

    def __init__(self, output: Path, sample_s: float = 0.25) -> None:
        self.output = output
        self.sample_s = sample_s
        self.peak_traced = 0
        self._snapshot: tracemalloc.Snapshot | None = None
        self._snapshot_size = -1
        self._snapshot_at = 0.0
        self._t0 = 0.0
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        tracemalloc.start()
        self._t0 = perf_counter()
        self._sampler = asyncio.create_task(self._sample(), name="agentcli-tracemalloc")

    async def __aexit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
        self._take(force=self._snapshot is None)
        self.peak_traced = max(self.peak_traced, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            self._take(force=False)

    def _take(self, *, force: bool) -> None:
        current = tracemalloc.get_traced_memory()[0]
        if force or current > self._snapshot_size * 1.1:
            self._snapshot = tracemalloc.take_snapshot()
            self._snapshot_size = current
            self._snapshot_at = perf_counter() - self._t0

    def finish(self, console: Console) -> ProfileSummary | None:
        if self._snapshot is None:
            return None
        snap = self._snapshot.filter_traces(
            (
                tracemalloc.Filter(False, tracemalloc.__file__),
                tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            )
        )
        top = snap.statistics("lineno")
        header = (
            f"# agentcli benchmark --profile memory: top {self.TOP_FILE} allocation sites by size\n"
            f"# snapshot at {self._snapshot_at:.2f} s into the run, {self._snapshot_size / 2**20:.1f} MiB traced; "
            f"peak traced {self.peak_traced / 2**20:.1f} MiB; peak RSS {rss_peak_mb():.1f} MB\n"
            "# size_kib\tcount\tsite\n"
        )
        lines = [f"{s.size / 1024:.1f}\t{s.count}\t{_site(s.traceback)}" for s in top[: self.TOP_FILE]]
        self.output.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
        table = Table(
            title=f"Memory profile: top {self.TOP_PRINT} allocation sites "
            f"(snapshot {self._snapshot_at:.2f} s into the run)",
            title_justify="left",
        )
        table.add_column("KiB", justify="right")
        table.add_column("blocks", justify="right")
        table.add_column("allocated at")
        rows: list[tuple[str, ...]] = [
            (f"{s.size / 1024:,.1f}", f"{s.count:,}", _site(s.traceback)) for s in top[: self.TOP_PRINT]
        ]
        for row in rows:
            table.add_row(*row)
        console.print(table)
        note = (
            f"peak traced {self.peak_traced / 2**20:.1f} MiB, peak RSS {rss_peak_mb():.1f} MB; "
            f"top {self.TOP_FILE} sites written to {self.output}"
        )
        console.print(note)
        return ProfileSummary(str(table.title), ("KiB", "blocks", "allocated at"), rows, note)


def _short(path: str) -> str:
    parts = Path(path).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 else path


def _site(tb: tracemalloc.Traceback) -> str:
    frame = tb[0]
    return f"{_short(frame.filename)}:{frame.lineno}"
