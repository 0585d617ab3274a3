"""The machine report of a load test (``--json``): per stage, per window, thresholds and verdicts, config, versions.

Histograms travel as HdrHistogram-style bytes (base64 in JSON) for the run and each stage, for the HTML
report's latency distribution; ``agentcli loadtest compare`` tests the per-window figures. A report of format
``agentcli.loadtest/1`` (whose ``interrupted`` counted the iterations cut off at the end, now
``iterations_interrupted``) is read as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from agentflow import ProfileSnapshot, scrub_secrets

from ..runtime import Interruption, Machine, machine, versions
from ..thresholds import Verdict, verdict
from .collector import Collector
from .figures import HIST_NAMES, Accumulator, WindowRecord, record_figures
from .model import GENERATOR_LAG_LIMIT_S
from .plan import Plan

__all__ = ["FORMAT", "FORMAT_1", "LoadReport", "Verdict", "build", "masked_command", "read_report", "write_report"]

FORMAT = "agentcli.loadtest/2"
#: The format before ``iterations_interrupted`` and ``interrupted`` (a signal) were told apart.
FORMAT_1 = "agentcli.loadtest/1"
#: Start lag p99 above this means the generator, not the system, may be what limits the figures.
LAG_WARN_S = GENERATOR_LAG_LIMIT_S
#: What a header's value is replaced with in reports: headers are how credentials reach a target.
MASK = "***"


def _mask_header(text: str) -> str:
    name, sep, _ = text.partition(":")
    return f"{name}: {MASK}" if sep else MASK


def masked_command(argv: list[str]) -> list[str]:
    """The command line as a report keeps it: ``--header`` values masked, anything credential-shaped scrubbed."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--header":
            arg = _mask_header(arg)
        elif arg.startswith("--header="):
            arg = "--header=" + _mask_header(arg[len("--header=") :])
        out.append(scrub_secrets(arg))
    return out


class Stretch(msgspec.Struct, kw_only=True):
    """Figures of a stage or of the whole run; latency figures in milliseconds."""

    name: str
    t0_s: float
    t1_s: float
    target: float | None
    scheduled: int
    started: int
    completed: int
    errors: int
    dropped: int
    vus_max: int
    rate_per_s: float | None
    throughput_per_s: float | None
    error_rate: float | None
    errors_by_kind: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    hists: dict[str, bytes]


class WindowOut(msgspec.Struct, kw_only=True):
    t0_s: float
    t1_s: float
    stage: int
    target: float
    scheduled: int
    started: int
    completed: int
    errors: int
    dropped: int
    vus_max: int
    errors_by_kind: dict[str, int]
    latency_ms: dict[str, dict[str, float]]


class LoadReport(msgspec.Struct, kw_only=True):
    format: str = FORMAT
    description: str
    model: str
    profile: str
    target: str
    workers: int
    started_at: str
    duration_s: float
    aborted: bool
    abort_reason: str | None
    passed: bool
    generator_lag_ms: dict[str, float]
    generator_note: str | None
    #: iterations still running when the run ended and graceful_stop ran out: cancelled, counted nowhere else
    iterations_interrupted: int
    run: Stretch
    stages: list[Stretch]
    windows: list[WindowOut]
    window_merges: int
    thresholds: list[Verdict]
    rss_mb: list[tuple[float, float]]
    spec: dict[str, Any]
    command: list[str]
    versions: dict[str, str]
    #: absent from reports written before it was added; `loadtest compare` reads those too
    machine: Machine | None = None
    #: set when Ctrl-C or SIGTERM stopped the run: the figures cover what ran until then
    interrupted: Interruption | None = None
    #: an in-process runner's profile snapshot over the run (agentcli profile-report --from reads it)
    profile_snapshot: ProfileSnapshot | None = None


