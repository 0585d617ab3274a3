"""``agentcli loadtest [OPTIONS]`` and ``agentcli loadtest compare A.json B.json``.

Exit codes: 0 every threshold passed, 1 a threshold failed (or compare found a regression), 2 bad usage — a
bad option, stage list, threshold or scenario file, always with a sentence and never a traceback.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from agentflow import scrub_secrets

from ..gate import AlphaOption, BaselineArg, CandidateArg, MinDeltaOption, ToleranceOption, run_gate
from ..logs import log_records
from ..output import OPTIONS
from ..output import console as make_console
from ..parse import ParseError
from ..runtime import Interrupted, Stop, command_line, interruption, now_iso, run_async
from ..thresholds import verdict_table
from .collector import Collector
from .compare import compare_reports
from .live import LiveView
from .plan import Plan, make_target, resolve
from .report import LoadReport, build, read_report, write_report
from .report_html import write_html
from .scenario import ScenarioError, load_scenario, make_spec
from .session import LiveStatus, Outcome, run_local
from .workers import run_workers

__all__ = ["loadtest_app"]

#: The exit code of a run a signal stopped (128 + SIGINT, as a shell reports Ctrl-C).
INTERRUPTED_EXIT = 130
_LOAD = "Load shape"
_WHAT = "What to load"
_CHECK = "Thresholds"
_OUT = "Output"

loadtest_app = typer.Typer(
    help="Load-test agentflow or an HTTP endpoint: open/closed models, stages, thresholds, live view, reports.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _usage(exc: Exception, hint: str | None = None) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=hint)


def _parse_payload(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise typer.BadParameter(f"{text!r} is not valid JSON ({exc}).", param_hint="'--payload'") from None


def _headers(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{v!r} is not a header; write 'Name: value'.", param_hint="'--header'")
        out[name.strip()] = value.strip()
    return out


@loadtest_app.callback(invoke_without_command=True)
def loadtest(
    ctx: typer.Context,
    script: Annotated[
        Path | None,
        typer.Option(
            help="Scenario file: loadtests/NAME.toml, or a .py with options/payload()/check().", rich_help_panel=_WHAT
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            help="Open model: arrivals per second, like 500/s (with --stages: the starting rate).",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    vus: Annotated[
        int | None,
        typer.Option(help="Closed model: virtual users (with --stages: the starting VUs).", rich_help_panel=_LOAD),
    ] = None,
    stages: Annotated[
        str | None,
        typer.Option(help="k6-style ramps 'DURATION:TARGET,...', like 30s:100,1m:500,30s:0.", rich_help_panel=_LOAD),
    ] = None,
    duration: Annotated[
        str | None, typer.Option(help="Constant load for this long: 30s, 5m.", rich_help_panel=_LOAD)
    ] = None,
    max_vus: Annotated[
        int | None,
        typer.Option(
            help="Open model: most iterations in flight; past it arrivals are dropped.",
            show_default="derived: up to 1000 while the generator is on time",
            rich_help_panel=_LOAD,
        ),
    ] = None,
    think_time: Annotated[
        str | None, typer.Option(help="Closed model: pause after each iteration.", rich_help_panel=_LOAD)
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(help="Time window of the per-window figures.", show_default="1s", rich_help_panel=_LOAD),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Generator processes (open model); histograms are merged.", rich_help_panel=_LOAD)
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="HTTP target: POST the payload as JSON here.", rich_help_panel=_WHAT)
    ] = None,
    stream: Annotated[
        bool | None,
        typer.Option(
            "--stream",
            help="--url is an OpenAI chat endpoint: stream, measure TTFT and inter-token.",
            show_default="off",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    header: Annotated[
        list[str] | None, typer.Option(help="HTTP header 'Name: value' (repeatable).", rich_help_panel=_WHAT)
    ] = None,
    timeout: Annotated[
        str | None, typer.Option(help="Per-iteration timeout.", show_default="30s", rich_help_panel=_WHAT)
    ] = None,
    app_ref: Annotated[
        str | None,
        typer.Option(
            "--app", metavar="MODULE:ATTR", help="Your Runner (or a function config -> Runner).", rich_help_panel=_WHAT
        ),
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Which --app agent to load.", rich_help_panel=_WHAT)] = None,
    app_dir: Annotated[
        str | None, typer.Option(help="Directory searched first for --app.", rich_help_panel=_WHAT)
    ] = None,
    config: Annotated[
        str | None, typer.Option(help="agentflow TOML config for the in-process runner.", rich_help_panel=_WHAT)
    ] = None,
    bus: Annotated[
        str | None,
        typer.Option(
            help="memory (in-process targets) or kafka: events to --topic through agentflow.Producer.",
            show_default="memory",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    bootstrap: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Kafka brokers.",
            show_default="[kafka] bootstrap_servers of --config",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    topic: Annotated[
        str | None, typer.Option(help="Kafka: the topic your workers consume.", rich_help_panel=_WHAT)
    ] = None,
    emit_only: Annotated[
        bool | None,
        typer.Option(
            "--emit-only",
            help="Kafka: do not wait for a result; latency ends when the brokers confirmed the write.",
            show_default="off",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    payload: Annotated[
        str | None,
        typer.Option(
            metavar="JSON",
            help="Payload template; ${i} ${uuid} ${random} ${time} are replaced per request.",
            rich_help_panel=_WHAT,
        ),
    ] = None,
    payload_file: Annotated[
        str | None, typer.Option(help="JSONL file: one payload per line, used in turn.", rich_help_panel=_WHAT)
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(
            help="Pass/fail rule, repeatable: 'p99<250ms', 'error_rate<0.01', 'rate>=0.95*target'.",
            rich_help_panel=_CHECK,
        ),
    ] = None,
    abort_on_fail: Annotated[
        bool | None,
        typer.Option(
            "--abort-on-fail",
            help="Stop early once a threshold keeps failing for --abort-grace.",
            show_default="off",
            rich_help_panel=_CHECK,
        ),
    ] = None,
    abort_grace: Annotated[
        str | None,
        typer.Option(
            help="How long a threshold must keep failing before an abort.", show_default="5s", rich_help_panel=_CHECK
        ),
    ] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the machine report here.", rich_help_panel=_OUT)
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write a self-contained HTML report here.", rich_help_panel=_OUT)
    ] = None,
) -> None:
    """Run a load test (see docs/load-testing.md); `loadtest compare A.json B.json` checks for regressions."""
    if ctx.invoked_subcommand is not None:
        return
    for path, hint in ((json_path, "'--json'"), (report, "'--report'")):
        if path is not None and not path.parent.is_dir():
            raise typer.BadParameter(f"directory {str(path.parent)!r} does not exist.", param_hint=hint)
    options: dict[str, Any] = {}
    scenario_obj = None
    if script is not None:
        try:
            options, scenario_obj = load_scenario(script)
        except ScenarioError as exc:
            raise _usage(exc, "'--script'") from None
    given = {
        "rate": rate, "vus": vus, "stages": stages, "duration": duration, "max_vus": max_vus,
        "think_time": think_time, "window": window, "workers": workers, "url": url, "stream": stream,
        "timeout": timeout, "app": app_ref, "agent": agent, "app_dir": app_dir, "config": config,
        "payload_file": payload_file, "abort_on_fail": abort_on_fail, "abort_grace": abort_grace, "bus": bus,
        "bootstrap": bootstrap, "topic": topic, "emit_only": emit_only,
    }  # fmt: skip
    # A constant load on the command line replaces the file's shape as a whole, not key by key.
    if rate is not None or vus is not None:
        options.pop("rate", None)
        options.pop("vus", None)
    if stages is not None or duration is not None:
        options.pop("stages", None)
        options.pop("duration", None)
    options.update({k: v for k, v in given.items() if v is not None})
    if payload is not None:
        options["payload"] = _parse_payload(payload)
    if header:
        options["headers"] = {**options.get("headers", {}), **_headers(header)}
    if threshold:
        options["thresholds"] = [*options.get("thresholds", []), *threshold]
    if script is not None and script.suffix == ".py":
        options["script"] = str(script)
    try:
        spec = make_spec(options, str(script) if script is not None else "options")
        plan = resolve(spec)
    except (ScenarioError, ParseError) as exc:
        raise _usage(exc) from None
    code = _run(plan, scenario_obj, json_path, report)
    raise typer.Exit(code=code)


def _run(plan: Plan, scenario_obj: Any, json_path: Path | None, html_path: Path | None) -> int:
    console = make_console()
    err = Console(stderr=True)
    with log_records(logging.WARNING, fmt=OPTIONS.log_format, limit=5) as limiter:
        rep = _measure(plan, scenario_obj, console)
    render(console, rep)
    hidden = limiter.summary() if limiter is not None else None
    if hidden:
        err.print(hidden)
    if json_path is not None:
        write_report(json_path, rep)
        console.print(f"JSON report written to {json_path}", highlight=False)
    if html_path is not None:
        write_html(html_path, rep)
        console.print(f"HTML report written to {html_path}", highlight=False)
    if rep.interrupted is not None:
        i = rep.interrupted
        err.print(
            f"Interrupted by {i.signal} after {i.covered_s:.1f} s of {plan.duration_s:g} s: the figures above cover "
            "what ran until then.",
            highlight=False,
        )
        return INTERRUPTED_EXIT
    return 0 if rep.passed else 1


def _measure(plan: Plan, scenario_obj: Any, console: Console) -> LoadReport:
    """Run the load test; a first Ctrl-C ends the load early and the report covers what ran (``interrupted``)."""
    started_at = now_iso()
    if plan.spec.workers == 1:
        try:
            target = make_target(plan)
        except ScenarioError as exc:
            raise _usage(exc, "'--app'" if plan.spec.app is not None else None) from None
        target_name = target.describe()
    else:
        target = None
        target_name = (
            plan.spec.url
            or plan.spec.app
            or (f"kafka topic {plan.spec.topic}" if plan.spec.bus == "kafka" else "in-process noop agent")
        )
    console.print(
        f"agentcli loadtest: {plan.describe()} against {scrub_secrets(target_name)}"
        + (f", {plan.spec.workers} worker processes" if plan.spec.workers > 1 else ""),
        highlight=False,
    )
    status = LiveStatus()
    stop = Stop()
    t0 = time.monotonic()

    async def go() -> Outcome:
        collector = Collector(plan)
        async with LiveView(console, plan, status, collector):
            if plan.spec.workers > 1:
                return await run_workers(plan, status=status, collector=collector, stop=stop)
            return await run_local(plan, scenario_obj, status=status, target=target, collector=collector, stop=stop)

    try:
        outcome = run_async(go(), stop)
    except Interrupted as exc:
        Console(stderr=True).print("Interrupted before the load started; no report written.")
        raise typer.Exit(code=128 + exc.signum) from None
    except ScenarioError as exc:
        raise _usage(exc) from None
    return build(
        plan, outcome.collector, target=outcome.target, started_at=started_at, aborted=outcome.aborted,
        iterations_interrupted=outcome.iterations_interrupted, command=command_line(),
        interrupted=interruption(stop, t0, plan.duration_s), profile=outcome.profile,
    )  # fmt: skip


def _f(v: float | None, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def render(console: Console, rep: LoadReport) -> None:
    t = Table(title=f"{rep.profile} — {rep.target}", title_justify="left")
    for col in ("", "target", "achieved/s", "done", "errors", "dropped", "VUs", "p50 ms", "p95 ms", "p99 ms",
                "max ms", "lag p99 ms"):  # fmt: skip
        t.add_column(col, justify="right" if col else "left")
    for s in [*rep.stages, rep.run]:
        lat = s.latency_ms.get("latency", {})
        lag = s.latency_ms.get("lag", {})
        t.add_row(
            s.name, _f(s.target), _f(s.rate_per_s), f"{s.completed:,}", f"{s.errors:,}", f"{s.dropped:,}",
            str(s.vus_max), _f(lat.get("p50"), ".3f"), _f(lat.get("p95"), ".3f"), _f(lat.get("p99"), ".3f"),
            _f(lat.get("max"), ".3f"), _f(lag.get("p99"), ".3f"),
        )  # fmt: skip
    console.print(t)
    if rep.run.errors_by_kind:
        kinds = ", ".join(f"{k} {n:,}" for k, n in sorted(rep.run.errors_by_kind.items(), key=lambda kv: -kv[1]))
        console.print(f"errors by kind: {kinds}", highlight=False)
    if rep.generator_note:
        console.print(f"[yellow]note:[/] {rep.generator_note}")
    if rep.aborted:
        console.print(f"[red]aborted:[/] {rep.abort_reason or 'stopped early'}")
    if rep.thresholds:
        console.print(verdict_table(rep.thresholds))
        console.print("[green]all thresholds passed[/]" if rep.passed else "[red]a threshold failed[/]")
    else:
        console.print("no thresholds set", highlight=False)


@loadtest_app.command("compare")
def compare(
    baseline: BaselineArg,
    candidate: CandidateArg,
    tolerance: ToleranceOption = "10%",
    min_delta: MinDeltaOption = "1ms",
    alpha: AlphaOption = 0.01,
) -> None:
    """Regression gate between two runs: a figure regresses when significantly worse (Mann-Whitney U on the
    windows) by more than --tolerance and, for latency, --min-delta; exit 1 when one does."""
    run_gate(baseline, candidate, (tolerance, min_delta, alpha), read_report, compare_reports, "windows")
