"""``--report PATH.html``: one self-contained file that opens offline (:mod:`agentcli.html`).

The verdict (PASSED, FAILED, or "no thresholds set"), the stages and thresholds tables, then the charts, one point
per window: latency percentiles over time; throughput with the target dashed on top of achieved and finished (so
none hides another); errors and dropped iterations; virtual users; the latency distribution of the whole run
(percentile spectrum on a log scale, from the run's HDR histograms); for streamed runs time to first token and
inter-token latency, over time and as a distribution; and the generator's own start lag and RSS over time.
"""

from __future__ import annotations

import html
from pathlib import Path

from agentflow import LatencyHistogram

from ..html import Chart, Series, page, spectrum, table
from .report import LoadReport, WindowOut

__all__ = ["render_html", "write_html"]

#: Distribution labels of the histograms a report may carry.
_HISTS = {
    "latency": "latency (intended start → done)",
    "service": "service time (actual start → done)",
    "ttft": "time to first token",
    "itl": "inter-token latency",
}


def _v(v: float | None, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def _mid(w: WindowOut) -> float:
    return round((w.t0_s + w.t1_s) / 2, 3)


def _per_window(wins: list[WindowOut], hist: str, keys: tuple[str, ...]) -> list[Series]:
    return [
        Series(
            key,
            [(_mid(w), w.latency_ms[hist][key]) for w in wins if hist in w.latency_ms and key in w.latency_ms[hist]],
        )
        for key in keys
    ]


def charts(rep: LoadReport) -> list[Chart]:
    wins = rep.windows
    dur = [max(w.t1_s - w.t0_s, 1e-9) for w in wins]
    latency = _per_window(wins, "latency", ("p50", "p95", "p99", "max"))
    # The max is often the p99 of a short window: draw it thin and dashed over a wider p99, so both show.
    latency[2].width, latency[3].width, latency[3].dash, latency[3].color = 3.5, 1.5, [4, 3], "#222"
    out = [Chart("Latency percentiles over time (from intended start)", "ms", latency, id="time")]
    # Drawn in this order so each stays visible: finished (wide, pale), achieved, then the target dashed on top.
    rate = [
        Series("finished /s", [(_mid(w), (w.completed + w.errors) / d) for w, d in zip(wins, dur, strict=True)],
               color="#9ecae1", width=5),
        Series("achieved /s", [(_mid(w), w.started / d) for w, d in zip(wins, dur, strict=True)],
               color="#1f77b4", width=2),
    ]  # fmt: skip
    if rep.model == "open":
        rate.append(Series("target /s", [(_mid(w), w.target) for w in wins], color="#d62728", width=2, dash=[8, 5]))
    out.append(Chart("Throughput: target (dashed), achieved and finished", "per second", rate, id="time"))
    out.append(
        Chart(
            "Errors and dropped iterations",
            "per second",
            [
                Series("errors /s", [(_mid(w), w.errors / d) for w, d in zip(wins, dur, strict=True)], "#d62728"),
                Series("dropped /s", [(_mid(w), w.dropped / d) for w, d in zip(wins, dur, strict=True)], "#ff7f0e"),
            ],
            id="time",
        )
    )
    vus = [Series("VUs (max in window)", [(_mid(w), float(w.vus_max)) for w in wins])]
    if rep.model == "closed":
        vus.append(Series("target VUs", [(_mid(w), w.target) for w in wins], color="#d62728", dash=[8, 5]))
    out.append(Chart("Virtual users", "VUs", vus, id="time"))
    if any("ttft" in w.latency_ms for w in wins):
        streamed = _per_window(wins, "ttft", ("p50", "p99"))
        for s in streamed:
            s.label = f"TTFT {s.label}"
        itl = _per_window(wins, "itl", ("p50", "p99"))
        for s, dash in zip(itl, ([6, 3], [6, 3]), strict=True):
            s.label, s.dash = f"inter-token {s.label}", dash
        out.append(Chart("Streaming: time to first token and inter-token latency", "ms", streamed + itl, id="time"))
    lag = [(_mid(w), w.latency_ms["lag"]["p99"]) for w in wins if "lag" in w.latency_ms]
    out.append(
        Chart(
            "The generator itself: start lag p99 and resident memory",
            "ms",
            [
                Series("start lag p99", lag, "#8c564b"),
                Series("RSS", [(t, mb) for t, mb in rep.rss_mb], "#9467bd", scale="y2"),
            ],
            unit2="MB",
            id="time",
            note="Start lag is how late the generator began iterations; over 1 ms, part of the latency is the tool's.",
        )
    )
    dist = []
    for name, label in _HISTS.items():
        data = rep.run.hists.get(name)
        if data:
            dist.append(Series(label, spectrum(LatencyHistogram.from_bytes(data))))
    if dist:
        out.append(
            Chart(
                "Latency distribution of the whole run (percentile spectrum)",
                "ms",
                dist,
                x="percentile",
                log_y=True,
                id="dist",
                note="HDR-style: the percentile axis is logarithmic in 1/(1-q), so 99%, 99.9% and 99.99% are as far "
                "apart as 90% and 99%.",
            )
        )
    return out


def _verdict(rep: LoadReport) -> str:
    if rep.interrupted is not None:
        i = rep.interrupted
        return f'<b class="note">INTERRUPTED</b> <small>({html.escape(i.signal)} after {i.covered_s:.1f} s)</small>'
    if not rep.thresholds:
        return '<b class="muted">no thresholds set</b>'
    return '<b class="pass">PASSED</b>' if rep.passed else '<b class="fail">FAILED</b>'


def render_html(rep: LoadReport) -> str:
    wins = rep.windows
    stage_rows = []
    for s in [*rep.stages, rep.run]:
        lt = s.latency_ms.get("latency", {})
        lag = s.latency_ms.get("lag", {})
        stage_rows.append([
            html.escape(s.name), _v(s.target), _v(s.rate_per_s), f"{s.completed:,}", f"{s.errors:,}",
            f"{s.dropped:,}", str(s.vus_max), _v(lt.get("p50"), ".3f"), _v(lt.get("p95"), ".3f"),
            _v(lt.get("p99"), ".3f"), _v(lt.get("p999"), ".3f"), _v(lt.get("max"), ".3f"), _v(lag.get("p99"), ".3f"),
        ])  # fmt: skip
    th_rows = [
        [html.escape(v.threshold), html.escape(v.scope), html.escape(v.observed_text), html.escape(v.limit_text),
         '<b class="pass">pass</b>' if v.passed else '<b class="fail">FAIL</b>' if v.passed is False else "no data"]
        for v in rep.thresholds
    ]  # fmt: skip
    errors = ", ".join(f"{html.escape(k)}: {n:,}" for k, n in sorted(rep.run.errors_by_kind.items())) or "none"
    lag = rep.generator_lag_ms
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in (rep.generator_note, rep.abort_reason) if n)
    if rep.interrupted is not None:
        i = rep.interrupted
        notes += (
            f'<p class="note">Interrupted by {html.escape(i.signal)} after {i.covered_s:.1f} s'
            + (f" of {i.planned_s:g} s" if i.planned_s else "")
            + ": the figures cover what ran until then.</p>"
        )
    thresholds = (
        table(["threshold", "scope", "observed", "limit", "verdict"], th_rows, "thresholds")
        if th_rows
        else '<p class="muted">No thresholds were set, so this run neither passed nor failed; add --threshold '
        "'p99&lt;250ms' (or thresholds in the scenario) to judge it.</p>"
    )
    stages = table(
        ["", "target", "achieved/s", "done", "errors", "dropped", "VUs", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms",
         "max ms", "lag p99 ms"],
        stage_rows,
        "stages",
    )  # fmt: skip
    body = f"""<p>{html.escape(rep.description)}</p>
<p><b>Profile:</b> {html.escape(rep.profile)}<br><b>Target:</b> {html.escape(rep.target)}<br>
<b>Started:</b> {html.escape(rep.started_at)}, <b>duration</b> {rep.duration_s:.1f} s, <b>workers</b> {rep.workers}
{", <b>aborted early</b>" if rep.aborted else ""}<br>
<b>Generator start lag:</b> p50 {_v(lag.get("p50"), ".3f")} ms, p99 {_v(lag.get("p99"), ".3f")} ms,
max {_v(lag.get("max"), ".3f")} ms<br><b>Errors by kind:</b> {errors}</p>
{notes}
<h2>Thresholds</h2>
{thresholds}
<h2>Stages</h2>
{stages}
<h2>Latency distribution</h2>
<!--charts:dist-->
<h2>Over time</h2>
<!--charts:time-->
<p><small>agentflow {html.escape(rep.versions.get("agentflow", "?"))}, Python
{html.escape(rep.versions.get("python", "?"))}; {len(wins)} windows ({rep.window_merges} merges of old windows
to keep memory flat).</small></p>"""
    return page("agentcli loadtest report", f"agentcli loadtest — {_verdict(rep)}", body, charts(rep))


def write_html(path: Path, rep: LoadReport) -> None:
    path.write_text(render_html(rep), encoding="utf-8")
