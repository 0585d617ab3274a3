"""``agentcli benchmark --report PATH.html``: the benchmark's page, one self-contained file (:mod:`agentcli.html`).

The verdict (PASSED, FAILED, "no thresholds set" or INTERRUPTED), the headline figures, every run of every round
with the ratios, the thresholds, then charts: the latency distribution of each side's median run (percentile
spectrum, from the runs' HDR histograms), and throughput, p99 and the ratios round by round. A profiled run adds
its profile summary; the phases of a bare ``agentcli benchmark`` (the LLM run) follow as sections of their own.
"""

from __future__ import annotations

import html
from pathlib import Path

from agentflow import LatencyHistogram

from ..html import Chart, Series, page, spectrum, table
from .profiling import ProfileSummary
from .report import by_p99, by_throughput, median_run
from .schema import Report, Run

__all__ = ["render_html", "write_html"]


def _f(v: float | None, fmt: str = ",.3f") -> str:
    return "-" if v is None else format(v, fmt)


def _verdict(rep: Report) -> str:
    if rep.interrupted is not None:
        i = rep.interrupted
        return f'<b class="note">INTERRUPTED</b> <small>({html.escape(i.signal)} after {i.covered_s:.1f} s)</small>'
    if not rep.passed:
        return '<b class="fail">FAILED</b>'
    if not rep.thresholds:
        return '<b class="muted">no thresholds set</b>'
    return '<b class="pass">PASSED</b>'


def _sides(rep: Report) -> list[str]:
    return list(dict.fromkeys(r.side for r in rep.runs))


def charts(rep: Report, prefix: str) -> list[Chart]:
    rank = by_p99 if rep.mode == "latency" else by_throughput
    sides = _sides(rep)
    dist = []
    for side in sides:
        run = median_run(rep.runs, side, rank)
        if run is not None and run.hdr:
            dist.append(Series(f"{run.label} (median run)", spectrum(LatencyHistogram.from_bytes(run.hdr))))
    out = []
    if dist:
        out.append(
            Chart(
                f"{prefix}Latency distribution (percentile spectrum)",
                "ms",
                dist,
                x="percentile",
                log_y=True,
                id="dist",
                note=f"{rep.latency_measures}. HDR-style: the percentile axis is logarithmic in 1/(1-q).",
            )
        )
    if rep.repeat > 1 or len(sides) > 1:

        def by_round(value: str) -> list[Series]:
            series = []
            for side in sides:
                pts = [(float(r.round), v) for r in rep.runs if r.side == side and (v := _value(r, value)) is not None]
                series.append(Series(side, pts))
            return series

        out.append(Chart(f"{prefix}Throughput by round", "per second", by_round("throughput"), x="round", id="rounds"))
        out.append(Chart(f"{prefix}p99 latency by round", "ms", by_round("p99"), x="round", id="rounds"))
        names = sorted({n for rr in rep.round_ratios for n in rr.ratios})
        if names:
            ratio_series = [
                Series(n, [(float(rr.round), rr.ratios[n]) for rr in rep.round_ratios if n in rr.ratios]) for n in names
            ]
            out.append(Chart(f"{prefix}Ratios by round", "ratio", ratio_series, x="round", id="rounds"))
    return out


def _value(run: Run, what: str) -> float | None:
    if what == "throughput":
        return run.throughput_per_s
    return run.latency_ms.p99 if run.latency_ms is not None else None


