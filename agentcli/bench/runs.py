"""Running the scenario ``agentcli benchmark`` was asked for, and finishing its report: the table, the footer,
``--json``, ``--report`` and the exit code.

A first Ctrl-C (or SIGTERM) stops the load (:data:`~.measure.STOP`): the run in progress ends with what it
measured, no other run starts, and the report of what ran is printed and written, marked ``interrupted``, before
the command exits 130. The overload scenario cannot be cut short that way (its figures compare whole windows), so
there the first signal cancels it and nothing is written. A second Ctrl-C exits at once.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..apps import config_or_exit, load_app
from ..output import OPTIONS
from ..output import console as make_console
from ..runtime import Interrupted, Stop, command_line, interruption, run_async
from .measure import Limits, Mode, request_stop, reset_stop
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
    check_tool_scenario,
    check_workflow,
    usage,
)
from .report import Measurement, build_report, render_footer, write_json
from .schema import Report

if TYPE_CHECKING:
    from .harness import Target
    from .profiling import Profiler, ProfileSummary

__all__ = ["dispatch"]

DEFAULT_REQUESTS = {Mode.closed: 200_000, Mode.throughput: 500_000, Mode.latency: 300_000}
DEFAULT_USERS = 64
#: Requests of the short llm-chat run that follows the noop figures of a bare `agentcli benchmark`.
DEFAULT_LLM_REQUESTS = 2_000
#: The exit code of a run a signal stopped (128 + SIGINT, as a shell reports Ctrl-C).
INTERRUPTED_EXIT = 130


@dataclass(slots=True)
class Session:
    """One ``agentcli benchmark`` invocation: its output, the Ctrl-C handling, and when measuring started."""

    options: Options
    console: Console
    stop: Stop
    started: float

    def progress(self) -> Progress:
        """The progress bar of a phase: rate and ETA in a terminal; a line every few seconds elsewhere."""
        return Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
            console=self.console, transient=True, auto_refresh=False,
            disable=not self.console.is_terminal or OPTIONS.quiet,
        )  # fmt: skip

    def run(self, coro: Coroutine[Any, Any, Measurement | None]) -> Measurement:
        try:
            m = run_async(coro, self.stop)
        except Interrupted as exc:
            Console(stderr=True).print("Interrupted: the runner was shut down; no figures reported.")
            raise typer.Exit(code=128 + exc.signum) from None
        if m is None:
            Console(stderr=True).print(
                "Interrupted before agentflow's run started: there is nothing to report.", highlight=False
            )
            raise typer.Exit(code=INTERRUPTED_EXIT)
        return m

    def report(self, m: Measurement) -> Report:
        o = self.options
        return build_report(
            m, thresholds=o.thresholds, command=command_line(), started_at=o.started_at,
            interrupted=interruption(self.stop, self.started),
        )  # fmt: skip


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return {}
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise usage(f"{text!r} is not valid JSON ({exc}); for example --payload '{{\"x\": 1}}'.", "--payload") from None


def _write(s: Session, report: Report, profile: ProfileSummary | None = None) -> None:
    o = s.options
    if o.json_path is not None:
        write_json(o.json_path, report)
        s.console.print(f"report written to {o.json_path}", highlight=False)
    if o.html_path is not None:
        from .report_html import write_html

        write_html(o.html_path, report, profile)
        s.console.print(f"HTML report written to {o.html_path}", highlight=False)


def _finish(s: Session, report: Report, render: Callable[[Console, Report], None]) -> int:
    render(s.console, report)
    render_footer(s.console, report, rounds=report.scenario != "overload")
    _write(s, report)
    return _exit_code(report)


def _exit_code(report: Report) -> int:
    """1 when the report did not pass, 130 when a signal stopped it; failed requests or events are left out of
    every figure, so say so."""
    err = Console(stderr=True)
    if report.interrupted is not None:
        i = report.interrupted
        err.print(
            f"Interrupted by {i.signal} after {i.covered_s:.1f} s: the figures above cover what ran until then.",
            highlight=False,
        )
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
    if report.interrupted is not None:
        return INTERRUPTED_EXIT
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


def _noop(s: Session) -> tuple[Report, Profiler]:
    from .harness import BenchSpec, run_benchmark
    from .noop_report import measurement

    o = s.options
    planned = ({"raw", "bare"} if o.mode is Mode.throughput else {"raw"}) if o.compare_raw else set()
    check_ratios(o.thresholds, planned, " (add --compare-raw for raw_ratio, and bare_ratio in throughput mode)")
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
    unit = (
        "requests" if spec.mode is Mode.closed or (spec.mode is Mode.latency and target.recorder is None) else "events"
    )
    s.console.print(
        f"agentcli benchmark: {target.describe()}, {spec.mode.value} mode, {spec.limits.describe(unit)}"
        + (", with the raw baseline" if spec.compare_raw else "")
        + (f", profiling {prof.kind}" if prof.kind != "none" else ""),
        highlight=False,
    )

    async def go() -> Measurement | None:
        outcome = await run_benchmark(target, spec, progress, prof)
        if not any(side == "agentflow" for _, side, _ in outcome.runs):
            return None
        profile = prof.kind if prof.kind != "none" else None
        options: dict[str, Any] = msgspec.to_builtins(spec)
        options["agent_batch_size"] = o.agent_batch_size
        return measurement(outcome, spec, target, profile=profile, options=options)

    progress = s.progress()
    with progress:
        m = s.run(go())
    return s.report(m), prof


def _llm(s: Session, o: Options, scenario: str, requests: int | None, users: int | None) -> Report:
    from .llm import LLMBenchSpec, planned_ratios, run_llm_benchmark

    spec = LLMBenchSpec(
        scenario=scenario,
        limits=Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=requests or 5_000),
        users=users or 16, compare_raw=o.compare_raw, batch_size=o.batch_size, dimensions=o.dimensions,
        llm_url=o.llm_url, model="mock", repeat=o.repeat or 1,
    )  # fmt: skip
    check_ratios(o.thresholds, planned_ratios(spec), " (llm-chat: add --compare-raw; llm-embed: --batch-size N)")
    s.console.print(f"agentcli benchmark: {scenario}, {spec.limits.describe('requests')}", highlight=False)
    progress = s.progress()
    with progress:
        m = s.run(run_llm_benchmark(spec, msgspec.to_builtins(spec), progress))
    return s.report(m)


#: --scenario tools | mcp | stream: default runs per side, and concurrent users.
TOOL_SCENARIO_DEFAULTS = {"tools": (2_000, 16), "mcp": (5_000, 8), "stream": (2_000, 4)}


def _tool_scenario(s: Session) -> tuple[Report, Callable[[Console, Report], None]]:
    o = s.options
    assert o.scenario is not None
    name = o.scenario.value
    count, users = TOOL_SCENARIO_DEFAULTS[name]
    limits = Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=o.requests or count)
    common: dict[str, Any] = {
        "limits": limits, "users": o.users or users, "compare_raw": o.compare_raw, "repeat": o.repeat or 1
    }  # fmt: skip
    run: Coroutine[Any, Any, Measurement]
    if name == "tools":
        from .tools import ToolsBenchSpec, planned_tools_ratios, render_tools, run_tools_benchmark

        tools_spec = ToolsBenchSpec(**common)
        planned, render = planned_tools_ratios(tools_spec), render_tools
        run = run_tools_benchmark(tools_spec, msgspec.to_builtins(tools_spec))
    elif name == "mcp":
        from .mcp_pools import MCPBenchSpec, planned_mcp_ratios, render_mcp, run_mcp_benchmark

        if importlib.util.find_spec("mcp") is None:
            raise usage("--scenario mcp needs the MCP SDK: pip install 'agentflow-runner[mcp]'.", "--scenario")
        mcp_spec = MCPBenchSpec(**common)
        planned, render = planned_mcp_ratios(mcp_spec), render_mcp
        run = run_mcp_benchmark(mcp_spec, msgspec.to_builtins(mcp_spec))
    else:
        from .stream import StreamBenchSpec, planned_stream_ratios, render_stream, run_stream_benchmark

        stream_spec = StreamBenchSpec(**common)
        planned, render = planned_stream_ratios(stream_spec), render_stream
        run = run_stream_benchmark(stream_spec, msgspec.to_builtins(stream_spec))
    try:
        check_ratios(o.thresholds, planned, " (add --compare-raw)")
    except typer.BadParameter:
        run.close()
        raise
    s.console.print(f"agentcli benchmark: {name}, {limits.describe('runs per side')}", highlight=False)
    return s.report(s.run(run)), render


def _kafka(s: Session) -> Report:
    from .kafka import KafkaSpec, run_kafka_benchmark

    o = s.options
    planned = {"p50" if o.rate is not None else "raw"} if o.compare_raw else set()
    check_ratios(o.thresholds, planned, " (add --compare-raw for raw_ratio, and --rate for p50_ratio)")
    spec = KafkaSpec(
        events=o.requests or 100_000, batch=o.batch_size if o.batch_size > 1 else 500, emitters=4, partitions=4,
        latency=o.mode is Mode.latency, load_fraction=o.load_fraction or 0.5, compare_raw=o.compare_raw,
        repeat=o.repeat or 1, rate=o.rate,
    )  # fmt: skip
    base = config_or_exit(o.config)
    s.console.print(f"agentcli benchmark --bus kafka: {o.mode.value} mode, {spec.events:,} events", highlight=False)
    progress = s.progress()
    with progress:
        coro = run_kafka_benchmark(
            base, spec, bootstrap=o.bootstrap, options=msgspec.to_builtins(spec), progress=progress
        )
        return s.report(s.run(coro))


def _overload(s: Session) -> Report:
    from .overload import PLANNED_RATIOS, OverloadSpec, run_overload_benchmark

    o = s.options
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
    s.console.print(
        f"agentcli benchmark: overload, {spec.emitters:,} blocked emitters, {spec.factor:g}x load for "
        f"{spec.duration_s:g} s on the {o.bus.value} bus",
        highlight=False,
    )
    coro = run_overload_benchmark(spec, base, s.console, msgspec.to_builtins(spec), kafka=kafka, bootstrap=o.bootstrap)
    # No graceful stop here: run without the Stop, so a signal cancels the scenario (see the module docstring).
    try:
        m = run_async(coro)
    except Interrupted as exc:
        Console(stderr=True).print("Interrupted: the overload scenario was cancelled; no figures reported.")
        raise typer.Exit(code=128 + exc.signum) from None
    return s.report(m)


def _state(s: Session) -> Report:
    from .state import StateSpec, run_state_benchmark

    o = s.options
    check_ratios(o.thresholds, {"get", "set", "update"}, "")
    backend = (o.backend or StateBackendChoice.memory).value
    default_ops = 100_000 if backend == "memory" else 10_000
    spec = StateSpec(
        backend=backend, ops=o.requests or default_ops, users=o.users or 16, repeat=o.repeat or 1,
        acked_seconds=o.seconds or 3.0,
    )  # fmt: skip
    base = config_or_exit(o.config)
    s.console.print(
        f"agentcli benchmark: state on {backend}, {spec.ops:,} gets, sets and updates against a bare loop",
        highlight=False,
    )
    return s.report(s.run(run_state_benchmark(spec, base, msgspec.to_builtins(spec))))


def _workflow(s: Session) -> Report:
    from .workflow import WorkflowSpec, run_workflow_benchmark

    o = s.options
    check_ratios(o.thresholds, {"wall_vs_critical_path"}, "")
    limits = Limits(duration_s=o.seconds) if o.seconds is not None else Limits(count=o.requests or 5_000)
    kafka = o.bus is BusChoice.kafka
    spec = WorkflowSpec(limits=limits, users=o.users or 128, kafka=kafka, bootstrap=o.bootstrap, repeat=o.repeat or 1)
    s.console.print(
        f"agentcli benchmark: workflow, {limits.describe('runs')}, {spec.users} users on the {o.bus.value} bus",
        highlight=False,
    )
    base = config_or_exit(o.config)
    return s.report(s.run(run_workflow_benchmark(spec, base, msgspec.to_builtins(spec))))


def dispatch(o: Options) -> int:
    """Check the options against the scenario, run it, print and write its report; the exit code."""
    # The scenarios are imported when they run: `agentcli run` and the other commands never load the harness.
    from .kafka import render_kafka
    from .llm import render_llm
    from .noop_report import render as render_noop
    from .overload_report import render_overload
    from .state import render_state
    from .workflow import render_workflow

    check_paths(o)
    reset_stop()
    stop = Stop()
    stop.on_stop(request_stop)
    s = Session(options=o, console=make_console(), stop=stop, started=time.monotonic())
    if o.scenario is Scenario.state:
        check_state(o)
        return _finish(s, _state(s), render_state)
    if o.scenario is Scenario.workflow:
        check_workflow(o)
        return _finish(s, _workflow(s), render_workflow)
    if o.scenario is Scenario.overload:
        check_overload(o)
        return _finish(s, _overload(s), render_overload)
    if o.scenario in (Scenario.tools, Scenario.mcp, Scenario.stream):
        check_tool_scenario(o)
        report, render = _tool_scenario(s)
        return _finish(s, report, render)
    if o.scenario in (Scenario.llm_chat, Scenario.llm_embed):
        check_llm(o)
        assert o.scenario is not None
        return _finish(s, _llm(s, o, o.scenario.value, o.requests, o.users), render_llm)
    if o.bus is BusChoice.kafka:
        check_kafka(o)
        return _finish(s, _kafka(s), render_kafka)
    check_noop(o)
    bare = o.scenario is None and o.app_ref is None and o.mode is Mode.closed and o.profile is None
    report, prof = _noop(s)
    if not bare or report.interrupted is not None:
        render_noop(s.console, report)
        render_footer(s.console, report)
        summary = prof.finish(s.console)
        _write(s, report, summary)
        return _exit_code(report)
    # The bare command (the README's main job) also shows agents calling an LLM: a short llm-chat run against
    # the in-process mock server, after the noop figures so those stay comparable. Both go to --json.
    render_noop(s.console, report)
    render_footer(s.console, report)
    plain = replace(o, compare_raw=False, thresholds=[], repeat=1, seconds=None)
    llm = _llm(s, plain, Scenario.llm_chat.value, DEFAULT_LLM_REQUESTS, None)
    render_llm(s.console, llm)
    render_footer(s.console, llm)
    report.phases.append(llm)
    report.passed = report.passed and llm.passed
    report.interrupted = llm.interrupted
    _write(s, report)
    if llm.interrupted is not None:
        return _exit_code(report)
    return max(_exit_code(report), _exit_code(llm))
