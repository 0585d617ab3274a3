"""The HTML reports' page: one self-contained file that opens offline, with interactive charts.

The charts are drawn by uPlot (MIT, vendored from the npm registry in ``agentcli/vendor/uplot``: ~50 KB, no
dependencies, canvas-based so thousands of points stay fast), inlined into the page with its license notice.
Every chart has a tooltip that follows the cursor and zooms on a drag (double-click resets). A chart is a
:class:`Chart`: series of (x, y) points, each with its own colour, width and dash, so lines that overlap stay
visible. The tables are plain HTML and read without JavaScript.

:func:`spectrum` turns an HDR histogram into the points of a percentile spectrum (latency by percentile, the
percentile axis on a log scale of 1 / (1 - q), as HdrHistogram plots it), so the tail is as visible as the median.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import msgspec

from agentflow import LatencyHistogram

__all__ = ["COLORS", "Chart", "Series", "page", "spectrum", "table"]

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
#: The percentiles of a spectrum: 0 .. 99.9999, dense where the tail is.
_SPECTRUM_Q = sorted({*range(0, 90, 5), *(90 + i * 0.5 for i in range(18)), 99.0, 99.5, 99.9, 99.95, 99.99, 99.999})


@dataclass(slots=True)
class Series:
    """One line: its label, points, and how it is drawn (``dash`` like ``[6, 4]``; ``scale`` "y" or "y2")."""

    label: str
    points: list[tuple[float, float]]
    color: str = ""
    width: float = 1.8
    dash: list[int] | None = None
    scale: str = "y"


@dataclass(slots=True)
class Chart:
    """A line chart; ``x`` is "time" (seconds since the start), "percentile" (a spectrum) or "round"."""

    title: str
    unit: str
    series: list[Series]
    x: str = "time"
    unit2: str | None = None
    log_y: bool = False
    id: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def spec(self) -> dict[str, Any]:
        xs = sorted({x for s in self.series for x, _ in s.points})
        index = {x: i for i, x in enumerate(xs)}
        columns: list[list[float | None]] = [list(xs)]
        for s in self.series:
            col: list[float | None] = [None] * len(xs)
            for x, y in s.points:
                col[index[x]] = y if math.isfinite(y) else None
            columns.append(col)
        return {
            "title": self.title, "unit": self.unit, "unit2": self.unit2, "x": self.x, "logY": self.log_y,
            "data": columns,
            "series": [
                {"label": s.label, "color": s.color or COLORS[i % len(COLORS)], "width": s.width, "dash": s.dash,
                 "scale": s.scale}
                for i, s in enumerate(self.series)
            ],
        }  # fmt: skip


def spectrum(hist: LatencyHistogram, scale: float = 1e3) -> list[tuple[float, float]]:
    """The percentile spectrum of ``hist`` as (1 / (1 - q/100), value * ``scale``) points, up to the largest
    percentile its count resolves (and the maximum, at the next step)."""
    if not hist.count:
        return []
    top = 100.0 * (1.0 - 1.0 / hist.count)
    qs = [q for q in _SPECTRUM_Q if q <= top]
    values = hist.percentiles(qs)
    points = [(1.0 / (1.0 - q / 100.0), values[q] * scale) for q in qs]
    last_x = points[-1][0] if points else 1.0
    points.append((last_x * 2 if hist.count > 1 else 2.0, hist.max_s * scale))
    return points


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; ``rows`` hold HTML already escaped by the caller."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


@cache
def _vendored(name: str) -> str:
    return (files("agentcli") / "vendor" / "uplot" / name).read_text(encoding="utf-8")


def _license_comment() -> str:
    text = _vendored("LICENSE").replace("*/", "* /")
    return "/*! uPlot 1.6.32, vendored from the npm registry (package uplot), under this license:\n" + text + "*/"


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1100px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 16px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
figcaption small { font-weight: normal; color: #666; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .note { color: #9a6700; } .muted { color: #666; }
.plot { position: relative; min-height: 60px; }
.tip { position: absolute; pointer-events: none; background: rgba(255,255,255,.95); border: 1px solid #bbb;
       padding: 4px 6px; font: 12px/1.3 system-ui, sans-serif; white-space: nowrap; z-index: 10; display: none; }
.tip b { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
#chart-errors { color: #cf222e; white-space: pre-wrap; }
"""

