"""``agentcli benchmark``: the options, the checks that refuse what does not apply, and the run of a scenario.

Exit codes, as ``agentcli loadtest``: 0 every threshold passed and nothing failed, 1 a threshold failed or a
request or event failed (the figures leave failures out, so they describe no working setup), 2 bad usage — a bad
option, threshold or config file, always with a sentence and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..apps import config_or_exit, load_app
from ..parse import ParseError, option, parse_duration
from ..runtime import Interrupted, LogLimiter, command_line, now_iso, run_async
from ..thresholds import parse_threshold
from .measure import Limits, Mode
from .options import (
    BusChoice,
    Options,
    ProfileKind,
    Scenario,
    StateBackendChoice,
    check_kafka,
    check_llm,
    check_noop,
    check_overload,
    check_paths,
    check_ratios,
    check_state,
    check_workflow,
    usage,
)
from .report import THRESHOLD_FIGURES, Measurement, build_report, render_footer, write_json
from .schema import Report

if TYPE_CHECKING:
    from .harness import Target
    from .profiling import Profiler

__all__ = ["benchmark"]

DEFAULT_REQUESTS = {Mode.closed: 200_000, Mode.throughput: 500_000, Mode.latency: 300_000}
DEFAULT_USERS = 64
#: Requests of the short llm-chat run that follows the noop figures of a bare `agentcli benchmark`.
DEFAULT_LLM_REQUESTS = 2_000
_WHAT = "What to load"
_LOAD = "Load shape"
_REPORT = "Comparison and output"


# ---- runs ------------------------------------------------------------------------------------------------------


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return {}
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise usage(f"{text!r} is not valid JSON ({exc}); for example --payload '{{\"x\": 1}}'.", "--payload") from None


def _interrupted(exc: Interrupted) -> typer.Exit:
    Console(stderr=True).print("Interrupted: the runner was shut down; no figures reported.")
    return typer.Exit(code=128 + exc.signum)


def _run(coro: Coroutine[Any, Any, Measurement]) -> Measurement:
    try:
        return run_async(coro)
    except Interrupted as exc:
        raise _interrupted(exc) from None


def _report(m: Measurement, o: Options) -> Report:
    return build_report(m, thresholds=o.thresholds, command=command_line(), started_at=o.started_at)


def _finish(console: Console, report: Report, render: Callable[[Console, Report], None], o: Options) -> int:
    render(console, report)
    render_footer(console, report, rounds=report.scenario != "overload")
    if o.json_path is not None:
        write_json(o.json_path, report)
        console.print(f"report written to {o.json_path}", highlight=False)
    return _exit_code(report)


def _exit_code(report: Report) -> int:
    """1 when the report did not pass; failed requests or events are left out of every figure, so say so."""
    err = Console(stderr=True)
    if report.scenario == "overload":
        if report.errors:
            err.print(f"{report.errors:,} accepted events were not handled: see the 'lost' figures above.")
        return 0 if report.passed else 1
    failed = sum(r.errors for r in report.runs)
    if failed:
        total = sum(r.completed + r.errors for r in report.runs)
        by_request = report.mode in ("closed", None) or "runner.request()" in report.latency_measures
        err.print(
            f"agentcli benchmark: {failed:,} of {total:,} {'requests' if by_request else 'events'} failed, and the "
            "figures above leave them out; fix what made them fail (see the errors above) before trusting the "
            "figures.",
            highlight=False,
        )
    return 0 if report.passed else 1


def _noop_target(o: Options) -> Target:
    from .harness import AppTarget, NoopTarget

    if o.app_ref is None:
        return NoopTarget(config_or_exit(o.config), batch_size=o.agent_batch_size or o.batch_size)
    try:
        return AppTarget(load_app(o.app_ref, o.app_dir, o.agent, o.config))
    except typer.BadParameter as exc:
        exc.param_hint = exc.param_hint or "'--app'"
        raise


def _profiler(o: Options) -> Profiler:
    from .profiling import CpuProfiler, MemoryProfiler, NullProfiler

    if o.profile is None or o.output is None:
        return NullProfiler()
    return CpuProfiler(o.output) if o.profile is ProfileKind.cpu else MemoryProfiler(o.output)


def _noop(o: Options, console: Console) -> tuple[Report, Profiler]:
    from .harness import BenchSpec, run_benchmark
    from .noop_report import measurement

    check_ratios(o.thresholds, {"raw"} if o.compare_raw else set(), " (add --compare-raw for raw_ratio)")
    body = _parse_payload(o.payload)
    target = _noop_target(o)
    limits = (
        Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=o.requests or DEFAULT_REQUESTS[o.mode])
    )
    spec = BenchSpec(
        mode=o.mode, limits=limits, users=o.users or DEFAULT_USERS, batch_size=o.batch_size,
        load_fraction=o.load_fraction or 0.5, payload=body, compare_raw=o.compare_raw, repeat=o.repeat or 1,
    )  # fmt: skip
    prof = _profiler(o)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
        console=console, transient=True, auto_refresh=False, disable=not console.is_terminal,
    )  # fmt: skip
    unit = (
        "requests" if spec.mode is Mode.closed or (spec.mode is Mode.latency and target.recorder is None) else "events"
    )
    console.print(
        f"agentcli benchmark: {target.describe()}, {spec.mode.value} mode, {spec.limits.describe(unit)}"
        + (", with the raw baseline" if spec.compare_raw else "")
        + (f", profiling {prof.kind}" if prof.kind != "none" else ""),
        highlight=False,
    )
    try:
        with progress:
            outcome = run_async(run_benchmark(target, spec, progress, prof))
    except Interrupted as exc:
        raise _interrupted(exc) from None
    profile = prof.kind if prof.kind != "none" else None
    options: dict[str, Any] = msgspec.to_builtins(spec)
    options["agent_batch_size"] = o.agent_batch_size
    return _report(measurement(outcome, spec, target, profile=profile, options=options), o), prof


def _llm(o: Options, console: Console, scenario: str, requests: int | None, users: int | None) -> Report:
    from .llm import LLMBenchSpec, planned_ratios, run_llm_benchmark

    spec = LLMBenchSpec(
        scenario=scenario,
        limits=Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=requests or 5_000),
        users=users or 16, compare_raw=o.compare_raw, batch_size=o.batch_size, dimensions=o.dimensions,
        llm_url=o.llm_url, model="mock", repeat=o.repeat or 1,
    )  # fmt: skip
    check_ratios(o.thresholds, planned_ratios(spec), " (llm-chat: add --compare-raw; llm-embed: --batch-size N)")
    console.print(f"agentcli benchmark: {scenario}, {spec.limits.describe('requests')}", highlight=False)
    return _report(_run(run_llm_benchmark(spec, msgspec.to_builtins(spec))), o)


def _kafka(o: Options, console: Console) -> Report:
    from .kafka import KafkaSpec, run_kafka_benchmark

    check_ratios(o.thresholds, {"raw"} if o.compare_raw else set(), " (add --compare-raw for raw_ratio)")
    spec = KafkaSpec(
        events=o.requests or 100_000, batch=o.batch_size if o.batch_size > 1 else 500, emitters=4, partitions=4,
        latency=o.mode is Mode.latency, load_fraction=o.load_fraction or 0.5, compare_raw=o.compare_raw,
        repeat=o.repeat or 1,
    )  # fmt: skip
    base = config_or_exit(o.config)
    console.print(f"agentcli benchmark --bus kafka: {o.mode.value} mode, {spec.events:,} events", highlight=False)
    return _report(_run(run_kafka_benchmark(base, spec, bootstrap=o.bootstrap, options=msgspec.to_builtins(spec))), o)


def _overload(o: Options, console: Console) -> Report:
    from .overload import PLANNED_RATIOS, OverloadSpec, run_overload_benchmark

    check_ratios(o.thresholds, set(PLANNED_RATIOS), "")
    base = config_or_exit(o.config)
    spec = OverloadSpec()
    if o.requests is not None:
        spec = replace(spec, emitters=o.requests)
    if o.seconds is not None:
        spec = replace(spec, duration_s=o.seconds)
    if o.repeat is not None:
        spec = replace(spec, repeat=o.repeat)
    kafka = o.bus is BusChoice.kafka
    console.print(
        f"agentcli benchmark: overload, {spec.emitters:,} blocked emitters, {spec.factor:g}x load for "
        f"{spec.duration_s:g} s on the {o.bus.value} bus",
        highlight=False,
    )
    coro = run_overload_benchmark(spec, base, console, msgspec.to_builtins(spec), kafka=kafka, bootstrap=o.bootstrap)
    return _report(_run(coro), o)


def _state(o: Options, console: Console) -> Report:
    from .state import StateSpec, run_state_benchmark

    check_ratios(o.thresholds, {"get", "set", "update"}, "")
    backend = (o.backend or StateBackendChoice.memory).value
    default_ops = 100_000 if backend == "memory" else 10_000
    spec = StateSpec(
        backend=backend, ops=o.requests or default_ops, users=o.users or 16, repeat=o.repeat or 1,
        acked_seconds=o.seconds or 3.0,
    )  # fmt: skip
    base = config_or_exit(o.config)
    console.print(
        f"agentcli benchmark: state on {backend}, {spec.ops:,} gets, sets and updates against a bare loop",
        highlight=False,
    )
    return _report(_run(run_state_benchmark(spec, base, msgspec.to_builtins(spec))), o)


def _workflow(o: Options, console: Console) -> Report:
    from .workflow import WorkflowSpec, run_workflow_benchmark

    check_ratios(o.thresholds, {"wall_vs_critical_path"}, "")
    limits = Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=o.requests or 5_000)
    kafka = o.bus is BusChoice.kafka
    spec = WorkflowSpec(limits=limits, users=o.users or 128, kafka=kafka, bootstrap=o.bootstrap, repeat=o.repeat or 1)
    console.print(
        f"agentcli benchmark: workflow, {limits.describe('runs')}, {spec.users} users on the {o.bus.value} bus",
        highlight=False,
    )
    base = config_or_exit(o.config)
    return _report(_run(run_workflow_benchmark(spec, base, msgspec.to_builtins(spec))), o)


def _dispatch(o: Options, console: Console) -> int:
    """Check the options against the scenario, run it, print and write its report; the exit code."""
    # The scenarios are imported when they run: `agentcli run` and the other commands never load the harness.
    from .kafka import render_kafka
    from .llm import render_llm
    from .noop_report import render as render_noop
    from .overload_report import render_overload
    from .state import render_state
    from .workflow import render_workflow

    check_paths(o)
    if o.scenario is Scenario.state:
        check_state(o)
        return _finish(console, _state(o, console), render_state, o)
    if o.scenario is Scenario.workflow:
        check_workflow(o)
        return _finish(console, _workflow(o, console), render_workflow, o)
    if o.scenario is Scenario.overload:
        check_overload(o)
        return _finish(console, _overload(o, console), render_overload, o)
    if o.scenario in (Scenario.llm_chat, Scenario.llm_embed):
        check_llm(o)
        assert o.scenario is not None
        return _finish(console, _llm(o, console, o.scenario.value, o.requests, o.users), render_llm, o)
    if o.bus is BusChoice.kafka:
        check_kafka(o)
        return _finish(console, _kafka(o, console), render_kafka, o)
    check_noop(o)
    bare = o.scenario is None and o.app_ref is None and o.mode is Mode.closed and o.profile is None
    report, prof = _noop(o, console)
    if not bare:
        code = _finish(console, report, render_noop, o)
        prof.finish(console)
        return code
    # The bare command (the README's main job) also shows agents calling an LLM: a short llm-chat run against
    # the in-process mock server, after the noop figures so those stay comparable. Both go to --json.
    render_noop(console, report)
    render_footer(console, report)
    plain = replace(o, compare_raw=False, thresholds=[], repeat=1, seconds=None)
    llm = _llm(plain, console, Scenario.llm_chat.value, DEFAULT_LLM_REQUESTS, None)
    render_llm(console, llm)
    render_footer(console, llm)
    report.phases.append(llm)
    report.passed = report.passed and llm.passed
    if o.json_path is not None:
        write_json(o.json_path, report)
        console.print(f"report written to {o.json_path}", highlight=False)
    return max(_exit_code(report), _exit_code(llm))


def benchmark(
    scenario: Annotated[
        Scenario | None,
        typer.Option(
            help="Built-in scenario: noop measures framework overhead; llm-chat and llm-embed, agents calling an "
            "LLM server; overload, 10x load and blocked emitters; state, ctx.state against a bare loop; workflow, "
            "plan -> 3 parallel researchers -> join -> writer over a 50 ms mock LLM.",
            show_default="noop",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    app_ref: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE:ATTR",
            help="Your own agent instead: an un-started Runner, or a function (config) -> Runner.",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Which --app agent to load (needed when it has several).", rich_help_panel=_WHAT)
    ] = None,
    app_dir: Annotated[
        Path, typer.Option(help="Directory searched first when importing --app.", rich_help_panel=_WHAT)
    ] = Path("."),
    payload: Annotated[
        str | None,
        typer.Option(metavar="JSON", help="Payload of every event.", show_default="{}", rich_help_panel=_WHAT),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="agentflow TOML config for the runner.", rich_help_panel=_WHAT)
    ] = None,
    mode: Annotated[
        Mode,
        typer.Option(
            help="closed: N users awaiting requests; throughput: emit flat out, then drain; latency: open loop at a "
            "fraction of saturation.",
            rich_help_panel=_LOAD,
        ),
    ] = Mode.closed,
    concurrent_users: Annotated[
        int | None,
        typer.Option(min=1, help="Closed loops: virtual users.", show_default="64; llm-*: 16", rich_help_panel=_LOAD),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests or events in total (overload: blocked emitters).",
            show_default="closed 200000, throughput 500000, latency 300000; llm-* 5000; kafka 100000; overload 40000",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(
            help="Run for this long instead of --requests: 500us, 250ms, 30s, 2m (overload: each window).",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Throughput/latency: emit_many in batches of N; llm-embed: the micro-batcher's size.",
            rich_help_panel=_LOAD,
        ),
    ] = 1,
    agent_batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="noop: the agent is a batch agent taking up to N events per call (1: one event per call).",
            show_default="--batch-size",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    load_fraction: Annotated[
        float | None,
        typer.Option(
            help="Latency mode: offered rate as a fraction of saturation.", show_default="0.5", rich_help_panel=_LOAD
        ),
    ] = None,
    compare_raw: Annotated[
        bool,
        typer.Option(
            "--compare-raw",
            help="Also run the same work without agentflow (a bare asyncio.Queue pipeline, aiohttp loop or aiokafka "
            "pipeline) in the same process, and report the ratios.",
            rich_help_panel=_REPORT,
        ),
    ] = False,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--repeat",
            min=1,
            help="Rounds: every side runs once a round, the order alternating; the median is reported.",
            show_default="1; overload: 5",
            rich_help_panel=_REPORT,
        ),
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            help="Pass/fail rule, repeatable, checked in every round and for the median: 'p99<1ms', "
            "'raw_ratio>=0.5', 'throughput>=100000'. A failed one exits 1.",
            rich_help_panel=_REPORT,
        ),
    ] = None,
    profile: Annotated[
        ProfileKind | None,
        typer.Option(help="Profile the agentflow runs; needs --output.", rich_help_panel=_REPORT),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Where --profile writes: a pstats file (cpu) or text (memory).", rich_help_panel=_REPORT),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the machine-readable report here.", rich_help_panel=_REPORT)
    ] = None,
    llm_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="llm-* scenarios: an external OpenAI-compatible server (http://host:port/v1) instead of the "
            "in-process mock.",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    dimensions: Annotated[
        int, typer.Option(min=1, max=8192, help="llm-embed: embedding size asked for.", rich_help_panel=_WHAT)
    ] = 8,
    bus: Annotated[
        BusChoice,
        typer.Option(
            help="noop: the memory bus, or Kafka (a Tansu test broker is started unless --bootstrap is given; "
            "--compare-raw then runs a bare aiokafka pipeline).",
            rich_help_panel=_WHAT,
        ),
    ] = BusChoice.memory,
    bootstrap: Annotated[
        str | None,
        typer.Option(metavar="HOST:PORT", help="--bus kafka: the brokers to use.", rich_help_panel=_WHAT),
    ] = None,
    backend: Annotated[
        StateBackendChoice | None,
        typer.Option(
            help="--scenario state: the state backend (redis: a redis-server is started unless --config sets "
            '[memory] backend = "redis").',
            show_default="memory",
            rich_help_panel=_WHAT,
        ),
    ] = None,
) -> None:
    """Measure agentflow's throughput and latency, optionally against the same work without agentflow."""
    try:
        thresholds = [parse_threshold(t, THRESHOLD_FIGURES) for t in threshold or []]
    except ParseError as exc:
        raise usage(str(exc), "--threshold") from None
    o = Options(
        scenario=scenario, app_ref=app_ref, agent=agent, app_dir=app_dir, payload=payload, config=config, mode=mode,
        users=concurrent_users, requests=requests,
        seconds=option(parse_duration, duration, "--duration") if duration is not None else None,
        batch_size=batch_size, agent_batch_size=agent_batch_size, load_fraction=load_fraction,
        compare_raw=compare_raw, repeat=rounds, profile=profile, output=output, json_path=json_path,
        llm_url=llm_url, dimensions=dimensions, bus=bus, bootstrap=bootstrap, thresholds=thresholds,
        started_at=now_iso(), backend=backend,
    )  # fmt: skip
    console = Console()
    limiter = LogLimiter(Console(stderr=True))
    log = logging.getLogger("agentflow")
    log.addHandler(limiter)
    try:
        code = _dispatch(o, console)
    finally:
        log.removeHandler(limiter)
    hidden = limiter.summary()
    if hidden:
        Console(stderr=True).print(hidden)
    raise typer.Exit(code=code)
