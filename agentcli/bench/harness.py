"""The noop and ``--app`` scenarios: the runs that drive agentflow; the raw baseline lives in :mod:`.raw`, the
report and table in :mod:`.noop_report`.

A scenario gives a :class:`Target`: a Runner, the agent and topic to load, and the payload. ``noop`` builds a
fresh Runner per run whose agent does nothing but record latency (framework overhead only); an ``--app``
target is the user's own un-started Runner, started once for every round because a Runner cannot restart.

What each mode measures on the agentflow side (see docs/benchmarking.md):

* closed: ``runner.request`` round trip per virtual user.
* throughput: events / (first emit → ``runner.drain()``); noop latency is handler start − ``event.created_at``.
* latency: a short saturation flood, then :func:`~.measure.paced` emission at ``load_fraction`` of it;
  noop latency is handler start − intended emit time. An app's handler cannot be instrumented, so there each
  event is a ``runner.request`` due at its intended time (see :func:`~.measure.paced_requests`) and
  its latency is result − intended time; its saturation is measured with requests too.
"""

from __future__ import annotations

import abc
import functools
import gc
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from time import perf_counter, time
from typing import Any

from rich.progress import Progress

from agentflow import (
    Config,
    Context,
    DeadLetteredError,
    Event,
    LatencyHistogram,
    ProfileSnapshot,
    RequestTimeoutError,
    Runner,
    take_snapshot,
)

from ..apps import App
from .measure import (
    REFRESH_LATENCY_S,
    STOP,
    Limits,
    Mode,
    RunResult,
    Tally,
    Ticker,
    closed_loop,
    cpu_seconds,
    flood,
    paced,
    paced_requests,
    planned_events,
)
from .raw import RawPipeline
from .report import (
    round_sides,
)

__all__ = [
    "SATURATION_LIMITS",
    "AppTarget",
    "BenchSpec",
    "Mode",
    "NoopTarget",
    "Outcome",
    "Target",
    "planned_sides",
    "run_benchmark",
]

NOOP_TOPIC = "agentcli.noop"
NOOP_AGENT = "noop"
#: A throughput flood of more than twice this many events also reports the latency of the events handled once its
#: last TAIL_EVENTS were being emitted: whether waiting grows with the length of a flood.
TAIL_EVENTS = 100_000
#: The short throughput run that measures saturation before a latency run.
SATURATION_LIMITS = Limits(duration_s=1.0)
#: Fewest concurrent requests an app's latency run uses (see AgentflowRun._senders).
SENDERS_MIN = 64
#: Request outcomes that count as errors rather than crash the benchmark.
FAILURES: tuple[type[BaseException], ...] = (DeadLetteredError, RequestTimeoutError)
#: The sides of a round, baselines first: the bare pipeline (throughput mode), the raw one, agentflow.
SIDES = ("bare", "raw", "agentflow")


@dataclass(frozen=True, slots=True)
class BenchSpec:
    """Everything the command line decided about the load, validated."""

    mode: Mode
    limits: Limits
    users: int = 64
    batch_size: int = 1
    load_fraction: float = 0.5
    payload: Any = field(default_factory=dict)
    compare_raw: bool = False
    repeat: int = 1


class Recorder:
    """Where the noop agent records latency; the run swaps ``hist`` between phases."""

    __slots__ = ("before", "hist")

    def __init__(self) -> None:
        self.hist = LatencyHistogram()
        #: events recorded in the run's earlier histograms (progress counts them too)
        self.before = 0


class Target(abc.ABC):
    """What a benchmark loads: an agent's topic on a Runner, and the payload to send it."""

    scenario: str
    agent: str
    topic: str
    config: Config
    #: ``module:attr`` of an --app target
    app: str | None = None
    #: noop only: the agent records into it; None means agentcli cannot see inside the handler.
    recorder: Recorder | None = None
    #: False when a single Runner must serve every repeat (an app's Runner cannot restart).
    fresh_per_run: bool = True

    @abc.abstractmethod
    def runner(self, mode: Mode) -> Runner:
        """A fresh (or, for an app, the one) un-started Runner for a run in ``mode``."""

    def describe(self) -> str:
        return self.scenario if self.app is None else f"{self.app} agent {self.agent}"


