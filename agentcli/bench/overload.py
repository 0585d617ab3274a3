"""``agentcli benchmark --scenario overload``: what overload costs the runner, and what its bounds do about it.

Two parts, in this process on uvloop (docs/benchmarking.md, "Overload"; part 2 is :mod:`.blocked`, the tables
:mod:`.overload_report`):

1. **10x the agent's capacity.** An agent with a known capacity (``concurrency`` handlers that each sleep
   ``service_s``) is measured by a closed loop of ``4 × concurrency`` requesters — its capacity on this machine —
   and then offered ``factor`` times that for ``duration_s``, first as an open loop of ``runner.request`` calls
   (each arrival its own task, started at its intended time), then as ``POST /v1/events`` from an
   ``agentcli loadtest`` child process. Reported: events handled per second as a share of capacity, refusals
   (BackpressureError, 429) and how fast, the growth of the process's RSS over its idle RSS before the window,
   the most pending requests and waiting emits seen, and whether every accepted event was handled once the load
   stopped. With ``--bus kafka`` this part runs on Kafka.
2. **Blocked emitters** (memory bus). A noop agent is held (its handlers wait on a gate) and its topic's buffer
   filled; then ``emitters`` tasks each ``await runner.emit(...)`` and block. The gate opens and the agent drains
   everything. Timed: first emitter created → every emitter returned. The baseline does the same on a bare
   ``asyncio.Queue(maxsize=buffer)`` with ``worker_pool_size`` consumers held the same way and ``emitters``
   blocked ``q.put`` putters. Each round runs both sides, the order alternating; the median round of each side
   and the median of the rounds' agentflow/raw (ratio ``blocked_vs_raw``) are reported. Waiting that costs the
   same per caller however many wait keeps the ratio flat as ``emitters`` grows.

The top-level figures of the report are part 1's ``runner.request`` window; ``errors`` counts accepted events
that were not handled (there must be none).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import tempfile
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import msgspec
from rich.console import Console

from agentflow import (
    BackpressureError,
    Config,
    Context,
    DeadLetteredError,
    Event,
    LatencyHistogram,
    RequestTimeoutError,
    Runner,
    config_from_dict,
)

from .blocked import SIDES, blocked_emitters
from .measure import cpu_seconds, rss_mb
from .report import Measurement, by_duration, effective_config, latency_ms, order_of
from .schema import IngestFigures, OverloadDetails, RequestFigures, Run

__all__ = ["PLANNED_RATIOS", "OverloadSpec", "run_overload_benchmark"]

TOPIC = "agentcli.overload"
#: The closed loop that measures the agent's capacity before the overload window.
CAPACITY_S = 2.0
#: How often the overload window samples RSS and the runner's pending/waiting counts.
SAMPLE_S = 0.05
#: Events per POST /v1/events of the ingest window.
INGEST_BATCH = 10
#: The ingest window's runner reads its bearer token from this variable, which must be unset: no token.
NO_TOKEN_ENV = "AGENTCLI_OVERLOAD_BENCHMARK_TOKEN"
#: The ratios an overload run reports.
PLANNED_RATIOS = frozenset({"blocked_vs_raw", "request_capacity_share", "ingest_capacity_share"})


@dataclass(frozen=True, slots=True)
class OverloadSpec:
    emitters: int = 40_000
    repeat: int = 5
    duration_s: float = 10.0
    factor: float = 10.0
    concurrency: int = 8
    service_s: float = 0.01


# ---- part 1: 10x the agent's capacity ----------------------------------------------------------------------------


class _Outcomes:
    __slots__ = ("completed", "failed", "latency", "refusal", "refused", "timed_out")

    def __init__(self) -> None:
        self.completed = self.refused = self.timed_out = self.failed = 0
        self.latency = LatencyHistogram()
        self.refusal = LatencyHistogram()


def _agent_handled(runner: Runner) -> int:
    return sum(a.handled + a.skipped + a.dead_lettered for a in runner.statistics().agents)


async def _capacity(runner: Runner, users: int) -> float:
    """Events/s the agent handles when it always has work: a closed loop of ``users`` requesters."""
    deadline = perf_counter() + CAPACITY_S

    async def user() -> None:
        while perf_counter() < deadline:
            await runner.request(TOPIC, None)

    before = _agent_handled(runner)
    t0 = perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(users):
            tg.create_task(user())
    return (_agent_handled(runner) - before) / (perf_counter() - t0)


def _overload_config(base: Config) -> Config:
    """``base`` with HTTP ingest on a free loopback port and no bearer token (the generator is this machine)."""
    data = msgspec.to_builtins(base)
    data.setdefault("monitoring", {}).update(
        metrics_enabled=True, ingest_enabled=True, host="127.0.0.1", port=0, token_env=NO_TOKEN_ENV
    )
    return config_from_dict(data, source="agentcli benchmark --scenario overload")


@dataclass(slots=True)
class _Part1:
    requests: RequestFigures
    ingest: IngestFigures
    #: the runner.request window: round trips of the completed requests, and the CPU it took
    latency: LatencyHistogram
    cpu_s: float
    config: Config


async def overload(spec: OverloadSpec, base: Config, console: Console, warnings: list[str]) -> _Part1:
    """Measure the agent's capacity, then offer ``factor`` times it through runner.request, then through ingest."""
    if os.environ.get(NO_TOKEN_ENV):
        raise ValueError(f"Unset the environment variable {NO_TOKEN_ENV}: the benchmark's ingest runs without a token.")
    config = _overload_config(base)
    runner = Runner(config)

    @runner.agent(TOPIC, name="capacity", concurrency=spec.concurrency)
    async def capacity_bound(event: Event, ctx: Context) -> None:
        await asyncio.sleep(spec.service_s)

    async with runner:
        capacity = await _capacity(runner, 4 * spec.concurrency)
        console.print(f"  capacity {capacity:,.0f} events/s", highlight=False)
        await runner.drain()
        requests, latency, cpu = await _request_window(runner, spec, capacity, console)
        ingest = await _ingest_window(runner, spec, capacity, console, warnings)
    return _Part1(requests, ingest, latency, cpu, config)


