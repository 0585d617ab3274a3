"""Profiling a live process: a sampling CPU profiler (speedscope JSON), the top allocations (tracemalloc), and
every asyncio task with its coroutine stack. Nothing here runs until asked for.

The CPU profiler is a thread that wakes every ``interval_s`` and reads the event-loop thread's Python stack with
``sys._current_frames()`` — no dependency, no tracing hook, so the profiled code runs at full speed between
samples. While a profile is taken the interpreter's switch interval is cut to :data:`SWITCH_INTERVAL_S`, so the
sampler gets the GIL in the middle of a callback rather than only when the loop gives it up to poll for I/O: an
event loop polls after every turn, so with the default 5 ms every callback shorter than that — nearly all of
them in an asyncio service — would be sampled as the idle loop. What a sample costs is reported with the profile
(the sampler thread's own CPU time against the wall time); the GIL it takes while walking a stack is time the
loop does not run, about the same again. Identical
stacks are counted once, so a profile's size is bounded by ``MAX_STACKS`` distinct stacks, not by its length.
The result opens in https://www.speedscope.app (or ``speedscope prof.json``)::

    profile = await cpu_profile(seconds=10)      # from a coroutine on the loop to profile
    Path("prof.json").write_bytes(msgspec.json.encode(profile))
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
import tracemalloc
from types import FrameType
from typing import Any, Final

__all__ = [
    "DEFAULT_INTERVAL_S",
    "MAX_SECONDS",
    "MAX_STACKS",
    "SWITCH_INTERVAL_S",
    "Sampler",
    "cpu_profile",
    "heap_profile",
    "task_dump",
]

DEFAULT_INTERVAL_S: Final = 0.005
#: The switch interval while a CPU profile is taken: how long the sampler waits for the GIL before the loop thread
#: must hand it over; 1 µs is CPython's shortest. At 10 µs a loop busy with 0.2 ms callbacks still looked idle in
#: a third of the samples, at 1 µs in a few percent. The cost is one forced GIL hand-over per sample.
SWITCH_INTERVAL_S: Final = 0.000001
MAX_SECONDS: Final = 300.0
#: Distinct stacks kept; samples of further ones count under one "(other stacks)" frame.
MAX_STACKS: Final = 10_000
#: Frames kept per stack, innermost first.
MAX_DEPTH: Final = 128
SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"


_PR_SET_TIMERSLACK: Final = 29


def _precise_timers() -> None:
    """Cut this thread's timer slack to 1 ns (Linux). The sampler waits for the GIL in a timed wait of
    :data:`SWITCH_INTERVAL_S`, which the kernel may stretch by the thread's slack, 50 µs by default; the loop thread
    polls for I/O every few hundred µs when busy with short callbacks, and a poll that falls inside the stretched
    wait hands the GIL over there, so the sample shows the idle loop. Measured on a loop busy with 0.2 ms callbacks:
    56% to 98% of the samples in them with the default slack, 97% to 98% with 1 ns. Elsewhere, or if prctl is
    missing, nothing changes."""
    if sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Sampler:
    """Samples the Python stack of thread ``thread_id`` every ``interval_s`` on a thread of its own."""

    def __init__(self, thread_id: int, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.thread_id = thread_id
        self.interval_s = interval_s
        self.samples = 0
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._frames: dict[tuple[str, str, int], int] = {}
        self._stacks: dict[tuple[int, ...], int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Sampler thread={self.thread_id} samples={self.samples} stacks={len(self._stacks)}>"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="agentflow-cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _frame(self, f: FrameType) -> int:
        code = f.f_code
        key = (code.co_qualname, code.co_filename, code.co_firstlineno)
        idx = self._frames.get(key)
        if idx is None:
            idx = self._frames[key] = len(self._frames)
        return idx

    def _run(self) -> None:
        _precise_timers()
        t0, c0 = time.perf_counter(), time.thread_time()
        me = self.thread_id
        wait = self._stop.wait
        try:
            while not wait(self.interval_s):
                frame = sys._current_frames().get(me)
                if frame is None:
                    break  # the thread is gone
                stack: list[int] = []
                f: FrameType | None = frame
                while f is not None and len(stack) < MAX_DEPTH:
                    stack.append(self._frame(f))
                    f = f.f_back
                del frame, f
                key = tuple(reversed(stack))
                stacks = self._stacks
                if key in stacks:
                    stacks[key] += 1
                elif len(stacks) < MAX_STACKS:
                    stacks[key] = 1
                else:
                    other = (self._frame_named("(other stacks)"),)
                    stacks[other] = stacks.get(other, 0) + 1
                self.samples += 1
        finally:
            self.wall_s = time.perf_counter() - t0
            self.cpu_s = time.thread_time() - c0

    def _frame_named(self, name: str) -> int:
        key = (name, "", 0)
        idx = self._frames.get(key)
        if idx is None:
            idx = self._frames[key] = len(self._frames)
        return idx

    def speedscope(self, name: str) -> dict[str, Any]:
        """The samples as a speedscope file: identical stacks once each, weighted by their sample time."""
        frames = [{"name": qual, "file": file, "line": line} for (qual, file, line) in self._frames]
        samples = [list(stack) for stack in self._stacks]
        weights = [n * self.interval_s for n in self._stacks.values()]
        return {
            "$schema": SPEEDSCOPE_SCHEMA,
            "name": name,
            "exporter": "agentflow",
            "activeProfileIndex": 0,
            "shared": {"frames": frames},
            "profiles": [
                {
                    "type": "sampled",
                    "name": name,
                    "unit": "seconds",
                    "startValue": 0.0,
                    "endValue": sum(weights),
                    "samples": samples,
                    "weights": weights,
                }
            ],
        }


async def cpu_profile(
    seconds: float,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    name: str = "agentflow",
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Sample the running event loop's thread for ``seconds``, or until ``stop`` is set (``stopped_early``); the
    speedscope file, plus what the sampling cost under ``"agentflow"`` (samples, the sampler's CPU seconds, their
    share of the wall time)."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds={seconds!r} is not between 0 and {MAX_SECONDS:g}.")
    sampler = Sampler(threading.get_ident(), interval_s=interval_s)
    # The sampler needs the GIL to read a stack. With a switch interval longer than a callback it would only get it
    # when the loop thread gives it up by itself — in its poll for I/O, after every turn — and a loop busy with
    # short callbacks would look idle. A short interval while profiling lets it in mid-callback; the old one is
    # restored after.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
    sampler.start()
    stopped = False
    try:
        if stop is None:
            await asyncio.sleep(seconds)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await stop.wait()
                    stopped = True
    finally:
        await asyncio.to_thread(sampler.stop)
        sys.setswitchinterval(switch)
    out = sampler.speedscope(name)
    out["agentflow"] = {
        "seconds": round(sampler.wall_s, 3),
        "interval_s": interval_s,
        "samples": sampler.samples,
        "stacks": len(sampler._stacks),
        "sampler_cpu_s": round(sampler.cpu_s, 4),
        "sampler_cpu_share": round(sampler.cpu_s / sampler.wall_s, 4) if sampler.wall_s else None,
        "stopped_early": stopped,
    }
    return out


def heap_profile(*, limit: int = 25, frames: int = 1, stop: bool = False) -> dict[str, Any]:
    """The ``limit`` source lines holding the most memory traced by tracemalloc, starting tracemalloc first if it
    is not running (it then sees only what is allocated from now on; call again later). ``stop`` stops it
    afterwards: tracing slows every allocation while it runs."""
    started = False
    if not tracemalloc.is_tracing():
        tracemalloc.start(max(1, frames))
        started = True
    snap = tracemalloc.take_snapshot().filter_traces(
        (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<unknown>"),
        )
    )
    stats = snap.statistics("traceback" if frames > 1 else "lineno")
    current, peak = tracemalloc.get_traced_memory()
    top = [
        {
            "size_bytes": s.size,
            "count": s.count,
            "file": s.traceback[0].filename,
            "line": s.traceback[0].lineno,
            "traceback": [f"{fr.filename}:{fr.lineno}" for fr in s.traceback] if frames > 1 else None,
        }
        for s in stats[:limit]
    ]
    note = (
        "tracemalloc was not running and was started by this request: only memory allocated from now on is "
        "traced, so call again after a while to see what grows. It stays on (each allocation costs more) until "
        "a request with stop=true."
        if started
        else "tracemalloc was already running; these are the allocations it has traced and that are still held."
    )
    if stop:
        tracemalloc.stop()
        note += " tracemalloc has been stopped."
    return {
        "started_now": started,
        "tracing": tracemalloc.is_tracing(),
        "traced_bytes": current,
        "traced_peak_bytes": peak,
        "total_blocks": sum(s.count for s in stats),
        "top": top,
        "note": note,
    }


def task_dump(*, limit: int = 1000, frames: int = 20) -> dict[str, Any]:
    """Every asyncio task of the running loop (at most ``limit`` listed): name, state and coroutine stack."""
    tasks = asyncio.all_tasks()
    me = asyncio.current_task()
    out = []
    for task in sorted(tasks, key=lambda t: t.get_name())[:limit]:
        coro = task.get_coro()
        stack = [f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_qualname}" for f in task.get_stack(limit=frames)]
        out.append(
            {
                "name": task.get_name(),
                "coro": getattr(coro, "__qualname__", type(coro).__name__),
                "state": "cancelling" if task.cancelling() else "pending",
                "current": task is me,
                "stack": stack,
            }
        )
    return {"count": len(tasks), "listed": len(out), "tasks": out}
