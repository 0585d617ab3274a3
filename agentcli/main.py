"""The ``agentcli`` command line: ``benchmark``, ``loadtest``, ``run``, ``emit``, ``dlq``, ``mock-llm``, ``version``.

User errors — a bad flag, a bad ``--config`` file, an ``--app`` that cannot be imported — print a sentence and
exit 2, never a traceback. The event loop and signal handlers are set up in :mod:`agentcli.runtime`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .apps import config_or_exit, load_app
from .benchmark import BenchSpec, Mode, NoopTarget, Target, run_benchmark
from .dlq import dlq_app
from .emit import emit as emit_command
from .loadtest.cli import loadtest_app
from .measure import Limits
from .mockllm import mock_llm as mock_llm_command
from .profiling import CpuProfiler, MemoryProfiler, NullProfiler, Profiler
from .report import build_report, now_iso, render, version_lines, write_json
from .run import run as run_command
from .runtime import Interrupted, LogLimiter, run_async

__all__ = ["app", "main"]


app = typer.Typer(
    name="agentcli",
    help="Drive agentflow: run workers, emit events, serve a mock LLM, benchmark and load-test.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(loadtest_app, name="loadtest")

DEFAULT_REQUESTS = {Mode.closed: 200_000, Mode.throughput: 500_000, Mode.latency: 300_000}
DEFAULT_USERS = 64
#: Requests of the short llm-chat run that follows the noop figures of a bare `agentcli benchmark`.
DEFAULT_LLM_REQUESTS = 2_000
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?")
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_WHAT = "What to load"
_LOAD = "Load shape"
_REPORT = "Comparison and output"
_argv: list[str] | None = None  # set by main(); tests driving `app` directly fall back to sys.argv


class Scenario(enum.StrEnum):
    noop = "noop"
    llm_chat = "llm-chat"
    llm_embed = "llm-embed"
    overload = "overload"


class BusChoice(enum.StrEnum):
    memory = "memory"
    kafka = "kafka"


def _kafka_benchmark(
    config: Path | None,
    bootstrap: str | None,
    requests: int | None,
    batch_size: int,
    mode: Mode,
    load_fraction: float | None,
    compare_raw: bool,
    json_path: Path | None,
    repeat: int = 1,
) -> None:
    from .kafkabench import print_report, run_kafka_benchmark

    if mode is Mode.closed:
        raise typer.BadParameter(
            "--bus kafka measures --mode throughput or --mode latency (latency also reports saturation).",
            param_hint="'--mode'",
        )
    coro = run_kafka_benchmark(
        config_or_exit(config),
        bootstrap=bootstrap,
        events=requests or 100_000,
        batch=batch_size if batch_size > 1 else 500,
        emitters=4,
        partitions=4,
        latency=mode is Mode.latency,
        load_fraction=load_fraction or 0.5,
        compare_raw=compare_raw,
        repeat=repeat,
    )
    results, where = run_async(coro)
    print_report(results, where, " ".join(["agentcli", *(_argv or sys.argv[1:])]), json_path)


class ProfileKind(enum.StrEnum):
    cpu = "cpu"
    memory = "memory"


def parse_duration(text: str | None) -> float | None:
    """``500ms``, ``30s``, ``2m``, ``1h`` or plain seconds → seconds; typer.BadParameter otherwise."""
    if text is None:
        return None
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a duration; write a number and a unit, like 500ms, 30s or 2m.")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if seconds <= 0:
        raise typer.BadParameter(f"{text!r} is not a positive duration; give more than 0, like 10s.")
    return seconds


def parse_payload(text: str | None) -> Any:
    if text is None:
        return {}
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise typer.BadParameter(
            f"{text!r} is not valid JSON ({exc}); for example --payload '{{\"x\": 1}}'.", param_hint="'--payload'"
        ) from None


@app.command()
def version() -> None:
    """Print the versions of agentflow, Python, uvloop and msgspec."""
    console = Console()
    for line in version_lines():
        console.print(line, highlight=False)


@app.command()
def benchmark(
    scenario: Annotated[
        Scenario | None,
        typer.Option(
            help="Built-in scenario: noop measures framework overhead; overload, blocked emitters and 10x load.",
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
        typer.Option(min=1, help="Closed mode: virtual users.", show_default=str(DEFAULT_USERS), rich_help_panel=_LOAD),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests or events in total.",
            show_default="closed 200000, throughput 500000, latency 300000",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    duration: Annotated[
        str | None,
        typer.Option(help="Run for this long instead of --requests: 500ms, 30s, 2m.", rich_help_panel=_LOAD),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Throughput/latency: emit_many in batches of N.", rich_help_panel=_LOAD)
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
            help="Also run a bare asyncio.Queue pipeline doing the same work, and print agentflow/raw.",
            rich_help_panel=_REPORT,
        ),
    ] = False,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--repeat",
            min=1,
            help="Rounds (raw and agentflow alternately); the best of N is reported.",
            show_default="1; overload: 5",
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
) -> None:
    """Measure agentflow's throughput and latency, optionally against a raw asyncio.Queue baseline."""
    seconds = parse_duration_option(duration)
    repeat = rounds or 1
    if scenario is Scenario.overload:
        others = {
            "--app": app_ref is not None,
            "--compare-raw": compare_raw,
            "--batch-size": batch_size > 1,
            "--payload": payload is not None,
            "--profile": profile is not None,
            "--llm-url": llm_url is not None,
            "--load-fraction": load_fraction is not None,
            "--concurrent-users": concurrent_users is not None,
            "--mode": mode is not Mode.closed,
        }
        for flag, given in others.items():
            if given:
                raise typer.BadParameter(
                    f"{flag} does not apply to --scenario overload (it takes --requests, --duration, --repeat, "
                    "--config, --bus, --bootstrap and --json).",
                    param_hint=f"'{flag}'",
                )
        if bootstrap is not None and bus is not BusChoice.kafka:
            raise typer.BadParameter("--bootstrap applies to --bus kafka.", param_hint="'--bootstrap'")
        _overload_benchmark(config, requests, seconds, rounds or 5, bus is BusChoice.kafka, bootstrap, json_path)
        return
    if bus is BusChoice.kafka:
        _kafka_benchmark(config, bootstrap, requests, batch_size, mode, load_fraction, compare_raw, json_path, repeat)
        return
    if bootstrap is not None:
        raise typer.BadParameter("--bootstrap applies to --bus kafka.", param_hint="'--bootstrap'")
    if scenario in (Scenario.llm_chat, Scenario.llm_embed):
        _llm_benchmark(
            scenario.value,
            seconds,
            requests,
            concurrent_users,
            compare_raw,
            batch_size,
            dimensions,
            llm_url,
            json_path,
            repeat,
        )
        return
    if llm_url is not None:
        raise typer.BadParameter("--llm-url applies to --scenario llm-chat or llm-embed.", param_hint="'--llm-url'")
    body = parse_payload(payload)
    if requests is not None and seconds is not None:
        raise typer.BadParameter("give --requests or --duration, not both.", param_hint="'--duration'")
    if profile is not None and output is None:
        raise typer.BadParameter(f"--profile {profile.value} needs --output FILE.", param_hint="'--output'")
    if output is not None and profile is None:
        raise typer.BadParameter(
            "--output is where --profile writes; add --profile cpu or --profile memory.", param_hint="'--output'"
        )
    for path, hint in ((output, "'--output'"), (json_path, "'--json'")):
        if path is not None and not path.parent.is_dir():
            raise typer.BadParameter(f"directory {str(path.parent)!r} does not exist.", param_hint=hint)
    if app_ref is not None and scenario is not None:
        raise typer.BadParameter("give --scenario or --app, not both.", param_hint="'--app'")
    if agent is not None and app_ref is None:
        raise typer.BadParameter("--agent picks an agent of --app; add --app MODULE:ATTR.", param_hint="'--agent'")
    if compare_raw and app_ref is not None:
        raise typer.BadParameter(
            "the raw baseline can only repeat the noop scenario's work, not your agent's; drop --compare-raw.",
            param_hint="'--compare-raw'",
        )
    if payload is not None and mode is Mode.latency and app_ref is None:
        raise typer.BadParameter(
            "the noop scenario's latency mode sends each event's intended time as its payload; drop --payload.",
            param_hint="'--payload'",
        )
    if concurrent_users is not None and mode is not Mode.closed:
        raise typer.BadParameter("--concurrent-users applies to --mode closed only.", param_hint="'--concurrent-users'")
    if batch_size > 1 and (mode is Mode.closed or (mode is Mode.latency and app_ref is not None)):
        raise typer.BadParameter(
            "--batch-size applies to throughput and latency modes (and not to an --app in latency mode, which "
            "sends requests).",
            param_hint="'--batch-size'",
        )
    if agent_batch_size is not None and app_ref is not None:
        raise typer.BadParameter(
            "--agent-batch-size shapes the noop agent; your --app agent is registered by your code.",
            param_hint="'--agent-batch-size'",
        )
    if load_fraction is not None:
        if mode is not Mode.latency:
            raise typer.BadParameter("--load-fraction applies to --mode latency only.", param_hint="'--load-fraction'")
        if not 0 < load_fraction <= 1:
            raise typer.BadParameter(
                f"{load_fraction} is not in (0, 1]; 0.5 is half of saturation.", param_hint="'--load-fraction'"
            )

    target: Target
    if app_ref is not None:
        try:
            target = load_app(app_ref, app_dir, agent, config)
        except typer.BadParameter as exc:
            exc.param_hint = exc.param_hint or "'--app'"
            raise
    else:
        target = NoopTarget(config_or_exit(config), batch_size=agent_batch_size or batch_size)
    limits = Limits(duration_s=seconds) if seconds is not None else Limits(count=requests or DEFAULT_REQUESTS[mode])
    spec = BenchSpec(
        mode=mode,
        limits=limits,
        users=concurrent_users or DEFAULT_USERS,
        batch_size=batch_size,
        load_fraction=load_fraction or 0.5,
        payload=body,
        compare_raw=compare_raw,
        repeat=repeat,
    )
    prof: Profiler = (
        NullProfiler()
        if profile is None or output is None
        else CpuProfiler(output)
        if profile is ProfileKind.cpu
        else MemoryProfiler(output)
    )
    _benchmark(target, spec, prof, json_path)
    if scenario is None and app_ref is None and mode is Mode.closed and profile is None:
        # The bare command (the README's main job) also shows agents calling an LLM: a short llm-chat run
        # against the in-process mock server, after the noop figures so those stay comparable.
        _llm_benchmark("llm-chat", None, DEFAULT_LLM_REQUESTS, None, False, 1, dimensions, None, None, 1)