class _Sampler:
    """Peak RSS and the most pending requests / waiting emits, sampled every ``SAMPLE_S`` from the driver loop."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        gc.collect()
        self.idle = self.peak = rss_mb()
        self.pending = self.waiting = 0
        self._next = 0.0

    def sample(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + SAMPLE_S
        self.peak = max(self.peak, rss_mb())
        s = self.runner.statistics()
        self.pending = max(self.pending, s.pending_requests)
        self.waiting = max(self.waiting, s.waiting_emits)


async def _request_window(
    runner: Runner, spec: OverloadSpec, capacity: float, console: Console
) -> tuple[RequestFigures, LatencyHistogram, float]:
    rate = capacity * spec.factor
    console.print(f"  runner.request: offering {rate:,.0f} requests/s for {spec.duration_s:g} s", highlight=False)
    out = _Outcomes()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    request = runner.request

    async def one() -> None:
        t0 = perf_counter()
        try:
            await request(TOPIC, None)
        except BackpressureError:
            out.refused += 1
            out.refusal.record(perf_counter() - t0)
            return
        except RequestTimeoutError:
            out.timed_out += 1
            return
        except DeadLetteredError:
            out.failed += 1
            return
        out.completed += 1
        out.latency.record(perf_counter() - t0)

    sampler = _Sampler(runner)
    stats0 = runner.statistics()
    handled0 = _agent_handled(runner)
    offered = 0
    planned = int(spec.duration_s * rate)
    cpu0, t0 = cpu_seconds(), perf_counter()
    while (now := perf_counter()) - t0 < spec.duration_s:
        due = min(int((now - t0) * rate) + 1, planned)
        while offered < due:  # each arrival its own caller, at (or just after) its intended time
            task = loop.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            offered += 1
        sampler.sample(now)
        await asyncio.sleep(0.001)
    window, cpu = perf_counter() - t0, cpu_seconds() - cpu0
    handled_window = _agent_handled(runner) - handled0
    console.print(f"  window over: {offered:,} offered; waiting for {len(tasks):,} callers", highlight=False)
    while tasks:  # bounded by runner.request_timeout_s
        await asyncio.sleep(SAMPLE_S)
        sampler.sample(perf_counter())
    await runner.drain()
    stats1 = runner.statistics()
    accepted = stats1.emitted - stats0.emitted
    handled_after = _agent_handled(runner) - handled0
    figures = RequestFigures(
        bus=runner.bus.backend,
        concurrency=spec.concurrency,
        service_ms=spec.service_s * 1000,
        nominal_capacity_per_s=spec.concurrency / spec.service_s,
        capacity_per_s=capacity,
        offered_per_s=offered / window,
        duration_s=window,
        offered=offered,
        completed=out.completed,
        refused=out.refused,
        refused_by={
            "max_waiting_emits": stats1.refused_emits - stats0.refused_emits,
            "max_pending_requests": stats1.refused_requests - stats0.refused_requests,
        },
        timed_out=out.timed_out,
        failed=out.failed,
        handled_per_s=handled_window / window,
        share_of_capacity=handled_window / window / capacity if capacity else 0.0,
        refusal_p99_ms=out.refusal.percentile(99) * 1000 if out.refusal.count else None,
        completed_p50_ms=out.latency.percentile(50) * 1000 if out.latency.count else None,
        completed_p99_ms=out.latency.percentile(99) * 1000 if out.latency.count else None,
        rss_idle_mb=sampler.idle,
        rss_peak_mb=sampler.peak,
        rss_growth_mb=sampler.peak - sampler.idle,
        max_pending_requests=sampler.pending,
        max_waiting_emits=sampler.waiting,
        accepted=accepted,
        handled_after_drain=handled_after,
        lost=accepted - handled_after,
    )
    return figures, out.latency, cpu


def _loadtest_run(path: str) -> dict[str, Any] | None:
    """The ``run`` figures of an ``agentcli loadtest --json`` report, or None when there is none."""
    try:
        with open(path, "rb") as f:
            run: dict[str, Any] = msgspec.json.decode(f.read())["run"]
    except (OSError, msgspec.DecodeError, KeyError):
        return None
    return run


async def _ingest_window(
    runner: Runner, spec: OverloadSpec, capacity: float, console: Console, warnings: list[str]
) -> IngestFigures:
    """``factor`` times capacity in events/s as POST /v1/events of ``INGEST_BATCH`` events each, sent by an
    ``agentcli loadtest`` child process (its own CPU), open model."""
    assert runner.http_address is not None and runner.service is not None and runner.service.ingest is not None
    ingest = runner.service.ingest
    host, port = runner.http_address
    posts_per_s = capacity * spec.factor / INGEST_BATCH
    body = msgspec.json.encode([{"topic": TOPIC, "payload": i} for i in range(INGEST_BATCH)]).decode()
    console.print(
        f"  HTTP ingest: offering {posts_per_s:,.0f} POST/s × {INGEST_BATCH} events for {spec.duration_s:g} s "
        "(agentcli loadtest in a child process)",
        highlight=False,
    )
    sampler = _Sampler(runner)
    accepted0, refused0 = ingest.accepted, dict(ingest.refused)
    handled0 = _agent_handled(runner)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "loadtest.json")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agentcli", "loadtest",
            "--url", f"http://{host}:{port}/v1/events",
            "--rate", f"{posts_per_s:.3f}/s",
            "--duration", f"{spec.duration_s:g}s",
            "--payload", body,
            "--max-vus", "1000",
            "--json", report_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        t0 = t1 = 0.0
        handled_start = handled_end = None
        while proc.returncode is None:
            now = perf_counter()
            if handled_start is None and (
                ingest.accepted > accepted0 or sum(ingest.refused.values()) > sum(refused0.values())
            ):
                t0, handled_start = now, _agent_handled(runner)  # the first POST arrived: the window starts
            if handled_start is not None and handled_end is None and now - t0 >= spec.duration_s:
                t1, handled_end = now, _agent_handled(runner)
            sampler.sample(now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 0.01)
        stderr = (await proc.stderr.read()).decode(errors="replace") if proc.stderr is not None else ""
        run = await asyncio.to_thread(_loadtest_run, report_path) if proc.returncode == 0 else None
        if run is None:
            raise RuntimeError(f"agentcli loadtest failed (exit {proc.returncode}): {stderr[-2000:]}")
    if handled_start is None or handled_end is None:
        warnings.append("The ingest window could not be timed: the load generator finished too early.")
        handled_start = handled_end = handled0
        t0, t1 = 0.0, 1.0
    accepted = ingest.accepted - accepted0
    refused = {status: n - refused0.get(status, 0) for status, n in ingest.refused.items()}
    refused = {status: n for status, n in refused.items() if n}
    deadline = perf_counter() + accepted / max(capacity, 1.0) + 30
    while _agent_handled(runner) - handled0 < accepted and perf_counter() < deadline:
        await asyncio.sleep(SAMPLE_S)  # Kafka's topic may still hold some: drain() sees only fetched events
        sampler.sample(perf_counter())
    await runner.drain()
    handled_after = _agent_handled(runner) - handled0
    rate = (handled_end - handled_start) / (t1 - t0)
    lat = run["latency_ms"]["latency"]
    return IngestFigures(
        bus=runner.bus.backend,
        events_per_post=INGEST_BATCH,
        offered_posts=run["started"],
        offered_events_per_s=run["started"] * INGEST_BATCH / spec.duration_s,
        duration_s=spec.duration_s,
        accepted_posts=run["completed"],
        refused_by_status=refused,
        client_errors=run["errors_by_kind"],
        dropped_by_generator=run["dropped"],
        post_p99_ms=lat.get("p99"),
        handled_per_s=rate,
        share_of_capacity=rate / capacity if capacity else 0.0,
        rss_idle_mb=sampler.idle,
        rss_peak_mb=sampler.peak,
        rss_growth_mb=sampler.peak - sampler.idle,
        accepted=accepted,
        handled_after_drain=handled_after,
        lost=accepted - handled_after,
    )


# ---- the run and its report --------------------------------------------------------------------------------------


async def _on_kafka(
    spec: OverloadSpec, base: Config, bootstrap: str | None, console: Console, warnings: list[str]
) -> _Part1:
    from .kafka import bench_config

    broker = None
    if bootstrap is None:
        from .tansu import TansuBroker

        broker = await asyncio.to_thread(TansuBroker().start)  # it polls the port with time.sleep
        bootstrap = broker.bootstrap
        console.print(f"  Tansu test broker started at {bootstrap}", highlight=False)
    try:
        config = bench_config(base, bootstrap, tansu=broker is not None, partitions=4)
        return await overload(spec, config, console, warnings)
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.close)


def _warnings(part1: _Part1) -> list[str]:
    out = []
    if part1.requests.timed_out:
        out.append(
            f"{part1.requests.timed_out:,} accepted requests timed out (runner.request_timeout_s): the bounds let "
            "more wait than the agent handles in that time."
        )
    if part1.ingest.dropped_by_generator:
        out.append(
            f"The load generator dropped {part1.ingest.dropped_by_generator:,} POSTs (--max-vus): it offered less "
            "than planned."
        )
    return out


async def run_overload_benchmark(
    spec: OverloadSpec,
    config: Config,
    console: Console,
    options: dict[str, Any],
    *,
    kafka: bool = False,
    bootstrap: str | None = None,
) -> Measurement:
    warnings: list[str] = []
    # The overload windows go first: their RSS growth is measured on a heap the blocked emitters have not grown.
    console.print(
        f"part 1: {spec.factor:g}x the agent's capacity through runner.request, then through HTTP ingest, "
        f"{spec.duration_s:g} s each",
        highlight=False,
    )
    if kafka:
        part1 = await _on_kafka(spec, config, bootstrap, console, warnings)
    else:
        part1 = await overload(spec, config, console, warnings)
    console.print(
        f"part 2: {spec.emitters:,} blocked emitters, agentflow vs a bare asyncio.Queue, {spec.repeat} rounds",
        highlight=False,
    )
    blocked, runs, ratios = await blocked_emitters(
        spec.emitters, spec.repeat, config.runner.worker_pool_size, console, warnings
    )
    r, i = part1.requests, part1.ingest
    headline = Run(
        side="agentflow", label=f"runner.request at {spec.factor:g}x capacity", round=1, completed=r.completed,
        errors=r.lost + i.lost, duration_s=r.duration_s, throughput_per_s=r.handled_per_s,
        latency_ms=latency_ms(part1.latency), cpu_s=part1.cpu_s,
    )  # fmt: skip
    return Measurement(
        scenario="overload", mode=None, bus="kafka" if kafka else "memory", runs=runs, round_ratios=ratios,
        details=OverloadDetails(factor=spec.factor, requests=r, ingest=i, blocked=blocked),
        latency_measures="runner.request round trip of the accepted requests, in the runner.request window",
        config=effective_config(part1.config), options=options, repeat=spec.repeat,
        order="part 1 once; part 2 " + order_of(SIDES, spec.repeat), rank=by_duration,
        fixed_ratios={"request_capacity_share": r.share_of_capacity, "ingest_capacity_share": i.share_of_capacity},
        headline=headline, warnings=warnings + _warnings(part1), failed=bool(r.lost or i.lost),
    )  # fmt: skip
