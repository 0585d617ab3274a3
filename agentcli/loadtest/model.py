"""The load generator: an open model (arrivals at a rate) and a closed model (looping virtual users).

Open model: arrival ``n`` is due at ``t0 + profile.arrival_time(n)``, an absolute timeline computed from the
stages, so a late pass never shifts later arrivals. Each due arrival goes to an idle virtual user (a long-lived
coroutine; new ones are started up to ``max_vus``), or to the VU that finishes while it is due; when all
``max_vus`` are busy the arrival is counted as dropped instead of waiting, so a slow system cannot slow the
generator down. A new VU starts only when none is idle, so the VUs in flight follow Little's law (arrival rate ×
time in flight) by themselves. Left to agentcli (``max_vus`` None), the cap is that, up to ``AUTO_VUS_LIMIT``, as
long as the generator keeps to its schedule: once the generator itself has reached arrivals more than
``GENERATOR_LAG_LIMIT_S`` late for ``LATE_GRACE_S`` on end, it is saturated, and until it has been on time for
``RECOVER_S`` on end an arrival finds no new VU (past ``AUTO_VUS_MIN``) and is dropped, because more iterations in
flight would only slow the generator further — the trap a fixed large cap sets. A stalled target, which leaves the
generator idle and on time, still gets a VU per arrival and its stall is measured. Latency is measured from the
intended time, so any delay — the system's or the generator's own — is in it; the generator's own part is reported
separately as start lag (intended → the iteration actually starting). Between arrivals the generator is idle: it
waits on the loop's timers, and for the last ``ALARM_S`` on :class:`_Alarm`.

Closed model: ``profile.target_at(t)`` virtual users each loop request → result → think time. Their latency is
a round trip from the moment each iteration starts (what a closed system can measure).

Every ``window_s`` and at every stage boundary the live :class:`~.figures.Window` is closed and handed to
``on_window``; returning True from it stops the run early (abort on a failing threshold).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import threading
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from .figures import Window, WindowRecord
from .stages import Profile
from .targets import LoadTarget, Probe

__all__ = ["AUTO_VUS_LIMIT", "GENERATOR_LAG_LIMIT_S", "Engine", "EngineStatistics"]

log = logging.getLogger(__name__)

#: Further ahead than this, the generator waits for the next arrival on the loop's timers (millisecond
#: resolution); closer, on :class:`_Alarm`, which is exact to tens of microseconds.
ALARM_S = 0.001
#: How often the closed model adjusts the number of VUs to the stage target.
VU_STEP_S = 0.05
#: Open model, --max-vus left to agentcli: VUs start freely up to AUTO_VUS_MIN, then only while the generator is
#: on time, up to AUTO_VUS_LIMIT.
AUTO_VUS_MIN = 16
AUTO_VUS_LIMIT = 1000
#: An arrival reached later than this means the generator, not the target, is the limit (the report says so).
GENERATOR_LAG_LIMIT_S = 0.001
#: How long the generator must have been late on end before a derived cap stops starting VUs (a short pause of
#: the process, a GC pass or the OS, is not saturation), and on time on end before it starts them again.
LATE_GRACE_S = 0.02
RECOVER_S = 0.5

OnWindow = Callable[[WindowRecord, dict[str, Any]], bool]
PayloadFn = Callable[[int], Any]
CheckFn = Callable[[Any], Any]


class _Alarm:
    """Wakes the event loop at a precise time from a thread of its own.

    The loop's timers have millisecond resolution and fire up to a millisecond off, which would be start lag of
    the generator's own making; passing through the loop until an arrival is due instead keeps a core busy. A
    thread blocked on a condition with a timeout wakes within tens of microseconds and costs nothing meanwhile.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self._loop = loop
        self._clock = clock
        self._cond = threading.Condition()
        self._when: float | None = None
        self._fut: asyncio.Future[None] | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="agentcli-loadtest-alarm", daemon=True)
        self._thread.start()

    def at(self, when: float) -> asyncio.Future[None]:
        """A future done at ``when`` (on the engine's clock); it replaces the one asked for before."""
        fut = self._loop.create_future()
        with self._cond:
            self._when, self._fut = when, fut
            self._cond.notify()
        return fut

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                when = self._when
                if when is None:
                    cond.wait()
                    continue
                delay = when - self._clock()
                if delay > 0:
                    cond.wait(delay)  # woken early by a new time, or the timeout: look again
                    continue
                fut, self._when, self._fut = self._fut, None, None
                if fut is not None:
                    self._loop.call_soon_threadsafe(_wake, fut)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class EngineStatistics:
    __slots__ = ("dropped", "finished", "interrupted", "scheduled", "started")

    def __init__(self) -> None:
        #: interrupted: iterations still running when graceful_stop_s ran out, cancelled
        self.scheduled = self.started = self.finished = self.dropped = self.interrupted = 0