def _llm_benchmark(
    scenario: str,
    seconds: float | None,
    requests: int | None,
    users: int | None,
    compare_raw: bool,
    batch_size: int,
    dimensions: int,
    llm_url: str | None,
    json_path: Path | None,
    repeat: int,
) -> None:
    from .llmbench import LLMBenchSpec, render_llm, run_llm

    if requests is not None and seconds is not None:
        raise typer.BadParameter("give --requests or --duration, not both.", param_hint="'--duration'")
    if llm_url is not None and not llm_url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"{llm_url!r} is not an http(s) URL.", param_hint="'--llm-url'")
    if json_path is not None and not json_path.parent.is_dir():
        raise typer.BadParameter(f"directory {str(json_path.parent)!r} does not exist.", param_hint="'--json'")
    spec = LLMBenchSpec(
        scenario=scenario,
        limits=Limits(duration_s=seconds) if seconds is not None else Limits(count=requests or 5_000),
        users=users or 16,
        compare_raw=compare_raw,
        batch_size=batch_size,
        dimensions=dimensions,
        llm_url=llm_url,
        model="mock",
        repeat=repeat,
    )
    console = Console()
    console.print(f"agentcli benchmark: {scenario}, {spec.limits.describe('requests')}", highlight=False)
    try:
        report = run_llm(spec)
    except Interrupted as exc:
        Console(stderr=True).print("Interrupted: no figures reported.")
        raise typer.Exit(code=128 + exc.signum) from None
    render_llm(console, report)
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"report written to {json_path}", highlight=False)
    failed = sum(r.errors for r in report.results)
    _exit_if_failed(failed, failed + sum(r.requests for r in report.results), "requests")


