"""``--report PATH.html``: one self-contained file (inline CSS and SVG, no script, no network) that opens offline.

Plots, one point per window: latency percentiles over time, target vs achieved rate, errors and dropped
iterations, VUs; then the stages table and the thresholds table with verdicts.
"""

from __future__ import annotations

import html
from pathlib import Path

from .report import LoadReport

__all__ = ["render_html", "write_html"]

_W, _H, _PAD_L, _PAD_B, _PAD_T, _PAD_R = 920, 250, 64, 34, 14, 16
_COLORS = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    mag = 10 ** len(str(int(v))) / 10 if v >= 1 else 1.0
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * mag:
            return step * mag
    return v


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def chart(title: str, unit: str, series: list[tuple[str, list[tuple[float, float]]]], x_max: float) -> str:
    """An SVG line chart; x is seconds since the start, y starts at 0."""
    ys = [y for _, pts in series for _, y in pts]
    y_max = _nice_max(max(ys, default=0.0) * 1.05)
    x_max = x_max if x_max > 0 else 1.0
    pw, ph = _W - _PAD_L - _PAD_R, _H - _PAD_T - _PAD_B

    def sx(x: float) -> float:
        return _PAD_L + pw * x / x_max

    def sy(y: float) -> float:
        return _PAD_T + ph * (1 - y / y_max)

    out = [f'<figure><figcaption>{html.escape(title)} ({html.escape(unit)})</figcaption>',
           f'<svg class="plot" data-title="{html.escape(title)}" '
           f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">',
           f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']  # fmt: skip
    for i in range(5):
        y = y_max * i / 4
        out.append(f'<line x1="{_PAD_L}" x2="{_PAD_L + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{_PAD_L - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
    for i in range(6):
        x = x_max * i / 5
        out.append(f'<text x="{sx(x):.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">{x:.0f}s</text>')
    for n, (name, pts) in enumerate(series):
        color = _COLORS[n % len(_COLORS)]
        if pts:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{path}"/>')
        out.append(f'<rect x="{_PAD_L + 10 + n * 120}" y="{_PAD_T + 6}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{_PAD_L + 24 + n * 120}" y="{_PAD_T + 15}">{html.escape(name)}</text>')
    out.append("</svg></figure>")
    return "\n".join(out)


def _table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _v(v: float | None, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def render_html(rep: LoadReport) -> str:
    wins = rep.windows
    x_max = max((w.t1_s for w in wins), default=rep.duration_s)

    def mid(w: object) -> float:
        return (w.t0_s + w.t1_s) / 2  # type: ignore[attr-defined, no-any-return]

    lat = [
        (name, [(mid(w), w.latency_ms["latency"][key]) for w in wins if "latency" in w.latency_ms])
        for name, key in (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("max", "max"))
    ]
    dur = [max(w.t1_s - w.t0_s, 1e-9) for w in wins]
    target_name = "target /s" if rep.model == "open" else "target VUs"
    rate = [
        ("achieved /s", [(mid(w), w.started / d) for w, d in zip(wins, dur, strict=True)]),
        ("finished /s", [(mid(w), (w.completed + w.errors) / d) for w, d in zip(wins, dur, strict=True)]),
    ]
    if rep.model == "open":
        rate.insert(0, (target_name, [(mid(w), w.target) for w in wins]))
    errs = [
        ("errors /s", [(mid(w), w.errors / d) for w, d in zip(wins, dur, strict=True)]),
        ("dropped /s", [(mid(w), w.dropped / d) for w, d in zip(wins, dur, strict=True)]),
    ]
    vus = [("VUs (max in window)", [(mid(w), float(w.vus_max)) for w in wins])]
    if rep.model == "closed":
        vus.append((target_name, [(mid(w), w.target) for w in wins]))
    charts = [
        chart("Latency percentiles over time (from intended start)", "ms", lat, x_max),
        chart("Throughput: target vs achieved", "per second", rate, x_max),
        chart("Errors and dropped iterations", "per second", errs, x_max),
        chart("Virtual users", "VUs", vus, x_max),
    ]
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
    verdict = '<b class="pass">PASSED</b>' if rep.passed else '<b class="fail">FAILED</b>'
    errors = ", ".join(f"{html.escape(k)}: {n:,}" for k, n in sorted(rep.run.errors_by_kind.items())) or "none"
    lag = rep.generator_lag_ms
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in (rep.generator_note, rep.abort_reason) if n)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>agentcli loadtest report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 28px; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 12px 0; }} figcaption {{ font-weight: 600; }}
svg text {{ font: 11px sans-serif; fill: #444; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #cf222e; }} .note {{ color: #9a6700; }}
</style></head><body>
<h1>agentcli loadtest — {verdict}</h1>
<p>{html.escape(rep.description)}</p>
<p><b>Profile:</b> {html.escape(rep.profile)}<br><b>Target:</b> {html.escape(rep.target)}<br>
<b>Started:</b> {html.escape(rep.started_at)}, <b>duration</b> {rep.duration_s:.1f} s, <b>workers</b> {rep.workers}
{", <b>aborted early</b>" if rep.aborted else ""}<br>
<b>Generator start lag:</b> p50 {_v(lag.get("p50"), ".3f")} ms, p99 {_v(lag.get("p99"), ".3f")} ms,
max {_v(lag.get("max"), ".3f")} ms<br><b>Errors by kind:</b> {errors}</p>
{notes}
<h2>Thresholds</h2>
{_table(["threshold", "scope", "observed", "limit", "verdict"], th_rows, "thresholds") if th_rows else "<p>none</p>"}
<h2>Stages</h2>
{
        _table(
            [
                "",
                "target",
                "achieved/s",
                "done",
                "errors",
                "dropped",
                "VUs",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "lag p99 ms",
            ],
            stage_rows,
            "stages",
        )
    }
<h2>Over time</h2>
{"".join(charts)}
<p><small>agentflow {html.escape(rep.versions.get("agentflow", "?"))}, Python
{html.escape(rep.versions.get("python", "?"))}; {len(wins)} windows ({rep.window_merges} merges of old windows
to keep memory flat).</small></p>
</body></html>
"""


def write_html(path: Path, rep: LoadReport) -> None:
    path.write_text(render_html(rep), encoding="utf-8")
