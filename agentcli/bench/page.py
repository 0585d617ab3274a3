"""docs/benchmarks.md from ``--json`` reports: the machine, the versions, the exact commands, the same-run ratios,
and a table per benchmark.

    python -m agentcli.bench.page --run --reports reports/     # run loadtests/benchmarks/plan.toml, write the page
    python -m agentcli.bench.page --reports reports/           # the page only, from the reports already there

The plan lists the benchmarks in the page's order, each ``[[benchmark]]`` with a ``name`` (its report is
``REPORTS/NAME.json``), a ``title``, the ``command`` (an ``agentcli benchmark`` or ``agentcli loadtest`` command;
``--json`` is added), an optional ``note`` printed under its table, and an optional ``server``: a command started
before it and stopped (SIGINT) after it, whose standard output prints ``ready`` once it serves (an ``agentcli
mock-llm`` in another process, say). ``--run`` runs every command first; without it the page is made from the
reports already there. A report that fails its command's thresholds is still shown, marked.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from ..loadtest.report import LoadReport
from .report import by_duration, by_p99, by_throughput, median_run
from .schema import (
    FORMAT,
    KafkaDetails,
    LLMDetails,
    MCPDetails,
    OverloadDetails,
    Report,
    Run,
    StateDetails,
    StreamDetails,
    ToolsDetails,
    WorkflowDetails,
)

__all__ = ["Entry", "main", "read_plan", "render_page", "run_plan"]

_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = _ROOT / "docs" / "benchmarks.md"
DEFAULT_PLAN = _ROOT / "loadtests" / "benchmarks" / "plan.toml"
#: How long a plan's server has to print its ready line.
SERVER_READY_S = 30.0


class PlanError(ValueError):
    """A plan or report that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Entry:
    name: str
    title: str
    command: str
    note: str | None = None
    server: str | None = None
    ready: str | None = None


def read_plan(path: Path) -> list[Entry]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        entries = msgspec.convert(data.get("benchmark", []), list[Entry])
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise PlanError(f"{path} is not a benchmark plan ({exc}); see the docstring of agentcli.bench.page.") from None
    for e in entries:
        if not e.command.startswith(("agentcli benchmark", "agentcli loadtest")):
            raise PlanError(f"{path}: {e.name}: the command must be agentcli benchmark or agentcli loadtest.")
        if (e.server is None) != (e.ready is None):
            raise PlanError(f"{path}: {e.name}: a server needs the ready text it prints, and only a server has one.")
    if len({e.name for e in entries}) != len(entries):
        raise PlanError(f"{path}: two benchmarks have the same name.")
    return entries


def _argv(command: str) -> list[str]:
    words = shlex.split(command)
    return [sys.executable, "-m", "agentcli", *words[1:]] if words[:1] == ["agentcli"] else words