class Engine:
    """Drives ``target`` through ``profile`` and reports windows; see the module docstring."""

    def __init__(
        self,
        target: LoadTarget,
        profile: Profile,
        *,
        open_model: bool,
        on_window: OnWindow,
        payload: PayloadFn,
        check: CheckFn | None = None,
        max_vus: int | None = None,
        think_time_s: float = 0.0,
        window_s: float = 1.0,
        graceful_stop_s: float = 30.0,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.target = target
        self.profile = profile
        self.open_model = open_model
        self.on_window = on_window
        self.payload = payload
        self.check = check
        #: None: up to AUTO_VUS_LIMIT while the generator keeps to its schedule (see the module docstring)
        self.auto_vus = max_vus is None
        self.max_vus = AUTO_VUS_LIMIT if max_vus is None else max_vus
        self.think_time_s = think_time_s
        self.window_s = window_s
        self.graceful_stop_s = graceful_stop_s
        self.clock = clock
        self.t0 = 0.0
        self.stats = EngineStatistics()
        self.vus = 0  # VU coroutines alive
        self.busy = 0  # VUs inside an iteration
        self.vu_target = 0
        #: a threshold kept failing, and the run stopped early (``abort_on_fail``)
        self.aborted = False
        #: the run ended before its schedule: an abort, or :meth:`stop` (a signal)
        self.stopped_early = False
        self.finished = asyncio.Event()
        self._seq = 0
        # The open model's schedule: the next arrival's index and due time (seconds into the run), and whether
        # the generator keeps to it (see _track_lag).
        self._n = 0
        self._next_t: float | None = None
        #: past this many VUs, a derived cap starts new ones only for arrivals the generator reaches on time
        self._free = AUTO_VUS_MIN if self.auto_vus else self.max_vus
        self._late_since: float | None = None
        self._on_time_since = 0.0
        self._saturated = False
        self._idle: deque[asyncio.Future[float | None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._probe = Probe()
        self._boundaries = self._window_boundaries()
        self.window = self._new_window(0, 0.0)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"<Engine {'open' if self.open_model else 'closed'} vus={self.busy}/{self.vus} scheduled={s.scheduled} "
            f"started={s.started} finished={s.finished} dropped={s.dropped}>"
        )

    def elapsed(self) -> float:
        return self.clock() - self.t0 if self.t0 else 0.0

    def _window_boundaries(self) -> list[tuple[float, int]]:
        """(end time, stage) of every window: every window_s, and cut at each stage end."""
        out: list[tuple[float, int]] = []
        t = 0.0
        for i, (_t0, t1, *_r) in enumerate(self.profile.bounds):
            while t1 - t > self.window_s * 1.0001:
                t += self.window_s
                out.append((t, i))
            t = t1
            out.append((t1, i))
        return out

    def _new_window(self, index: int, t0_s: float) -> Window:
        stage = self._boundaries[min(index, len(self._boundaries) - 1)][1]
        w = Window(index, stage, t0_s)
        if self.target.streaming:
            from agentflow import LatencyHistogram

            w.ttft, w.itl = LatencyHistogram(), LatencyHistogram()
        self._probe.ttft, self._probe.itl = w.ttft, w.itl
        return w

    def _close_window(self, t1_s: float) -> bool:
        old = self.window
        self.window = self._new_window(old.index + 1, t1_s)
        area = self.profile.integral(t1_s) - self.profile.integral(old.t0_s)
        duration = t1_s - old.t0_s
        rec = old.close(t1_s, area / duration if duration > 0 else 0.0)
        return self.on_window(rec, old.hists())

    def stop(self) -> None:
        """End the run early (a signal, or an abort): no new iterations; in-flight ones get ``graceful_stop_s``."""
        self.stopped_early = True
        self._stopping = True

    async def run(self) -> None:
        # What exists before the run (the modules, the target's client, the scenario) lives as long as the run:
        # frozen, a full collection does not walk it (tens of milliseconds with agentflow and aiohttp loaded,
        # every arrival due meanwhile late). Left frozen if the process had frozen objects of its own already.
        thaw = gc.get_freeze_count() == 0
        gc.freeze()
        self.t0 = self.clock()
        windows = asyncio.create_task(self._windows(), name="agentcli-loadtest-windows")
        try:
            if self.open_model:
                await self._open()
            else:
                await self._closed()
            await self._drain()
            if not self.stopped_early:
                await windows  # closes every window up to the last boundary, on time
                left = self.t0 + self.profile.duration_s - self.clock()
                if left > 0:
                    await asyncio.sleep(left)
        finally:
            windows.cancel()
            await asyncio.gather(windows, return_exceptions=True)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if thaw:
                gc.unfreeze()
        # The last window ends with the schedule (iterations still finishing then are counted in it), or when an
        # abort stopped the run.
        end = self.elapsed() if self.stopped_early else self.profile.duration_s
        self._close_window(max(end, self.window.t0_s))
        self.finished.set()

    async def _drain(self) -> None:
        """Stop the VUs: idle ones at once, busy ones after their iteration or ``graceful_stop_s``."""
        self._stopping = True
        for fut in self._idle:
            if not fut.done():
                fut.set_result(None)
        self._idle.clear()
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=self.graceful_stop_s)
            for task in pending:
                task.cancel()
            self.stats.interrupted += len(pending)
            await asyncio.gather(*pending, return_exceptions=True)

    async def _windows(self) -> None:
        clock, t0 = self.clock, self.t0
        for end, _stage in self._boundaries[:-1]:
            delay = t0 + end - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._close_window(end):
                log.info("Stopping the run: a threshold kept failing for the abort grace period.")
                self.aborted = True
                self.stop()
                return

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> None:
        clock, t0, sleep = self.clock, self.t0, asyncio.sleep
        alarm = _Alarm(asyncio.get_running_loop(), clock)
        self._next_t = self.profile.arrival_time(0)
        try:
            while self._next_t is not None and not self._stopping:
                now = clock() - t0
                ahead = self._next_t - now
                if ahead <= 0:
                    self._release(now)
                    # Let the VUs just handed an arrival start before the clock is read again.
                    await sleep(0)
                elif ahead > ALARM_S:
                    # The loop's timers fire up to a millisecond off, so they only bring the generator close.
                    await sleep(ahead - ALARM_S)
                else:
                    # VUs finishing meanwhile take the arrivals that fall due (see _release), so at a high rate
                    # this often wakes to find its arrival gone and simply waits for the next.
                    await alarm.at(t0 + self._next_t)
        finally:
            alarm.close()

    def _release(self, now: float, *, claim: bool = False) -> float | None:
        """Hand every arrival due by ``now`` (seconds into the run) to an idle or a new VU, or count it dropped.

        With ``claim`` the caller is a VU that has just finished an iteration: the first due arrival is returned
        for it to run at once (its intended start time), which saves a hand-off through the loop per arrival when
        the generator is busy. None: nothing is due (or the schedule is over).
        """
        next_t = self._next_t
        if next_t is None or next_t > now or self._stopping:
            return None
        t0, stats, idle, win = self.t0, self.stats, self._idle, self.window
        self._track_lag(now, now - next_t)
        claimed: float | None = None
        n, arrival_time = self._n, self.profile.arrival_time
        while next_t is not None and next_t <= now:
            win.scheduled += 1
            stats.scheduled += 1
            if claim and claimed is None:
                claimed = t0 + next_t
            elif idle:
                idle.pop().set_result(t0 + next_t)
            elif self.vus < self._free or (not self._saturated and self.vus < self.max_vus):
                self.vus += 1
                self._spawn(self._open_vu(t0 + next_t))
            else:
                win.dropped += 1
                stats.dropped += 1
            n += 1
            next_t = arrival_time(n)
        self._n, self._next_t = n, next_t
        busy = self.vus - len(idle)
        if busy > win.vus_max:
            win.vus_max = busy
        return claimed

    def _track_lag(self, now: float, late: float) -> None:
        """Whether the generator is saturated: late past the limit for the grace period, until on time again."""
        if late <= GENERATOR_LAG_LIMIT_S:
            if self._late_since is not None:
                self._late_since, self._on_time_since = None, now
            self._saturated = self._saturated and now - self._on_time_since < RECOVER_S
        elif self._late_since is None:
            self._late_since = now
        elif now - self._late_since >= LATE_GRACE_S:
            self._saturated = True

    async def _open_vu(self, intended: float | None) -> None:
        loop = asyncio.get_running_loop()
        idle, clock, t0 = self._idle, self.clock, self.t0
        while intended is not None:
            await self._iteration(intended, lag=True)
            if self._stopping:
                break
            intended = self._release(clock() - t0, claim=True)
            if intended is None:
                fut: asyncio.Future[float | None] = loop.create_future()
                idle.append(fut)
                intended = await fut
        self.vus -= 1

    async def _closed(self) -> None:
        clock, t0, profile = self.clock, self.t0, self.profile
        while not self._stopping:
            t = clock() - t0
            if t >= profile.duration_s:
                return
            self.vu_target = math.floor(profile.target_at(t) + 0.5)
            while self.vus < self.vu_target:
                self.vus += 1
                self._spawn(self._closed_vu(self.vus - 1))
            if self.vus > self.window.vus_max:
                self.window.vus_max = self.vus
            await asyncio.sleep(min(VU_STEP_S, max(profile.duration_s - t, 0.0)))

    async def _closed_vu(self, index: int) -> None:
        clock, think = self.clock, self.think_time_s
        try:
            while not self._stopping and index < self.vu_target:
                self.window.scheduled += 1
                self.stats.scheduled += 1
                await self._iteration(clock(), lag=False)
                # A target that answers without suspending would otherwise starve the loop (windows, ramps).
                await asyncio.sleep(think if think > 0 and not self._stopping else 0)
        finally:
            self.vus -= 1

    async def _iteration(self, intended: float, *, lag: bool) -> None:
        start = self.clock()
        win = self.window
        if lag:
            win.lag.record(start - intended)
        win.started += 1
        self.stats.started += 1
        self.busy += 1
        seq = self._seq
        self._seq = seq + 1
        try:
            result = await self.target.call(self.payload(seq), self._probe)
            if self.check is not None:
                verdict = self.check(result)
                if verdict is False or isinstance(verdict, str):
                    self.window.error(verdict if isinstance(verdict, str) else "check_failed")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure of the target is a counted error, never a crash
            self.window.error(self.target.error_kind(exc))
            return
        finally:
            self.busy -= 1
            self.stats.finished += 1
        end = self.clock()
        win = self.window
        win.latency.record(end - intended)
        win.service.record(end - start)
        win.completed += 1
