"""Measurement primitives shared by the agentflow runs and the raw asyncio.Queue baseline.

The three load shapes are written once, over plain callables, so both sides run the same driver code and only
the thing being driven differs:

* :func:`closed_loop` — N virtual users, each awaiting one request at a time (latency = round trip).
* :func:`flood` — one producer emitting as fast as backpressure allows (throughput).
* :func:`paced` — an open-loop producer emitting event ``i`` at ``t0 + i / rate`` and stamping that intended
  time into the payload, so a handler that records ``start - intended`` does not hide queueing behind a slow
  producer (no coordinated omission).
* :func:`paced_requests` — the same schedule driving request/response calls through a fixed pool of senders
  (as wrk2 does with connections), latency measured from each request's intended time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import os
import resource
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

from rich.progress import Progress, TaskID

from agentflow import LatencyHistogram, ProfileSnapshot

from ..output import OPTIONS, ProgressLines, clock

__all__ = [
    "REFRESH_LATENCY_S",
    "REFRESH_S",
    "STOP",
    "Limits",
    "Mode",
    "RunResult",
    "Tally",
    "Ticker",
    "closed_loop",
    "cpu_seconds",
    "flood",
    "paced",
    "paced_requests",
    "planned_events",
    "rss_mb",
    "request_stop",
    "reset_stop",
    "rss_peak_mb",
]

EmitOne = Callable[[Any], Awaitable[Any]]
EmitBatch = Callable[[Sequence[Any]], Awaitable[Any]]

#: How many events a duration-bound producer emits between two looks at the clock.
_CLOCK_STRIDE = 256
#: The paced producer sleeps for real only when it is this far ahead of schedule; the loop's timers have about
#: millisecond resolution, so shorter waits are spent yielding with ``sleep(0)`` instead.
_SPIN_S = 0.002


class Mode(enum.StrEnum):
    """The load shape of a noop or app benchmark: :func:`closed_loop`, :func:`flood`, or :func:`paced`."""

    closed = "closed"
    throughput = "throughput"
    latency = "latency"


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """Stop after ``count`` requests/events, or after ``duration_s`` seconds (exactly one is set)."""

    count: int | None = None
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.duration_s is None):
            raise ValueError("Limits needs exactly one of count and duration_s.")

    def describe(self, unit: str = "requests") -> str:
        return f"{self.count:,} {unit}" if self.count is not None else f"{self.duration_s:g} s"


class StopFlag:
    """Set by the first Ctrl-C (through :class:`agentcli.runtime.Stop`): every load shape stops issuing work at its
    next look, and the run ends with what it measured. One flag for the process: a benchmark runs one run at a
    time, and :func:`reset_stop` clears it when a command starts."""

    __slots__ = ("set",)

    def __init__(self) -> None:
        self.set = False


STOP = StopFlag()


def request_stop() -> None:
    STOP.set = True


def reset_stop() -> None:
    STOP.set = False


class Tally:
    """Counters a driver bumps inline; the progress ticker reads them from its own task."""

    __slots__ = ("completed", "errors", "issued")

    def __init__(self) -> None:
        self.issued = 0
        self.completed = 0
        self.errors = 0

    def finished(self) -> int:
        return self.completed + self.errors


@dataclasses.dataclass(slots=True)
class RunResult:
    """One measured run of one side (agentflow or raw)."""

    label: str
    requested: int
    completed: int
    errors: int
    duration_s: float
    cpu_s: float
    hist: LatencyHistogram | None
    #: latency mode: the saturation measured first, and the rate then offered (events/s)
    saturation_per_s: float | None = None
    rate_per_s: float | None = None
    shutdown_s: float | None = None
    #: latency mode: how long the paced run would take if every event were handled on schedule
    planned_s: float | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    #: agentflow side: the runner's profile snapshot over the measured phase (agentcli profile-report reads it)
    profile: ProfileSnapshot | None = None
    #: noop throughput floods of more than 2 x TAIL_EVENTS: the events handled once the last TAIL_EVENTS were
    #: being emitted (the end of a long flood)
    tail: LatencyHistogram | None = None

    @property
    def throughput_per_s(self) -> float:
        """Events finished (handled or failed) per second of the measured run."""
        return (self.completed + self.errors) / self.duration_s if self.duration_s > 0 else 0.0


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_mb() -> float:
    """This process's resident set size now, in MB (Linux ``/proc``); elsewhere the peak so far."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_peak_mb() -> float:
    """Peak resident set size of this process, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


#: Progress refresh period. One rich refresh holds the loop for ~1 ms: at 10 Hz that is 1% of the run and it
#: shows in a sub-millisecond p99, so closed and throughput runs refresh at 4 Hz and open-loop latency runs,
#: whose tail is the point, once a second (0.1% of the time, below p99's resolution).
REFRESH_S = 0.25
REFRESH_LATENCY_S = 1.0


class Ticker:
    """Shows one run's progress from its own task, never from the hot path: a progress-bar line with the rate and
    the time left, refreshed every ``interval_s`` in a terminal; elsewhere (piped, CI) a plain line every
    ``--progress-every`` seconds (:class:`agentcli.output.ProgressLines`). With ``progress`` None, or ``--quiet``,
    it starts no task at all, so a run pays nothing for it.
    """

    def __init__(
        self,
        progress: Progress | None,
        description: str,
        limits: Limits,
        poll: Callable[[], int],
        interval_s: float = REFRESH_S,
    ) -> None:
        self._bar = progress if progress is not None and not progress.disable else None
        self._lines = (
            ProgressLines(progress.console)
            if progress is not None and self._bar is None and not OPTIONS.quiet
            else None
        )
        self._description = description
        self._limits = limits
        self._poll = poll
        every = self._lines.every_s if self._lines is not None else interval_s
        self._interval_s = interval_s if self._bar is not None else max(0.05, min(interval_s, every / 2))
        self._task: asyncio.Task[None] | None = None
        self._id: TaskID | None = None
        self._t0 = 0.0

    async def __aenter__(self) -> Ticker:
        self._t0 = perf_counter()
        if self._bar is not None:
            total = self._limits.count if self._limits.count is not None else self._limits.duration_s
            self._id = self._bar.add_task(self._description, total=total, detail="")
        if self._bar is not None or (self._lines is not None and self._lines.enabled):
            self._task = asyncio.create_task(self._run(), name="agentcli-progress")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            if self._bar is not None:
                self._update()
        if self._bar is not None and self._id is not None:
            self._bar.remove_task(self._id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            if self._bar is not None:
                self._update()
            elif self._lines is not None and self._lines.due():
                self._lines.line(f"agentcli benchmark: {self._description}: {self.detail()}")

    def detail(self) -> str:
        """``12,000/200,000, 48,000/s, 0:00:03 left``: what is done, the rate, and the time left."""
        done = self._poll()
        elapsed = perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        if self._limits.count is not None:
            left = (self._limits.count - done) / rate if rate > 0 else None
            head = f"{done:,}/{self._limits.count:,}"
        else:
            assert self._limits.duration_s is not None
            left = max(0.0, self._limits.duration_s - elapsed)
            head = f"{elapsed:.1f}/{self._limits.duration_s:g} s, {done:,} done"
        return f"{head}, {rate:,.0f}/s, " + ("ETA -" if left is None else f"ETA {clock(left)}")

    def _update(self) -> None:
        assert self._bar is not None and self._id is not None
        detail = self.detail()
        if self._limits.count is not None:
            self._bar.update(self._id, completed=self._poll(), detail=detail)
        else:
            self._bar.update(self._id, completed=perf_counter() - self._t0, detail=detail)
        self._bar.refresh()


async def closed_loop(
    request: Callable[[], Awaitable[Any]],
    users: int,
    limits: Limits,
    failures: tuple[type[BaseException], ...],
    tally: Tally,
) -> LatencyHistogram:
    """Run ``users`` virtual users, each awaiting ``request()`` in a loop; return round-trip latencies.

    A request raising one of ``failures`` is counted in ``tally.errors`` and its latency is not recorded.
    """
    hist = LatencyHistogram()
    record = hist.record
    count = limits.count
    deadline = perf_counter() + (limits.duration_s or 0.0)

    stop = STOP

    async def user() -> None:
        while not stop.set:
            if count is not None:
                if tally.issued >= count:
                    return
            elif perf_counter() >= deadline:
                return
            tally.issued += 1
            t0 = perf_counter()
            try:
                await request()
            except failures:
                tally.errors += 1
                continue
            record(perf_counter() - t0)
            tally.completed += 1

    async with asyncio.TaskGroup() as tg:
        for i in range(users):
            tg.create_task(user(), name=f"agentcli-user-{i}")
    return hist


async def flood(
    emit_one: EmitOne,
    emit_batch: EmitBatch | None,
    batch_size: int,
    payload: Any,
    limits: Limits,
    tally: Tally,
    *,
    stamp: bool = False,
    at: tuple[int, Callable[[], None]] | None = None,
) -> None:
    """Emit as fast as backpressure allows, one by one or ``batch_size`` at a time through ``emit_batch``.

    With ``stamp`` each payload is ``perf_counter()`` at emit, the shape the latency handlers expect. With
    ``at = (n, mark)``, ``mark()`` is called once when ``n`` events have been issued (between strides: within
    256 events, or one batch, of ``n``).
    """
    count = limits.count
    deadline = perf_counter() + (limits.duration_s or 0.0)
    stop = STOP

    def chunk(stride: int) -> int:
        """How many events to emit next (0: the run is over); calls the mark once it is due."""
        nonlocal at
        if at is not None and tally.issued >= at[0]:
            at[1]()
            at = None
        if count is None:
            return 0 if perf_counter() >= deadline else stride
        k = min(stride, count - tally.issued)
        if at is not None:
            k = min(k, max(1, at[0] - tally.issued))
        return max(k, 0)

    if emit_batch is None or batch_size <= 1:
        # In strides, looking at the clock and the stop flag between them, not at every event.
        while not stop.set and (k := chunk(_CLOCK_STRIDE)):
            if stamp:
                for _ in range(k):
                    await emit_one(perf_counter())
            else:
                for _ in range(k):
                    await emit_one(payload)
            tally.issued += k
        return
    while not stop.set and (k := chunk(batch_size)):
        await emit_batch([perf_counter()] * k if stamp else [payload] * k)
        tally.issued += k


def planned_events(limits: Limits, rate_per_s: float) -> int:
    """How many events a paced run at ``rate_per_s`` sends within ``limits``."""
    return limits.count if limits.count is not None else max(1, round(rate_per_s * (limits.duration_s or 0.0)))


async def paced(
    emit_one: EmitOne,
    emit_batch: EmitBatch | None,
    batch_size: int,
    rate_per_s: float,
    limits: Limits,
    tally: Tally,
) -> None:
    """Open-loop producer: event ``i`` is due at ``t0 + i / rate``; its payload is that intended time.

    Each pass emits every event that has come due (through ``emit_batch`` in chunks when ``batch_size`` > 1),
    then yields to the loop so handlers run; when ahead of schedule it yields or, if far ahead, sleeps.
    A producer that falls behind (backpressure, a busy loop) emits the late events at once, stamped with their
    intended times, so the delay shows up in the recorded latencies instead of disappearing.
    """
    n = planned_events(limits, rate_per_s)
    sleep = asyncio.sleep
    t0 = perf_counter()
    i = 0
    stop = STOP
    while i < n and not stop.set:
        now = perf_counter()
        due = min(n, int((now - t0) * rate_per_s) + 1)
        if due > i:
            if emit_batch is None or batch_size <= 1:
                while i < due:
                    await emit_one(t0 + i / rate_per_s)
                    i += 1
            else:
                while i < due:
                    k = min(batch_size, due - i)
                    await emit_batch([t0 + j / rate_per_s for j in range(i, i + k)])
                    i += k
            tally.issued = i
            await sleep(0)
        else:
            ahead = t0 + i / rate_per_s - now
            await sleep(ahead - _SPIN_S / 2 if ahead > _SPIN_S else 0)


async def paced_requests(
    request: Callable[[], Awaitable[Any]],
    senders: int,
    rate_per_s: float,
    limits: Limits,
    failures: tuple[type[BaseException], ...],
    tally: Tally,
) -> LatencyHistogram:
    """Open-loop requests: :func:`paced` queues each intended time; ``senders`` coroutines send them.

    Latency is result − intended time, so a request that waited for a free sender (the system is slower than
    the offered rate) carries that wait. A fixed pool costs far less per request than a task each, which
    matters because the load generator shares the loop with what it measures.
    """
    hist = LatencyHistogram()
    record = hist.record
    loop = asyncio.get_running_loop()
    due: deque[float] = deque()
    idle: deque[asyncio.Future[None]] = deque()
    finished = False

    async def sender() -> None:
        while True:
            if not due:
                if finished:
                    return
                fut = loop.create_future()
                idle.append(fut)
                await fut
                continue
            intended = due.popleft()
            try:
                await request()
            except failures:
                tally.errors += 1
                continue
            record(perf_counter() - intended)
            tally.completed += 1

    def wake_one() -> None:
        while idle:
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def enqueue(intended: float) -> None:
        due.append(intended)
        wake_one()

    async with asyncio.TaskGroup() as tg:
        for i in range(senders):
            tg.create_task(sender(), name=f"agentcli-sender-{i}")
        try:
            await paced(enqueue, None, 1, rate_per_s, limits, tally)
        finally:
            finished = True
            while idle:
                wake_one()
    return hist