def _start(e: Entry) -> subprocess.Popen[str] | None:
    if e.server is None or e.ready is None:
        return None
    proc = subprocess.Popen(_argv(e.server), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + SERVER_READY_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if e.ready in line:
            return proc
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise PlanError(f"{e.name}: the server {e.server!r} did not print {e.ready!r} within {SERVER_READY_S:g} s.")


def _stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def run_plan(entries: Iterable[Entry], reports: Path) -> None:
    """Run every command of the plan, each writing ``REPORTS/NAME.json``."""
    reports.mkdir(parents=True, exist_ok=True)
    for e in entries:
        path = reports / f"{e.name}.json"
        path.unlink(missing_ok=True)
        print(f"== {e.name}: {e.command}", flush=True)
        server = _start(e)
        try:
            code = subprocess.run([*_argv(e.command), "--json", str(path)], check=False).returncode
        finally:
            _stop(server)
        if not path.is_file():
            raise PlanError(f"{e.name}: {e.command!r} exited {code} without writing its report.")


def _load(path: Path) -> Report | LoadReport:
    try:
        data = path.read_bytes()
        fmt = msgspec.json.decode(data, type=dict[str, object]).get("format")
        if fmt == FORMAT:
            return msgspec.json.decode(data, type=Report)
        return msgspec.json.decode(data, type=LoadReport)
    except (OSError, msgspec.DecodeError) as exc:
        raise PlanError(f"{path} is not an agentcli benchmark or loadtest report ({exc}).") from None


# ---- the page ----------------------------------------------------------------------------------------------------


def _n(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "n/a"
    return f"{v:,.{digits}f}" if abs(v) >= 100 or digits else f"{v:,.2f}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.1f}" if v >= 100 else f"{v:.3f}"


def _command(report: Report | LoadReport) -> str:
    words = list(report.command)
    if "--json" in words:  # where the report went is not part of what was measured
        i = words.index("--json")
        del words[i : i + 2]
    return shlex.join(words)


def _machine(items: list[tuple[Entry, Report | LoadReport]]) -> list[str]:
    reports = [r for _, r in items]
    machines = [r.machine for r in reports if r.machine is not None]
    bench = [r for r in reports if isinstance(r, Report)]
    v = bench[0].versions if bench else None
    lines = ["| | |", "|---|---|"]
    if machines:
        m = machines[0]
        cpus = sorted({x.cpu for x in machines})
        lines.append(f"| CPU | {', '.join(cpus)} |")
        lines.append(f"| cores | {m.cores} |")
        lines.append(f"| memory | {'n/a' if m.memory_gb is None else f'{m.memory_gb:g} GB'} |")
        loads = [x.load_average[0] for x in machines if x.load_average is not None]
        if loads:
            lines.append(f"| load average (1 min) when each run started | {min(loads):.2f} to {max(loads):.2f} |")
    if v is not None:
        lines.append(f"| platform | {v.platform} |")
        lines.append(f"| Python | {v.python} |")
        lines.append(
            f"| agentflow, uvloop, msgspec, aiohttp, aiokafka, openai | {v.agentflow}, {v.uvloop}, {v.msgspec}, "
            f"{v.aiohttp}, {v.aiokafka}, {v.openai} |"
        )
    started = sorted(r.started_at for r in reports)
    lines.append(f"| measured (UTC) | {started[0]} to {started[-1]} |")
    return lines


def _ratios(items: list[tuple[Entry, Report | LoadReport]]) -> list[str]:
    lines = ["| benchmark | ratio | median | every round |", "|---|---|---|---|"]
    for e, r in items:
        if not isinstance(r, Report):
            continue
        for name, value in r.ratios.items():
            rounds = [rr.ratios[name] for rr in r.round_ratios if name in rr.ratios]
            spread = ", ".join(f"{x:.2f}" for x in rounds) if rounds else "measured once"
            lines.append(f"| [{e.title}](#{_anchor(e.title)}) | `{name}` | **{value:.2f}x** | {spread} |")
    return lines


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.strip().replace(" ", "-")


def _median_runs(r: Report) -> list[Run]:
    rank = by_duration if r.scenario == "overload" else by_p99 if r.mode == "latency" else by_throughput
    out: list[Run] = []
    for op in dict.fromkeys(run.op for run in r.runs):  # the state scenario measures several operations
        runs = [run for run in r.runs if run.op == op]
        sides = dict.fromkeys(run.side for run in runs)
        out += [run for side in sides if (run := median_run(runs, side, rank)) is not None]
    return out


def _bench_section(e: Entry, r: Report) -> list[str]:
    lines = [f"`{_command(r)}`", ""]
    what = "median run of each side" if r.repeat > 1 else "each side"
    lines += [
        f"| side ({what}) | completed | errors | per second | p50 ms | p99 ms | max ms | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in _median_runs(r):
        lat = run.latency_ms
        side = run.side if run.op is None else f"{run.op}: {run.side}"
        lines.append(
            f"| {side} | {run.completed:,} | {run.errors:,} | {_n(run.throughput_per_s)} | "
            f"{_ms(lat.p50 if lat else None)} | {_ms(lat.p99 if lat else None)} | {_ms(lat.max if lat else None)} | "
            f"{_n(run.cpu_s, 2)} |"
        )
    lines.append("")
    tails = [run for run in _median_runs(r) if run.tail_latency_ms is not None]
    if tails:
        t = tails[0].tail_latency_ms
        assert t is not None
        lines += [
            f"End of the flood (the events handled once its last 100,000 were being emitted): p50 {_ms(t.p50)} ms, "
            f"**p99 {_ms(t.p99)} ms**, max {_ms(t.max)} ms.",
            "",
        ]
    lines += _details(r)
    if r.ratios:
        lines.append("Ratios (median of rounds): " + ", ".join(f"`{k}` {v:.2f}x" for k, v in r.ratios.items()) + ".")
    lines.append(f"Latency: {r.latency_measures}. Runs: {r.order}.")
    if not r.passed:
        lines.append("**This run did not pass** (a threshold failed, or requests failed): see its report.")
    return lines


def _details(r: Report) -> list[str]:
    d = r.details
    if isinstance(d, LLMDetails):
        extra = "" if d.added_p50_ms is None else f"; added p50 {d.added_p50_ms:.2f} ms"
        return [f"Server: {d.server}, {d.concurrent_users} users, batch size {d.batch_size}{extra}.", ""]
    if isinstance(d, ToolsDetails):
        return [
            f"Agent runs against the {d.server}, {d.concurrent_users} users. `ctx.tools.call` on a no-op tool: "
            f"{d.tools_call_us:.2f} µs against {d.direct_call_us:.2f} µs for a direct await, "
            f"**{d.call_overhead_us:.2f} µs** added per call; loop detection {d.loop_detection_1_us:.2f} µs per "
            f"model turn of one call, **{d.loop_detection_3_us:.2f} µs** of three.",
            "",
        ]
    if isinstance(d, MCPDetails):
        return [f"MCP SDK {d.sdk_version}, {d.concurrent_users} users, {d.sessions} session per pool.", ""]
    if isinstance(d, StreamDetails):
        t = d.tool_delivery_ms
        added = "n/a" if d.ttft_added_ms is None else f"{d.ttft_added_ms:.3f} ms"
        return [
            f"Answers of {d.tokens_per_answer} tokens, {d.concurrent_users} users. Time to first token, p50: "
            f"agentflow {d.ttft_p50_ms:.3f} ms, bare reader {_ms(d.raw_ttft_p50_ms)} ms, **added {added}**. "
            f"Streaming tool: **{d.tool_items_per_s:,.0f} items/s**, delivery p50 {t.p50:.3f} ms, "
            f"**p95 {t.p95:.3f} ms**, p99 {t.p99:.3f} ms (batches of {d.tool_batch_size}).",
            "",
        ]
    if isinstance(d, KafkaDetails):
        return [f"Kafka: {d.brokers}, {d.partitions} partitions, {d.emitters} emitters.", ""]
    if isinstance(d, StateDetails):
        return [
            f"State: {d.backend} ({d.store}), {d.users} users, {d.ops:,} operations each; acked_write offers "
            f"{d.acked_rate_per_s:,.0f} writes/s for {d.acked_seconds:g} s.",
            "",
        ]
    if isinstance(d, WorkflowDetails):

        def f(v: float | None, fmt: str) -> str:
            return "n/a" if v is None else format(v, fmt)

        return [
            f"{d.steps} steps, {d.critical_path_steps} on the critical path, {d.llm_server} at "
            f"{d.llm_latency_ms:g} ms, {d.concurrent_users} users, state on {d.state_backend}: critical path p50 "
            f"{f(d.critical_path_ms_p50, ',.1f')} ms, wall p50 {f(d.wall_ms_p50, ',.1f')} ms, wall/critical p50 "
            f"{f(d.wall_over_critical_p50, '.3f')} (p95 {f(d.wall_over_critical_p95, '.3f')}), framework overhead "
            f"per step p50 {f(d.overhead_per_step_us_p50, ',.0f')} µs (p95 {f(d.overhead_per_step_us_p95, ',.0f')}).",
            "",
        ]
    if isinstance(d, OverloadDetails):
        q, i, b = d.requests, d.ingest, d.blocked
        return [
            f"- runner.request at {d.factor:g}x a capacity of {q.capacity_per_s:,.0f}/s: handled "
            f"{q.share_of_capacity:.1%} of capacity, refused {q.refused:,} (p99 {_ms(q.refusal_p99_ms)} ms to the "
            f"error), RSS {q.rss_idle_mb:.0f} → {q.rss_peak_mb:.0f} MB, lost {q.lost:,}",
            f"- HTTP ingest at {d.factor:g}x: handled {i.share_of_capacity:.1%} of capacity, refused "
            f"{sum(i.refused_by_status.values()):,} POSTs, RSS {i.rss_idle_mb:.0f} → {i.rss_peak_mb:.0f} MB, "
            f"lost {i.lost:,}",
            f"- {b.emitters:,} blocked emitters: agentflow {b.agentflow_median_s:.3f} s, raw asyncio.Queue "
            f"{b.raw_median_s:.3f} s (median rounds)",
            "",
        ]
    return []


def _load_section(r: LoadReport) -> list[str]:
    lines = [f"`{_command(r)}`", "", f"{r.profile}, against {r.target}.", ""]
    lines += [
        "| | target | achieved/s | completed | errors | dropped | p50 ms | p95 ms | p99 ms | lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in [*r.stages, r.run]:
        lat, lag = s.latency_ms.get("latency", {}), s.latency_ms.get("lag", {})
        lines.append(
            f"| {s.name} | {_n(s.target)} | {_n(s.rate_per_s)} | {s.completed:,} | {s.errors:,} | {s.dropped:,} | "
            f"{_ms(lat.get('p50'))} | {_ms(lat.get('p95'))} | {_ms(lat.get('p99'))} | {_ms(lag.get('p99'))} |"
        )
    lines.append("")
    if r.thresholds:
        failed = [v.threshold for v in r.thresholds if v.passed is False]
        lines.append("Thresholds: " + ("all passed." if not failed else f"**failed**: {', '.join(failed)}."))
    return lines


def render_page(items: list[tuple[Entry, Report | LoadReport]], plan: str) -> str:
    if not items:
        raise PlanError("no reports to make a page from.")
    out = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m agentcli.bench.page` from --json reports; do not edit by hand. -->",
        "",
        f"Figures measured with the commands listed in `{plan}`, one report each; "
        "[benchmarking.md](benchmarking.md) says what the commands measure and how to regenerate this page. "
        "Each ratio compares two sides measured in the same process and run, the sides alternating which goes "
        "first each round: on a shared machine, compare ratios rather than absolute figures.",
        "",
        "## Machine",
        "",
        *_machine(items),
        "",
        "## Same-run ratios",
        "",
        *_ratios(items),
        "",
    ]
    for e, r in items:
        out += [f"## {e.title}", ""]
        out += _bench_section(e, r) if isinstance(r, Report) else _load_section(r)
        if e.note:
            out += ["", e.note]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcli.bench.page", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--plan", type=Path, default=DEFAULT_PLAN, help="the benchmarks (default loadtests/benchmarks/plan.toml)"
    )
    parser.add_argument("--reports", type=Path, required=True, help="the directory of the NAME.json reports")
    parser.add_argument("--run", action="store_true", help="run every command of the plan first")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="with --run: run only this benchmark of the plan (repeatable); the page uses the other reports as is",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the page (default docs/benchmarks.md)")
    args = parser.parse_args(argv)
    try:
        entries = read_plan(args.plan)
        if args.only and not args.run:
            raise PlanError("--only chooses what --run runs; add --run.")
        if args.run:
            chosen = entries
            if args.only:
                unknown = sorted(set(args.only) - {e.name for e in entries})
                if unknown:
                    names = ", ".join(e.name for e in entries)
                    raise PlanError(f"--only {', '.join(unknown)}: not in the plan, whose benchmarks are {names}.")
                chosen = [e for e in entries if e.name in args.only]
            run_plan(chosen, args.reports)
        items = [(e, _load(args.reports / f"{e.name}.json")) for e in entries]
        args.output.write_text(render_page(items, _plan_name(args.plan)), encoding="utf-8")
    except PlanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


def _plan_name(path: Path) -> str:
    """The plan as the page names it: relative to the repository when it is inside it, no machine paths."""
    try:
        return str(path.resolve().relative_to(_ROOT))
    except ValueError:
        return path.name


if __name__ == "__main__":
    raise SystemExit(main())