# Our own script: builds one uPlot per chart spec, with a cursor tooltip, drag-to-zoom and a log percentile axis.
_JS = r"""
(function () {
  var specs = JSON.parse(document.getElementById("chart-data").textContent);
  var done = 0, errors = [];
  function fmt(v) {
    if (v == null || !isFinite(v)) return "-";
    var a = Math.abs(v);
    return a >= 100 ? v.toLocaleString(undefined, {maximumFractionDigits: 0})
         : a >= 1 ? v.toFixed(2) : a >= 0.01 ? v.toFixed(3) : v.toPrecision(3);
  }
  function tick(v) { return v == null ? "" : fmt(v); }
  function pct(x) { var q = 100 * (1 - 1 / x); return (Math.round(q * 10000) / 10000) + "%"; }
  function xlabel(spec, x) {
    if (spec.x === "percentile") return pct(x);
    if (spec.x === "round") return "round " + x;
    return x.toFixed(1) + " s";
  }
  function tooltip(spec) {
    var tip;
    return {hooks: {
      init: function (u) { tip = document.createElement("div"); tip.className = "tip"; u.over.appendChild(tip); },
      setCursor: function (u) {
        var i = u.cursor.idx;
        if (i == null) { tip.style.display = "none"; return; }
        var html = "<div>" + xlabel(spec, u.data[0][i]) + "</div>";
        for (var s = 1; s < u.series.length; s++) {
          if (!u.series[s].show) continue;
          var unit = spec.series[s - 1].scale === "y2" ? spec.unit2 : spec.unit;
          html += "<div><b style='background:" + spec.series[s - 1].color + "'></b>" + u.series[s].label +
                  ": " + fmt(u.data[s][i]) + " " + (unit || "") + "</div>";
        }
        tip.innerHTML = html;
        tip.style.display = "block";
        var left = u.cursor.left + 12, top = u.cursor.top + 12;
        if (left + tip.offsetWidth > u.over.clientWidth) left = u.cursor.left - tip.offsetWidth - 12;
        tip.style.left = left + "px"; tip.style.top = top + "px";
      }
    }};
  }
  specs.forEach(function (spec, n) {
    var el = document.getElementById("chart-" + n);
    try {
      var series = [{label: spec.x}];
      spec.series.forEach(function (s) {
        series.push({label: s.label, stroke: s.color, width: s.width, dash: s.dash || undefined,
                     scale: s.scale, spanGaps: true, points: {show: spec.data[0].length < 40}});
      });
      var scales = {x: {time: false}, y: {distr: spec.logY ? 3 : 1}};
      if (spec.x === "percentile") scales.x = {time: false, distr: 3};
      if (!spec.logY) scales.y.range = function (u, lo, hi) { return [0, hi > 0 ? hi * 1.08 : 1]; };
      var xaxis = {label: spec.x === "percentile" ? "percentile" : spec.x === "round" ? "round" : "seconds",
                   values: function (u, vals) {
                     return vals.map(function (v) {
                       return v == null ? "" : spec.x === "percentile" ? pct(v) : +v.toFixed(2);
                     });
                   }};
      if (spec.x === "percentile") {
        // One tick per nine: 0%, 90%, 99%, 99.9% ..., where 1/(1-q) is 1, 10, 100, 1000 ...
        xaxis.splits = function (u) {
          var out = [], lo = u.scales.x.min, hi = u.scales.x.max;
          [1, 10, 100, 1e3, 1e4, 1e5, 1e6].forEach(function (v) { if (v >= lo && v <= hi) out.push(v); });
          return out;
        };
      }
      if (spec.x === "round") xaxis.splits = function (u) { return u.data[0]; };
      var axes = [
        xaxis,
        {label: spec.unit, values: function (u, vals) { return vals.map(tick); }, size: 60}
      ];
      if (spec.unit2) {
        scales.y2 = {range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.08 : 1]; }};
        axes.push({scale: "y2", side: 1, label: spec.unit2, grid: {show: false},
                   values: function (u, vals) { return vals.map(tick); }, size: 60});
      }
      new uPlot({width: Math.min(1060, document.body.clientWidth || 1000), height: 280, series: series,
                 scales: scales, axes: axes, cursor: {drag: {x: true, y: false}}, plugins: [tooltip(spec)],
                 legend: {live: false}}, spec.data, el);
      done += 1;
    } catch (e) { errors.push(spec.title + ": " + e); }
  });
  document.body.setAttribute("data-charts", done + "/" + specs.length);
  if (errors.length) document.getElementById("chart-errors").textContent = errors.join("\n");
})();
"""


def page(title: str, heading: str, body: str, charts: list[Chart]) -> str:
    """The whole page: ``heading`` and ``body`` are HTML (escaped by the caller); each chart becomes a figure
    after the body's ``<!--charts:ID-->`` marker of its ``id`` or, without one, at the end."""
    figures: dict[str, list[str]] = {}
    for n, c in enumerate(charts):
        caption = f"{html.escape(c.title)} <small>({html.escape(c.unit)}"
        caption += f"; right axis: {html.escape(c.unit2)})" if c.unit2 else ")"
        caption += "; drag to zoom, double-click to reset</small>"
        note = f'<p class="muted">{html.escape(c.note)}</p>' if c.note else ""
        figures.setdefault(c.id, []).append(
            f'<figure><figcaption>{caption}</figcaption><div class="plot" id="chart-{n}" '
            f'data-title="{html.escape(c.title)}"></div>{note}</figure>'
        )
    for key, figs in figures.items():
        marker = f"<!--charts:{key}-->"
        if key and marker in body:
            body = body.replace(marker, "\n".join(figs))
        else:
            body += "\n".join(figs)
    data = msgspec.json.encode([c.spec() for c in charts]).decode().replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_vendored("uPlot.min.css")}
{_CSS}</style></head><body>
<h1>{heading}</h1>
{body}
<pre id="chart-errors"></pre>
<script type="application/json" id="chart-data">{data}</script>
<script>{_license_comment()}
{_vendored("uPlot.iife.min.js")}</script>
<script>{_JS}</script>
</body></html>
"""
