"""``agentcli benchmark --scenario workflow``: the multi-agent shape plan → three parallel researchers → join →
writer, each step one chat call to an ``agentcli mock-llm`` process with :data:`LLM_LATENCY_MS` of latency, on one
worker process (the memory bus, or ``--bus kafka``).

``--concurrent-users`` users each start a run (``runner.start_workflow``) and wait for its result, in a closed
loop. Each run's *critical path* is the sum of the LLM call durations along its longest path — the plan's, the
slowest researcher's, the join's and the writer's, as each step measured its own call. What the run takes beyond
that is the framework's: events between steps, state writes, the join, the result. Reported: runs per second,
wall-time percentiles, wall time / critical path (1 means the parallel steps overlapped perfectly and nothing
else took time) and that overhead divided by the steps on the critical path. The time beyond the critical path
includes waiting for the event loop while it serves other runs and their HTTP calls; after each round the same
workflow runs with steps that return at once, one run at a time, which gives the framework's own time per step.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import IO, Any

import aiohttp
import msgspec
from rich.console import Console
from rich.table import Table

from agentflow import Config, Context, Event, LatencyHistogram, Runner, config_from_dict

from .measure import Limits, Tally, closed_loop, cpu_seconds
from .report import Measurement, by_throughput, effective_config, latency_ms, order_of
from .schema import Report, Run, WorkflowDetails

__all__ = ["LLM_LATENCY_MS", "WorkflowSpec", "render_workflow", "run_workflow_benchmark"]

LLM_LATENCY_MS = 50.0
STEPS = 6
CRITICAL_STEPS = 4
RESEARCHERS = ("web", "papers", "news")
WORKFLOW = "bench"
#: The framework-alone phase (steps that return at once): at most this many runs, or seconds, after as many to
#: warm up.
FRAMEWORK_RUNS = 1000
FRAMEWORK_S = 2.0


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    limits: Limits
    users: int
    kafka: bool
    bootstrap: str | None
    repeat: int = 1


@contextmanager
def _mock_llm(latency_ms: float) -> Iterator[tuple[str, subprocess.Popen[bytes], IO[bytes]]]:
    """``agentcli mock-llm`` in its own process (its CPU is not this process's), on a free port."""
    from .tansu import free_port

    port = free_port()
    log = tempfile.TemporaryFile()  # what it prints, read only if it fails to start (a pipe could fill up)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcli", "mock-llm", "--port", str(port), "--latency-ms", f"{latency_ms:g}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/v1", proc, log
    finally:
        log.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a server that ignores SIGINT is killed
            proc.kill()
            proc.wait()


class _Timings:
    """What each step's LLM call took, per run (kept only until the run's result is read)."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, float]] = {}

    def record(self, run: str, step: str, seconds: float) -> None:
        self.calls.setdefault(run, {})[step] = seconds

    def critical_path_s(self, run: str) -> float:
        c = self.calls.pop(run, {})
        return (
            c.get("plan", 0.0)
            + max((c.get(f"research.{r}", 0.0) for r in RESEARCHERS), default=0.0)
            + c.get("merge", 0.0)
            + c.get("write", 0.0)
        )


def _config(spec: WorkflowSpec, base: Config, llm_url: str, bootstrap: str | None, tansu: bool) -> Config:
    """``base`` (``--config``) with the mock LLM as provider and room for every user's run; on Kafka, the brokers
    (and Tansu's limits when the benchmark started one, as ``--bus kafka`` does for the noop scenario)."""
    if bootstrap is not None:
        from .kafka import bench_config

        base = bench_config(base, bootstrap, tansu=tansu, partitions=8)
    pool = max(256, spec.users * 8)
    data: dict[str, Any] = msgspec.to_builtins(base)
    data["llm"] = {"mock": {"base_url": llm_url, "default_model": "mock", "max_connections": max(64, spec.users * 4),
                            "cache": {"enabled": False}, "retry": {"max_attempts": 1}}}  # fmt: skip
    data["runner"] = {**data.get("runner", {}), "worker_pool_size": pool, "max_concurrent_events": pool * 8,
                      "event_buffer_size": pool * 8}  # fmt: skip
    data["retry"] = {**data.get("retry", {}), "max_attempts": 1}
    return config_from_dict(data, source="agentcli benchmark")


def _runner(config: Config, timings: _Timings, *, instant: bool = False) -> Runner:
    """The workflow; ``instant``: each step returns at once instead of calling the LLM (the framework alone)."""
    runner = Runner(config)

    def step(name: str) -> Any:
        async def handler(event: Event, ctx: Context) -> str:
            if instant:
                return name
            t0 = perf_counter()
            reply = await ctx.llm.chat([{"role": "user", "content": f"{name}: {str(event.payload)[:64]}"}])
            timings.record((event.headers or {}).get("agentflow-run", ""), name, perf_counter() - t0)
            return reply.text

        handler.__name__ = name.replace(".", "_")
        return handler

    wf = runner.workflow(WORKFLOW)
    wf.step("plan", step("plan"))
    wf.parallel("research", {r: step(f"research.{r}") for r in RESEARCHERS}, after="plan")
    wf.join("merge", step("merge"), after="research", timeout_s=60)
    wf.step("write", step("write"), after="merge")
    return runner


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(slots=True)
class _Round:
    run: Run
    ratios: list[float]
    overheads_us: list[float]
    critical_ms: list[float]
    walls_ms: list[float]


async def _round(spec: WorkflowSpec, config: Config, round_: int) -> _Round:
    timings = _Timings()
    runner = _runner(config, timings)
    ratios: list[float] = []
    overheads: list[float] = []
    critical_ms: list[float] = []
    walls_ms: list[float] = []
    counter = iter(range(1 << 62))

    async def one() -> None:
        t0 = perf_counter()
        run = await runner.start_workflow(WORKFLOW, {"topic": f"question {next(counter)}"})
        await run.result(timeout_s=120)
        wall = perf_counter() - t0
        critical = timings.critical_path_s(run.run_id)
        walls_ms.append(wall * 1000)
        if critical > 0:
            critical_ms.append(critical * 1000)
            ratios.append(wall / critical)
            overheads.append((wall - critical) / CRITICAL_STEPS * 1e6)

    async with runner:
        tally = Tally()
        gc.collect()
        cpu0, t0 = cpu_seconds(), perf_counter()
        hist: LatencyHistogram = await closed_loop(one, spec.users, spec.limits, (Exception,), tally)
        duration, cpu = perf_counter() - t0, cpu_seconds() - cpu0
    run = Run(
        side="agentflow", label="agentflow workflow runs", round=round_, completed=tally.completed,
        errors=tally.errors, duration_s=duration, throughput_per_s=tally.finished() / duration if duration else 0.0,
        latency_ms=latency_ms(hist), cpu_s=cpu,
    )  # fmt: skip
    return _Round(run, ratios, overheads, critical_ms, walls_ms)


async def _framework_alone(config: Config) -> float:
    """Microseconds per step of the same workflow whose steps return at once, one run at a time: what the
    framework costs a step (events, status writes, the join, the result) without an LLM call or other runs
    competing for the event loop. :data:`FRAMEWORK_RUNS` runs (or :data:`FRAMEWORK_S` seconds, whichever ends
    first) after as many to warm up."""
    runner = _runner(config, _Timings(), instant=True)
    async with runner:
        per_step = 0.0
        for _ in ("warm-up", "measured"):
            gc.collect()
            t0 = perf_counter()
            n = 0
            while n < FRAMEWORK_RUNS and perf_counter() - t0 < FRAMEWORK_S:
                run = await runner.start_workflow(WORKFLOW, {"topic": f"question {n}"})
                await run.result(timeout_s=60)
                n += 1
            per_step = (perf_counter() - t0) / n / STEPS * 1e6
        return per_step


async def _wait_llm(url: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(400):
            if proc.poll() is not None:
                log.seek(0)
                err = log.read().decode(errors="replace")
                raise RuntimeError(f"agentcli mock-llm exited at start (code {proc.returncode}): {err[-500:]}")
            try:
                async with http.get(url.removesuffix("/v1") + "/stats") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"agentcli mock-llm did not answer at {url} within 20 s.")


async def run_workflow_benchmark(spec: WorkflowSpec, base: Config, options: dict[str, Any]) -> Measurement:
    broker = None
    bootstrap = spec.bootstrap
    if spec.kafka and bootstrap is None:
        from .tansu import TansuBroker

        broker = await asyncio.to_thread(TansuBroker().start)
        bootstrap = broker.bootstrap
    rounds: list[_Round] = []
    alone: list[float] = []
    try:
        with _mock_llm(LLM_LATENCY_MS) as (url, proc, log):
            await _wait_llm(url, proc, log)
            config = _config(spec, base, url, bootstrap if spec.kafka else None, broker is not None)
            for n in range(1, spec.repeat + 1):
                rounds.append(await _round(spec, config, n))
                alone.append(await _framework_alone(config))
    finally:
        if broker is not None:
            await asyncio.to_thread(broker.close)
    runs = [r.run for r in rounds]
    top = sorted(rounds, key=lambda r: r.run.throughput_per_s)[(len(rounds) - 1) // 2]
    details = WorkflowDetails(
        steps=STEPS, critical_path_steps=CRITICAL_STEPS, llm_server="agentcli mock-llm in another process",
        llm_latency_ms=LLM_LATENCY_MS, concurrent_users=spec.users, state_backend=config.memory.backend,
        critical_path_ms_p50=_percentile(top.critical_ms, 0.5), wall_ms_p50=_percentile(top.walls_ms, 0.5),
        wall_over_critical_p50=_percentile(top.ratios, 0.5), wall_over_critical_p95=_percentile(top.ratios, 0.95),
        overhead_per_step_us_p50=_percentile(top.overheads_us, 0.5),
        overhead_per_step_us_p95=_percentile(top.overheads_us, 0.95),
        framework_alone_us_per_step=_percentile(alone, 0.5),
    )  # fmt: skip
    round_ratios = [{"wall_vs_critical_path": p} for r in rounds if (p := _percentile(r.ratios, 0.5)) is not None]
    bus = "kafka" if spec.kafka else "memory"
    where = "" if not spec.kafka else f" on Kafka at {bootstrap}"
    return Measurement(
        scenario="workflow", mode="closed", bus=bus, runs=runs, round_ratios=round_ratios, details=details,
        latency_measures="one workflow run: runner.start_workflow -> run.result()" + where,
        config=effective_config(config), options=options, repeat=spec.repeat, order=order_of(["agentflow"],
        spec.repeat), rank=by_throughput,
    )  # fmt: skip


def render_workflow(console: Console, report: Report) -> None:
    d = report.details
    assert isinstance(d, WorkflowDetails)
    table = Table(
        title=f"workflow: plan -> {len(RESEARCHERS)} researchers -> join -> writer, {d.concurrent_users} users, "
        f"LLM {d.llm_latency_ms:g} ms ({report.bus} bus)"
    )
    for col in ("runs", "errors", "runs/s", "p50 ms", "p95 ms", "p99 ms", "wall/critical p50", "overhead/step p50"):
        table.add_column(col, justify="right")
    lat = report.latency_ms

    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:,.1f}"

    table.add_row(
        f"{report.completed:,}", f"{report.errors:,}", f"{report.throughput_per_s:,.0f}",
        ms(lat.p50 if lat else None), ms(lat.p95 if lat else None), ms(lat.p99 if lat else None),
        "n/a" if d.wall_over_critical_p50 is None else f"{d.wall_over_critical_p50:.3f}x",
        "n/a" if d.overhead_per_step_us_p50 is None else f"{d.overhead_per_step_us_p50:,.0f} µs",
    )  # fmt: skip
    console.print(table)
    console.print(
        f"critical path p50 {ms(d.critical_path_ms_p50)} ms (the LLM calls on the longest path); wall p50 "
        f"{ms(d.wall_ms_p50)} ms; wall/critical p95 "
        f"{'n/a' if d.wall_over_critical_p95 is None else f'{d.wall_over_critical_p95:.3f}x'}; overhead per step "
        f"p95 {'n/a' if d.overhead_per_step_us_p95 is None else f'{d.overhead_per_step_us_p95:,.0f} µs'}.",
        highlight=False,
    )
    if d.framework_alone_us_per_step is not None:
        console.print(
            f"framework alone (the same workflow, steps that return at once, one run at a time): "
            f"{d.framework_alone_us_per_step:,.0f} µs per step.",
            highlight=False,
        )