class NoopTarget(Target):
    scenario = "noop"
    agent = NOOP_AGENT
    topic = NOOP_TOPIC

    def __init__(self, config: Config, *, batch_size: int = 1) -> None:
        self.config = config
        self.recorder = Recorder()
        #: > 1: the agent is a batch agent taking up to this many events per call
        self.batch_size = batch_size

    def describe(self) -> str:
        return self.scenario if self.batch_size == 1 else f"{self.scenario} (batch agent, up to {self.batch_size})"

    def runner(self, mode: Mode) -> Runner:
        rec = self.recorder
        assert rec is not None
        runner = Runner(self.config)
        if self.batch_size > 1:
            # Runner.agent's signature types one-event handlers only; a batch handler takes (events, ctx).
            register = runner.agent(NOOP_TOPIC, name=NOOP_AGENT, batch_size=self.batch_size)
            register(_batch_noop(mode, rec))  # type: ignore[type-var]
            return runner
        if mode is Mode.closed:

            async def noop(event: Event, ctx: Context) -> None:
                return None

        elif mode is Mode.throughput:

            async def noop(event: Event, ctx: Context) -> None:
                rec.hist.record(time() - event.created_at)

        else:

            async def noop(event: Event, ctx: Context) -> None:
                rec.hist.record(perf_counter() - event.payload)

        runner.agent(NOOP_TOPIC, name=NOOP_AGENT)(noop)
        return runner


def _batch_noop(mode: Mode, rec: Recorder) -> Callable[[list[Event], Any], Awaitable[Any]]:
    """The noop agent as a batch agent: the same per-event work as the one-event handlers above."""
    if mode is Mode.closed:

        async def noop(events: list[Event], ctx: Any) -> None:
            return None

    elif mode is Mode.throughput:

        async def noop(events: list[Event], ctx: Any) -> None:
            # Every event of a batch starts when the call starts; events emitted together share created_at,
            # so each run of equal created_at is one latency value recorded once per event (record_n).
            hist = rec.hist
            now = time()
            i, n = 0, len(events)
            while i < n:
                created = events[i].created_at
                j = i + 1
                while j < n and events[j].created_at == created:
                    j += 1
                hist.record_n(now - created, j - i)
                i = j

    else:

        async def noop(events: list[Event], ctx: Any) -> None:
            record = rec.hist.record
            for event in events:
                record(perf_counter() - event.payload)

    return noop


class AppTarget(Target):
    scenario = "app"
    fresh_per_run = False

    def __init__(self, app: App) -> None:
        self.app = app.ref
        self.agent = app.agent
        self.topic = app.topic
        self.config = app.runner.config
        self._runner = app.runner

    def runner(self, mode: Mode) -> Runner:
        return self._runner


@dataclass(slots=True)
class Outcome:
    """Every run of a benchmark, in the order they ran: (round, side, result)."""

    runs: list[tuple[int, str, RunResult]]
    config: Config


def _counts(runner: Runner, agent: str) -> tuple[int, int]:
    """(handled + skipped, dead-lettered) of one agent, from the runner's own statistics."""
    for a in runner.statistics().agents:
        if a.name == agent:
            return a.handled + a.skipped, a.dead_lettered
    return 0, 0


