"""``agentcli benchmark``: its options (the runs are in :mod:`.runs`), and ``agentcli benchmark compare``.

Exit codes, as ``agentcli loadtest``: 0 every threshold passed and nothing failed, 1 a threshold failed or a
request or event failed (the figures leave failures out, so they describe no working setup), 2 bad usage — a bad
option, threshold or config file, always with a sentence and never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..gate import AlphaOption, BaselineArg, CandidateArg, MinDeltaOption, ToleranceOption, run_gate
from ..logs import log_records
from ..output import OPTIONS
from ..parse import ParseError, option, parse_duration
from ..runtime import now_iso
from ..thresholds import parse_threshold
from .measure import Mode
from .options import BusChoice, Options, ProfileKind, Scenario, StateBackendChoice, usage
from .report import THRESHOLD_FIGURES
from .runs import dispatch

__all__ = ["benchmark", "benchmark_app"]

_WHAT = "What to load"
_LOAD = "Load shape"
_REPORT = "Comparison and output"

benchmark_app = typer.Typer(
    help="Measure agentflow's throughput and latency; `benchmark compare A.json B.json` checks for regressions.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@benchmark_app.callback(invoke_without_command=True)
def benchmark(
    ctx: typer.Context,
    scenario: Annotated[
        Scenario | None,
        typer.Option(
            help="Built-in scenario: noop measures framework overhead; llm-chat and llm-embed, agents calling an "
            "LLM server; overload, 10x load and blocked emitters; tools, the agent loop with tool calls; mcp, MCP "
            "tool calls through session pools; stream, streamed answers and streaming tools; state, ctx.state "
            "against a bare loop; workflow, plan -> 3 parallel researchers -> join -> writer over a 50 ms mock LLM.",
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
        typer.Option(
            min=1,
            help="Closed loops: virtual users.",
            show_default="64; llm-*: 16; tools 16, mcp 8, stream 4",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests or events in total (overload: blocked emitters).",
            show_default="closed 200000, throughput 500000, latency 300000; llm-* 5000; kafka 100000; overload 40000; "
            "tools 2000, mcp 5000, stream 2000 per side",
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
    rate: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="--bus kafka, latency mode: offer this many events/s to every side instead of a fraction of each "
            "side's own saturation (no saturation run); the report adds p50_ratio.",
            show_default="--load-fraction of saturation",
            rich_help_panel=_LOAD,
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
    html_path: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Write a self-contained HTML report here (opens offline).", rich_help_panel=_REPORT
        ),
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
    if ctx.invoked_subcommand is not None:
        return
    try:
        thresholds = [parse_threshold(t, THRESHOLD_FIGURES) for t in threshold or []]
    except ParseError as exc:
        raise usage(str(exc), "--threshold") from None
    o = Options(
        scenario=scenario, app_ref=app_ref, agent=agent, app_dir=app_dir, payload=payload, config=config, mode=mode,
        users=concurrent_users, requests=requests,
        seconds=option(parse_duration, duration, "--duration") if duration is not None else None,
        batch_size=batch_size, agent_batch_size=agent_batch_size, load_fraction=load_fraction, rate=rate,
        compare_raw=compare_raw, repeat=rounds, profile=profile, output=output, json_path=json_path,
        html_path=html_path, llm_url=llm_url, dimensions=dimensions, bus=bus, bootstrap=bootstrap,
        thresholds=thresholds, started_at=now_iso(), backend=backend,
    )  # fmt: skip
    with log_records(logging.WARNING, fmt=OPTIONS.log_format, limit=5) as limiter:
        code = dispatch(o)
    hidden = limiter.summary() if limiter is not None else None
    if hidden:
        Console(stderr=True).print(hidden)
    raise typer.Exit(code=code)


@benchmark_app.command("compare")
def compare(
    baseline: BaselineArg,
    candidate: CandidateArg,
    tolerance: ToleranceOption = "10%",
    min_delta: MinDeltaOption = "1ms",
    alpha: AlphaOption = 0.01,
) -> None:
    """Regression gate between two reports: a figure regresses when significantly worse (Mann-Whitney U on the
    rounds; run both with --repeat 5 or more) by more than --tolerance and, for latency, --min-delta; exit 1 when
    one does."""
    from .compare import compare_reports, read_report

    run_gate(baseline, candidate, (tolerance, min_delta, alpha), read_report, compare_reports, "rounds")