def _exit_if_failed(failed: int, total: int, unit: str) -> None:
    """Failed requests are left out of every figure: a run with any is not a measurement to trust, so exit 1."""
    if failed:
        Console(stderr=True).print(
            f"agentcli benchmark: {failed:,} of {total:,} {unit} failed, and the figures above leave them out; "
            "fix what made them fail (see the errors above) before trusting the figures.",
            highlight=False,
        )
        raise typer.Exit(code=1)


def _overload_benchmark(
    config: Path | None,
    emitters: int | None,
    seconds: float | None,
    repeat: int,
    kafka: bool,
    bootstrap: str | None,
    json_path: Path | None,
) -> None:
    from .overloadbench import OverloadSpec, run_overload_benchmark
    from .overloadreport import render_overload

    if json_path is not None and not json_path.parent.is_dir():
        raise typer.BadParameter(f"directory {str(json_path.parent)!r} does not exist.", param_hint="'--json'")
    base = config_or_exit(config)
    spec = OverloadSpec(repeat=repeat)
    if emitters is not None:
        spec = dataclasses.replace(spec, emitters=emitters)
    if seconds is not None:
        spec = dataclasses.replace(spec, duration_s=seconds)
    console = Console()
    console.print(
        f"agentcli benchmark: overload, {spec.emitters:,} blocked emitters, {spec.factor:g}x load for "
        f"{spec.duration_s:g} s on the {'kafka' if kafka else 'memory'} bus",
        highlight=False,
    )
    command = ["agentcli", *(_argv if _argv is not None else sys.argv[1:])]
    try:
        report = run_async(run_overload_benchmark(spec, base, console, command, kafka=kafka, bootstrap=bootstrap))
    except Interrupted as exc:
        Console(stderr=True).print("Interrupted: the runner was shut down; no figures reported.")
        raise typer.Exit(code=128 + exc.signum) from None
    render_overload(console, report)
    if json_path is not None:
        json_path.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"report written to {json_path}", highlight=False)
    if report.requests.lost or report.ingest.lost:
        Console(stderr=True).print("Accepted events were not handled: see the 'lost' figures above.")
        raise typer.Exit(code=1)