class AgentflowRun:
    """One measured run against a started Runner; checks its own counts against ``runner.statistics()``."""

    def __init__(
        self,
        runner: Runner,
        target: Target,
        spec: BenchSpec,
        progress: Progress | None,
        profiler: AbstractAsyncContextManager[Any],
        label: str,
    ) -> None:
        self.runner = runner
        self.target = target
        self.spec = spec
        self.progress = progress
        self.profiler = profiler
        self.label = label

    async def run(self) -> RunResult:
        if self.spec.mode is Mode.closed:
            return await self.closed()
        if self.spec.mode is Mode.throughput:
            return await self.throughput()
        return await self.latency()

    def _poll(self) -> Callable[[], int]:
        rec = self.target.recorder
        if rec is not None:
            return lambda: rec.before + rec.hist.count
        runner, agent = self.runner, self.target.agent
        start = sum(_counts(runner, agent))
        return lambda: sum(_counts(runner, agent)) - start

    def _check(self, result: RunResult, before: tuple[int, int], snap: ProfileSnapshot) -> RunResult:
        # The runner's profile over the measured phase, for agentcli profile-report --from.
        result.profile = take_snapshot(self.runner).minus(snap)
        handled, dead = (a - b for a, b in zip(_counts(self.runner, self.target.agent), before, strict=True))
        ours = result.completed + result.errors
        if handled + dead != ours or ours != result.requested:
            result.warnings.append(
                f"Counts disagree: agentcli issued {result.requested:,} and counted {result.completed:,} completed "
                f"+ {result.errors:,} errors, but runner.statistics() shows {handled:,} handled + {dead:,} "
                "dead-lettered; treat these figures with suspicion."
            )
        return result

    async def closed(self) -> RunResult:
        spec, target, runner = self.spec, self.target, self.runner
        request = functools.partial(runner.request, target.topic, spec.payload)
        tally = Tally()
        before = _counts(runner, target.agent)
        gc.collect()
        snap = take_snapshot(runner)
        async with Ticker(self.progress, self.label, spec.limits, tally.finished):
            cpu0, t0 = cpu_seconds(), perf_counter()
            async with self.profiler:
                hist = await closed_loop(request, spec.users, spec.limits, FAILURES, tally)
            duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
        result = RunResult(self.label, tally.issued, tally.completed, tally.errors, duration, cpu, hist)
        return self._check(result, before, snap)

    async def _flood(
        self, limits: Limits, tally: Tally, *, stamp: bool, label: str, at: tuple[int, Callable[[], None]] | None = None
    ) -> float:
        """Emit as fast as possible and drain; return the seconds from first emit to drained."""
        runner, topic, spec = self.runner, self.target.topic, self.spec
        emit_one = functools.partial(runner.emit, topic)
        emit_batch = functools.partial(runner.emit_many, topic)
        async with Ticker(self.progress, label, limits, self._poll()):
            t0 = perf_counter()
            await flood(emit_one, emit_batch, spec.batch_size, spec.payload, limits, tally, stamp=stamp, at=at)
            await runner.drain()
            return perf_counter() - t0

    async def throughput(self) -> RunResult:
        target, runner = self.target, self.runner
        rec = target.recorder
        head = LatencyHistogram()
        if rec is not None:
            rec.hist, rec.before = head, 0
        count = self.spec.limits.count
        at = None
        if rec is not None and count is not None and count > 2 * TAIL_EVENTS:

            def tail_begins() -> None:  # the handler records into a new histogram from here on: no per-event cost
                rec.before, rec.hist = head.count, LatencyHistogram()

            at = (count - TAIL_EVENTS, tail_begins)
        tally = Tally()
        before = _counts(runner, target.agent)
        gc.collect()
        snap = take_snapshot(runner)
        cpu0 = cpu_seconds()
        async with self.profiler:
            duration = await self._flood(self.spec.limits, tally, stamp=False, label=self.label, at=at)
        cpu = cpu_seconds() - cpu0
        handled, dead = (a - b for a, b in zip(_counts(runner, target.agent), before, strict=True))
        hist = tail = None
        if rec is not None:
            if rec.hist is head:
                hist = head
            else:
                tail, hist = rec.hist, head.copy()
                hist.merge(tail)
        completed = hist.count if hist is not None else handled
        result = RunResult(self.label, tally.issued, completed, dead, duration, cpu, hist, tail=tail)
        return self._check(result, before, snap)

    async def latency(self) -> RunResult:
        spec, target, runner = self.spec, self.target, self.runner
        rec = target.recorder
        saturation = await self._saturation()
        rate = saturation * spec.load_fraction
        before = _counts(runner, target.agent)
        tally = Tally()
        label = f"{self.label} at {rate:,.0f}/s"
        gc.collect()
        snap = take_snapshot(runner)
        cpu0 = cpu_seconds()
        if rec is not None:
            rec.hist, rec.before = LatencyHistogram(), 0
            emit_one = functools.partial(runner.emit, target.topic)
            emit_batch = functools.partial(runner.emit_many, target.topic)
            async with Ticker(self.progress, label, spec.limits, self._poll(), REFRESH_LATENCY_S):
                t0 = perf_counter()
                async with self.profiler:
                    await paced(emit_one, emit_batch, spec.batch_size, rate, spec.limits, tally)
                    await runner.drain()
                duration = perf_counter() - t0
            hist, completed, errors = rec.hist, rec.hist.count, _counts(runner, target.agent)[1] - before[1]
        else:
            async with Ticker(self.progress, label, spec.limits, tally.finished, REFRESH_LATENCY_S):
                t0 = perf_counter()
                async with self.profiler:
                    hist = await paced_requests(self._request(), self._senders(), rate, spec.limits, FAILURES, tally)
                duration = perf_counter() - t0
            completed, errors = tally.completed, tally.errors
        cpu = cpu_seconds() - cpu0
        result = RunResult(
            self.label,
            tally.issued,
            completed,
            errors,
            duration,
            cpu,
            hist,
            saturation_per_s=saturation,
            rate_per_s=rate,
            planned_s=planned_events(spec.limits, rate) / rate,
        )
        return self._check(result, before, snap)

    def _request(self) -> Callable[[], Awaitable[Any]]:
        return functools.partial(self.runner.request, self.target.topic, self.spec.payload)

    def _senders(self) -> int:
        """Requests an app is loaded with at once: as many as the runner holds in flight, so it is the limit."""
        return max(SENDERS_MIN, self.runner.config.runner.max_concurrent_events)

    async def _saturation(self) -> float:
        """Events/s at saturation, measured the way the paced phase will load: emits, or requests for an app."""
        tally = Tally()
        label = f"{self.label} saturation"
        gc.collect()
        if (rec := self.target.recorder) is not None:
            # The flood records into a histogram of its own: the one before it belongs to the previous round's
            # result, and the paced phase starts another.
            rec.hist, rec.before = LatencyHistogram(), 0
            elapsed = await self._flood(SATURATION_LIMITS, tally, stamp=True, label=label)
            return tally.issued / elapsed
        async with Ticker(self.progress, label, SATURATION_LIMITS, tally.finished):
            t0 = perf_counter()
            await closed_loop(self._request(), self._senders(), SATURATION_LIMITS, FAILURES, tally)
            return tally.finished() / (perf_counter() - t0)