def _ms(figures: dict[str, float | None]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name in HIST_NAMES:
        prefix = "" if name == "latency" else f"{name}_"
        if figures.get(prefix + "max") is None:
            continue
        out[name] = {k: round((figures[prefix + k] or 0.0) * 1e3, 6) for k in ("p50", "p90", "p95", "p99", "p999")}
        out[name].update(max=round((figures[prefix + "max"] or 0.0) * 1e3, 6))
        out[name].update(mean=round((figures[prefix + "mean"] or 0.0) * 1e3, 6))
    return out


def _stretch(name: str, acc: Accumulator, plan: Plan) -> Stretch:
    f = acc.figures(open_model=plan.open_model)
    latency = _ms(f)
    for hist_name, h in acc.hists.items():
        if hist_name in latency:
            latency[hist_name]["count"] = float(h.count)
    return Stretch(
        name=name, t0_s=acc.t0_s or 0.0, t1_s=acc.t1_s, target=f["target"] if plan.open_model else f["vus_target"],
        scheduled=acc.scheduled, started=acc.started, completed=acc.completed, errors=acc.errors,
        dropped=acc.dropped, vus_max=acc.vus_max, rate_per_s=f["rate"], throughput_per_s=f["throughput"],
        error_rate=f["error_rate"], errors_by_kind=dict(acc.errors_by_kind), latency_ms=latency,
        hists={k: h.to_bytes() for k, h in acc.hists.items()},
    )  # fmt: skip


def _window(rec: WindowRecord, plan: Plan) -> WindowOut:
    f = record_figures(rec, open_model=plan.open_model)
    return WindowOut(
        t0_s=rec.t0_s, t1_s=rec.t1_s, stage=rec.stage, target=rec.target, scheduled=rec.scheduled,
        started=rec.started, completed=rec.completed, errors=rec.errors, dropped=rec.dropped, vus_max=rec.vus_max,
        errors_by_kind=rec.errors_by_kind, latency_ms=_ms(f),
    )  # fmt: skip


def build(
    plan: Plan,
    collector: Collector,
    *,
    target: str,
    started_at: str,
    aborted: bool,
    iterations_interrupted: int,
    command: list[str],
    interrupted: Interruption | None = None,
    profile: ProfileSnapshot | None = None,
) -> LoadReport:
    total = collector.total()
    stages = [_stretch(f"stage {i + 1} ({s.describe()})", acc, plan) for i, (s, acc) in enumerate(
        zip(plan.stages, collector.stages, strict=True))]  # fmt: skip
    verdicts: list[Verdict] = []
    for th in plan.thresholds:
        for i, acc in enumerate(collector.stages):
            if acc.t0_s is not None:
                verdicts.append(verdict(th, f"stage {i + 1}", acc.figures(open_model=plan.open_model)))
        verdicts.append(verdict(th, "run", total.figures(open_model=plan.open_model)))
    lag = total.hists.get("lag")
    lag_ms = {}
    note = None
    if lag is not None and lag.count:
        p = lag.percentiles((50.0, 99.0, 99.9))
        lag_ms = {"p50": p[50.0] * 1e3, "p99": p[99.0] * 1e3, "p999": p[99.9] * 1e3, "max": lag.max_s * 1e3}
        if p[99.0] > LAG_WARN_S:
            note = (
                f"The generator started its p99 iteration {p[99.0] * 1e3:.2f} ms late (over 1 ms): the load "
                "generator itself was busy, so part of the latency is the tool's; lower the rate per process "
                "or add --workers."
            )
            if total.dropped:
                note = (
                    f"The generator, not the target, was the limit: it started its p99 iteration "
                    f"{p[99.0] * 1e3:.2f} ms late (over 1 ms) and dropped {total.dropped:,} arrivals, so part of "
                    "the latency and the drops are the tool's; add --workers (one per core) or lower the rate per "
                    "process."
                )
    failed = any(v.passed is False for v in verdicts)
    spec = msgspec.to_builtins(plan.spec)
    spec["headers"] = {name: MASK for name in plan.spec.headers}
    if plan.spec.url is not None:
        spec["url"] = scrub_secrets(plan.spec.url)
    return LoadReport(
        description=plan.spec.description, model="open" if plan.open_model else "closed", profile=plan.describe(),
        target=scrub_secrets(target), workers=plan.spec.workers, started_at=started_at, duration_s=total.duration_s,
        aborted=aborted, abort_reason=collector.abort_reason, passed=not failed, generator_lag_ms=lag_ms,
        generator_note=note, iterations_interrupted=iterations_interrupted, run=_stretch("run", total, plan),
        stages=stages,
        windows=[_window(r, plan) for r in collector.windows], window_merges=collector.windows.merges,
        thresholds=verdicts, rss_mb=collector.rss_samples, spec=spec, command=masked_command(command),
        versions=msgspec.to_builtins(versions()), machine=machine(), interrupted=interrupted, profile_snapshot=profile,
    )  # fmt: skip


def write_report(path: Path, report: LoadReport) -> None:
    path.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=1))


def read_report(path: Path) -> LoadReport:
    """Read a ``--json`` report; ValueError with a sentence if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}.") from None
    try:
        raw = msgspec.json.decode(data)
        if isinstance(raw, dict) and raw.get("format") == FORMAT_1 and isinstance(raw.get("interrupted"), int):
            raw["iterations_interrupted"] = raw.pop("interrupted")
        return msgspec.convert(raw, LoadReport)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path} is not an agentcli loadtest --json report ({exc}).") from None