def parse_duration_option(text: str | None) -> float | None:
    try:
        return parse_duration(text)
    except typer.BadParameter as exc:
        exc.param_hint = "'--duration'"
        raise


def _benchmark(target: Target, spec: BenchSpec, prof: Profiler, json_path: Path | None) -> None:
    console = Console()
    err = Console(stderr=True)
    started_at = now_iso()
    limiter = LogLimiter(err)
    log = logging.getLogger("agentflow")
    log.addHandler(limiter)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        auto_refresh=False,
        disable=not console.is_terminal,
    )
    app_requests = spec.mode is Mode.latency and target.recorder is None
    unit = "requests" if spec.mode is Mode.closed or app_requests else "events"
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
        err.print("Interrupted: the runner was shut down; no figures reported.")
        raise typer.Exit(code=128 + exc.signum) from None
    finally:
        log.removeHandler(limiter)
    hidden = limiter.summary()
    report = build_report(
        outcome,
        spec,
        target,
        command=["agentcli", *(_argv if _argv is not None else sys.argv[1:])],
        started_at=started_at,
        profile=prof.kind if prof.kind != "none" else None,
    )
    render(console, report)
    if prof.kind != "none":
        console.print("[yellow]note:[/] profiled runs are slowed down; do not quote their figures.")
        prof.finish(console)
    if hidden:
        err.print(hidden)
    if json_path is not None:
        write_json(json_path, report)
        console.print(f"report written to {json_path}", highlight=False)
    _exit_if_failed(report.errors, report.completed + report.errors, unit)


app.command(name="run")(run_command)
app.command(name="emit")(emit_command)
app.add_typer(dlq_app, name="dlq")
app.command(name="mock-llm")(mock_llm_command)


def main() -> None:
    """The ``agentcli`` console script."""
    global _argv
    _argv = sys.argv[1:]
    app(prog_name="agentcli")
