"""Profiling a live process: a sampling CPU profiler (speedscope JSON), the top allocations (tracemalloc), and
every asyncio task with its coroutine stack. Nothing here runs until asked for.

The CPU profiler samples the event loop's Python stack — no dependency, no tracing hook, so the profiled code runs
at full speed between samples. When the loop runs on the main thread (``agentcli run``, most services) it is
:class:`SignalSampler`: the kernel sends ``SIGPROF`` each time the process has used ``interval_s`` of CPU time
(``setitimer(ITIMER_PROF)``), and the handler, which Python runs on the main thread between two bytecodes, records
the stack it interrupted. Samples fall where the CPU time goes, in the middle of a callback, however short the
callbacks; an idle loop takes none. Elsewhere (a loop on another thread, or a platform without ``setitimer``) it
is :class:`Sampler`, a thread that wakes every ``interval_s`` of wall time and reads the loop thread's stack
with ``sys._current_frames()``: it needs the GIL for that, which the loop thread also gives up whenever it polls
for I/O, so callbacks much shorter than the switch interval (cut to a tenth of ``interval_s`` while it runs)
tend to be sampled as the idle loop.

What sampling cost is reported with the profile: the time spent taking samples against the wall time. Identical
stacks are counted once, so a profile's size is bounded by ``MAX_STACKS`` distinct stacks, not by its length. The
result opens in https://www.speedscope.app (or ``speedscope prof.json``)::

    profile = await cpu_profile(seconds=10)      # from a coroutine on the loop to profile
    Path("prof.json").write_bytes(msgspec.json.encode(profile))
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
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
    "Sampler",
    "SignalSampler",
    "Stacks",
    "cpu_profile",
    "heap_profile",
    "task_dump",
]

DEFAULT_INTERVAL_S: Final = 0.005
MAX_SECONDS: Final = 300.0
#: Distinct stacks kept; samples of further ones count under one "(other stacks)" frame.
MAX_STACKS: Final = 10_000
#: Frames kept per stack, innermost first.
MAX_DEPTH: Final = 128
SPEEDSCOPE_SCHEMA: Final = "https://www.speedscope.app/file-format-schema.json"


class Stacks:
    """Sampled stacks: frames interned, identical stacks counted once with their summed weight (seconds)."""

    def __init__(self) -> None:
        self.samples = 0
        self._frames: dict[tuple[str, str, int], int] = {}
        self._stacks: dict[tuple[int, ...], float] = {}

    def __len__(self) -> int:
        return len(self._stacks)

    def _frame(self, key: tuple[str, str, int]) -> int:
        idx = self._frames.get(key)
        if idx is None:
            idx = self._frames[key] = len(self._frames)
        return idx

    def add(self, frame: FrameType | None, weight_s: float) -> None:
        """Count the stack that ends in ``frame`` (innermost) with ``weight_s`` seconds."""
        stack: list[int] = []
        f = frame
        while f is not None and len(stack) < MAX_DEPTH:
            code = f.f_code
            stack.append(self._frame((code.co_qualname, code.co_filename, code.co_firstlineno)))
            f = f.f_back
        key = tuple(reversed(stack))
        stacks = self._stacks
        if key in stacks:
            stacks[key] += weight_s
        elif len(stacks) < MAX_STACKS:
            stacks[key] = weight_s
        else:
            other = (self._frame(("(other stacks)", "", 0)),)
            stacks[other] = stacks.get(other, 0.0) + weight_s
        self.samples += 1

    def speedscope(self, name: str) -> dict[str, Any]:
        """The samples as a speedscope file: identical stacks once each, weighted by their sample time."""
        frames = [{"name": qual, "file": file, "line": line} for (qual, file, line) in self._frames]
        weights = list(self._stacks.values())
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
                    "samples": [list(stack) for stack in self._stacks],
                    "weights": weights,
                }
            ],
        }


class SignalSampler:
    """Samples the main thread's stack on ``SIGPROF``, each time the process has used ``interval_s`` of CPU time;
    a sample weighs the CPU time since the one before. Start and stop it on the main thread; the previous
    ``SIGPROF`` handler is put back on stop."""

    clock: Final = "cpu"

    def __init__(self, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.stacks = Stacks()
        #: Seconds spent in the handler (loop time taken from the application), and the profile's wall time.
        self.cost_s = 0.0
        self.wall_s = 0.0
        self._t0 = 0.0
        self._cpu = 0.0
        self._old: Any = None

    def __repr__(self) -> str:
        return f"<SignalSampler samples={self.stacks.samples} stacks={len(self.stacks)}>"

    @staticmethod
    def usable() -> bool:
        """Whether this thread can run it: the main thread, on a platform with ``setitimer``."""
        return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        t = time.perf_counter()
        cpu = time.process_time()
        self.stacks.add(frame, cpu - self._cpu)
        self._cpu = cpu
        self.cost_s += time.perf_counter() - t

    def start(self) -> None:
        self._t0, self._cpu = time.perf_counter(), time.process_time()
        self._old = signal.signal(signal.SIGPROF, self._handler)
        signal.siginterrupt(signal.SIGPROF, False)  # restart interrupted system calls (SA_RESTART)
        signal.setitimer(signal.ITIMER_PROF, self.interval_s, self.interval_s)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0.0, 0.0)
        signal.signal(signal.SIGPROF, self._old if self._old is not None else signal.SIG_DFL)
        self.wall_s = time.perf_counter() - self._t0


class Sampler:
    """Samples the Python stack of thread ``thread_id`` every ``interval_s`` of wall time, on a thread of its own
    (the fallback of :class:`SignalSampler`; see the module docstring)."""

    clock: Final = "wall"

    def __init__(self, thread_id: int, *, interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.thread_id = thread_id
        self.interval_s = interval_s
        self.stacks = Stacks()
        #: The sampler thread's CPU seconds, and the profile's wall time.
        self.cost_s = 0.0
        self.wall_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._switch = 0.0

    def __repr__(self) -> str:
        return f"<Sampler thread={self.thread_id} samples={self.stacks.samples} stacks={len(self.stacks)}>"

    def start(self) -> None:
        # Reading a stack needs the GIL; a shorter switch interval lets the sampler in during a callback more often
        # than only when the loop thread polls for I/O. Not much shorter: the sampler polls the GIL at that
        # interval while it waits, and at microseconds that wait becomes a spin that takes a core.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, self.interval_s / 10))
        self._thread = threading.Thread(target=self._run, name="agentflow-cpu-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        sys.setswitchinterval(self._switch)

    def _run(self) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        me = self.thread_id
        wait = self._stop.wait
        try:
            while not wait(self.interval_s):
                frame = sys._current_frames().get(me)
                if frame is None:
                    break  # the thread is gone
                self.stacks.add(frame, self.interval_s)
                del frame
        finally:
            self.wall_s = time.perf_counter() - t0
            self.cost_s = time.thread_time() - c0


async def cpu_profile(
    seconds: float,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    name: str = "agentflow",
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Sample the running event loop's thread for ``seconds``, or until ``stop`` is set (``stopped_early``); the
    speedscope file, plus under ``"agentflow"`` how it was taken (``clock``: ``cpu`` for :class:`SignalSampler`,
    ``wall`` for :class:`Sampler`) and what sampling cost (seconds, and their share of the wall time)."""
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"seconds={seconds!r} is not between 0 and {MAX_SECONDS:g}.")
    sampler: SignalSampler | Sampler
    if SignalSampler.usable():
        sampler = SignalSampler(interval_s=interval_s)
    else:
        sampler = Sampler(threading.get_ident(), interval_s=interval_s)
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
        if isinstance(sampler, Sampler):
            await asyncio.to_thread(sampler.stop)
        else:
            sampler.stop()
    out = sampler.stacks.speedscope(name)
    out["agentflow"] = {
        "clock": sampler.clock,
        "seconds": round(sampler.wall_s, 3),
        "interval_s": interval_s,
        "samples": sampler.stacks.samples,
        "stacks": len(sampler.stacks),
        "sampler_cpu_s": round(sampler.cost_s, 4),
        "sampler_cpu_share": round(sampler.cost_s / sampler.wall_s, 4) if sampler.wall_s else None,
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