def _section(rep: Report, prefix: str) -> str:
    runs = [
        [str(r.round), html.escape(r.side), html.escape(r.label), f"{r.completed:,}", f"{r.errors:,}",
         _f(r.duration_s, ",.2f"), _f(r.throughput_per_s, ",.0f"),
         _f(r.latency_ms.p50 if r.latency_ms else None), _f(r.latency_ms.p99 if r.latency_ms else None),
         _f(r.latency_ms.max if r.latency_ms else None)]
        for r in rep.runs
    ]  # fmt: skip
    ratios = [
        [html.escape(name), f"{value:.2f}x"]
        + [f"{rr.ratios[name]:.2f}x" if name in rr.ratios else "-" for rr in rep.round_ratios]
        for name, value in rep.ratios.items()
    ]
    th_rows = [
        [html.escape(v.threshold), html.escape(v.scope), html.escape(v.observed_text), html.escape(v.limit_text),
         '<b class="pass">pass</b>' if v.passed else '<b class="fail">FAIL</b>' if v.passed is False else "no data"]
        for v in rep.thresholds
    ]  # fmt: skip
    lat = rep.latency_ms
    head = (
        f"<p><b>Scenario:</b> {html.escape(rep.scenario)}, <b>mode</b> {html.escape(rep.mode or '-')}, "
        f"<b>bus</b> {html.escape(rep.bus)}; <b>runs:</b> {html.escape(rep.order)}<br>"
        f"<b>Throughput:</b> {rep.throughput_per_s:,.0f}/s ({rep.completed:,} completed, {rep.errors:,} errors in "
        f"{rep.duration_s:.2f} s)<br><b>Latency</b> ({html.escape(rep.latency_measures)}): "
        + (f"p50 {lat.p50:.3f} ms, p99 {lat.p99:.3f} ms, max {lat.max:.3f} ms" if lat is not None else "not measured")
        + f"<br><b>CPU</b> {_f(rep.cpu_s, '.2f')} s, <b>peak RSS</b> {rep.rss_peak_mb:,.1f} MB</p>"
    )
    notes = "".join(f'<p class="note">note: {html.escape(n)}</p>' for n in rep.notes)
    notes += "".join(f'<p class="fail">warning: {html.escape(w)}</p>' for w in rep.warnings)
    thresholds = (
        table(["threshold", "scope", "observed", "limit", "verdict"], th_rows, "thresholds")
        if th_rows
        else "<p class=\"muted\">No thresholds were set; add --threshold 'p99&lt;1ms' to judge the run.</p>"
    )
    key = prefix.strip(": ").replace(" ", "-") or "main"
    several = rep.repeat > 1 or len(_sides(rep)) > 1  # what charts() draws round by round
    rounds = f"<h2>{html.escape(prefix)}Round by round</h2>\n<!--charts:{key}-rounds-->" if several else ""
    return f"""{head}{notes}
<h2>{html.escape(prefix)}Runs</h2>
{table(["round", "side", "run", "completed", "errors", "s", "per s", "p50 ms", "p99 ms", "max ms"], runs, "runs")}
{table(["ratio", "median", *[f"round {rr.round}" for rr in rep.round_ratios]], ratios, "ratios") if ratios else ""}
<h2>{html.escape(prefix)}Thresholds</h2>
{thresholds}
<h2>{html.escape(prefix)}Latency distribution</h2>
<!--charts:{key}-dist-->
{rounds}"""


def _keyed(rep: Report, prefix: str) -> list[Chart]:
    key = prefix.strip(": ").replace(" ", "-") or "main"
    out = charts(rep, prefix)
    for c in out:
        c.id = f"{key}-{c.id}"
    return out


def render_html(rep: Report, profile: ProfileSummary | None = None) -> str:
    body = _section(rep, "")
    all_charts = _keyed(rep, "")
    if profile is not None:
        rows = [[html.escape(c) for c in row] for row in profile.rows]
        body += (
            f"<h2>Profile</h2><p>{html.escape(profile.title)}</p>{table(list(profile.columns), rows, 'profile')}"
            f'<p class="muted">{html.escape(profile.note)}</p>'
        )
    for n, phase in enumerate(rep.phases, 2):
        prefix = f"Phase {n} ({phase.scenario}): "
        body += f"<h2>{html.escape(prefix.rstrip(': '))}</h2>" + _section(phase, prefix)
        all_charts += _keyed(phase, prefix)
    if rep.interrupted is not None:
        i = rep.interrupted
        body = (
            f'<p class="note">Interrupted by {html.escape(i.signal)} after {i.covered_s:.1f} s: the figures cover '
            "what ran until then.</p>" + body
        )
    v = rep.versions
    body += (
        f"<p><small>agentflow {html.escape(v.agentflow)}, Python {html.escape(v.python)}, "
        f"{html.escape(v.platform)}; {html.escape(rep.machine.cpu)}, {rep.machine.cores} cores; started "
        f"{html.escape(rep.started_at)}; {html.escape(' '.join(rep.command))}</small></p>"
    )
    return page("agentcli benchmark report", f"agentcli benchmark — {_verdict(rep)}", body, all_charts)


def write_html(path: Path, rep: Report, profile: ProfileSummary | None = None) -> None:
    path.write_text(render_html(rep, profile), encoding="utf-8")