def planned_sides(spec: BenchSpec) -> tuple[str, ...]:
    """The sides of each round: agentflow; with --compare-raw the raw pipeline too, and in throughput mode the bare
    one (in closed mode the raw consumer already does nothing per request, and a latency run records each event's
    latency by design, so there the raw side is the bare one)."""
    if not spec.compare_raw:
        return ("agentflow",)
    return SIDES if spec.mode is Mode.throughput else SIDES[1:]


async def run_benchmark(
    target: Target,
    spec: BenchSpec,
    progress: Progress | None,
    profiler: AbstractAsyncContextManager[Any] | None = None,
) -> Outcome:
    """Run ``spec.repeat`` rounds; with ``--compare-raw`` each round runs raw and agentflow, alternating which goes
    first (:func:`~.report.round_sides`)."""
    prof: AbstractAsyncContextManager[Any] = profiler if profiler is not None else nullcontext()
    runs: list[tuple[int, str, RunResult]] = []
    raw = RawPipeline(target.config.runner, progress) if spec.compare_raw else None

    def tag(n: int) -> str:
        return f" {n}/{spec.repeat}" if spec.repeat > 1 else ""

    async def raw_round(n: int) -> None:
        assert raw is not None
        label = "raw" + tag(n)
        if spec.mode is Mode.closed:
            result = await raw.run_closed(spec.payload, spec.users, spec.limits, label)
        elif spec.mode is Mode.throughput:
            result = await raw.run_throughput(spec.payload, spec.limits, label)
        else:
            result = await raw.run_latency(spec.limits, spec.load_fraction, SATURATION_LIMITS, label)
        runs.append((n, "raw", result))

    async def bare_round(n: int) -> None:
        assert raw is not None
        runs.append((n, "bare", await raw.run_bare(spec.payload, spec.limits, "bare" + tag(n))))

    async def ours(runner: Runner, n: int) -> RunResult:
        result = await AgentflowRun(runner, target, spec, progress, prof, "agentflow" + tag(n)).run()
        runs.append((n, "agentflow", result))
        return result

    # After a Ctrl-C (STOP) the run in progress ends with what it measured and no other starts.
    if not target.fresh_per_run:
        runner = target.runner(spec.mode)
        async with runner:
            for n in range(1, spec.repeat + 1):
                last = await ours(runner, n)
                if STOP.set:
                    break
        shutdown = runner.statistics().shutdown
        last.shutdown_s = shutdown.duration_s if shutdown is not None else None
        return Outcome(runs, target.config)
    for n in range(1, spec.repeat + 1):
        for side in round_sides(planned_sides(spec), n):
            if STOP.set:
                return Outcome(runs, target.config)
            if side == "raw":
                await raw_round(n)
                continue
            if side == "bare":
                await bare_round(n)
                continue
            runner = target.runner(spec.mode)
            async with runner:
                result = await ours(runner, n)
            shutdown = runner.statistics().shutdown
            result.shutdown_s = shutdown.duration_s if shutdown is not None else None
    return Outcome(runs, target.config)
