"""``agentcli profile-report --html PATH``: the profile report as one self-contained page (inline CSS and SVG, no
script, no network), so it opens offline and can be mailed or attached to a ticket.

Two bar charts (share of handler time, share of cost), the table of every row with its flags, the flags with
their figures, the recommendations, and the totals.
"""

from __future__ import annotations

import datetime
import html
from pathlib import Path

from agentflow import ProfileReport

from .table import COLUMNS, table_rows

__all__ = ["render_html", "write_html"]

_BAR_W, _ROW_H, _LABEL_W = 520, 22, 240
_FLAG_COLORS = {"BOTTLENECK": "#d62728", "SLOW": "#ff7f0e", "COSTLY": "#9467bd"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:26px 0 8px} .meta{color:#666}
table{border-collapse:collapse;font-size:13px} th,td{padding:4px 8px;border-bottom:1px solid #e3e3e3;white-space:nowrap}
th{text-align:left;background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
.flag{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px;margin-right:4px}
.flagged td{background:#fff6f3} li{margin:4px 0} code{background:#f3f3f3;padding:0 3px;border-radius:3px}
.charts{display:flex;gap:40px;flex-wrap:wrap} figure{margin:0} figcaption{font-weight:600;margin-bottom:6px}
"""


def _flag(name: str) -> str:
    color = _FLAG_COLORS.get(name, "#555")
    return f'<span class="flag" style="background:{color}">{html.escape(name)}</span>'


def _bars(title: str, items: list[tuple[str, float, str]]) -> str:
    """A horizontal bar chart of shares (0..1): one bar per (label, share, text)."""
    height = max(1, len(items)) * _ROW_H + 8
    width = _LABEL_W + _BAR_W + 90
    out = [f"<figure><figcaption>{html.escape(title)}</figcaption>",
           f'<svg class="bars" data-title="{html.escape(title)}" width="{width}" height="{height}">']  # fmt: skip
    for i, (label, share, text) in enumerate(items):
        y = 4 + i * _ROW_H
        w = max(1.0, _BAR_W * min(1.0, share))
        out.append(f'<text x="{_LABEL_W - 8}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{_LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{_ROW_H - 8}" fill="#1f77b4"/>')
        out.append(f'<text x="{_LABEL_W + w + 6:.1f}" y="{y + 15}">{html.escape(text)}</text>')
    if not items:
        out.append(f'<text x="{_LABEL_W}" y="18" fill="#888">nothing to show</text>')
    out.append("</svg></figure>")
    return "\n".join(out)


def _backticks(text: str) -> str:
    """Escape ``text`` and show `quoted` settings as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(report: ProfileReport) -> str:
    when = datetime.datetime.fromtimestamp(report.taken_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    timed = [r for r in report.rows if r.share_of_time and r.kind in ("agent", "tool", "mcp", "state", "step")]
    time_bars = [(f"{r.kind} {r.name}", r.share_of_time or 0.0, f"{100 * (r.share_of_time or 0):.0f}%  "
                  f"{r.busy_s:,.1f} s") for r in sorted(timed, key=lambda r: -r.busy_s)]  # fmt: skip
    paid = [r for r in report.rows if r.cost_usd > 0 and r.share_of_cost is not None]
    cost_bars = [(f"{r.kind} {r.name}", r.share_of_cost or 0.0, f"{100 * (r.share_of_cost or 0):.0f}%  "
                  f"${r.cost_usd:,.4f}") for r in sorted(paid, key=lambda r: -r.cost_usd)]  # fmt: skip
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for r, cells in zip(report.rows, table_rows(report), strict=True):
        tds = [f"<td>{html.escape(c)}</td>" if i in (0, 1) else f'<td class="num">{html.escape(c)}</td>'
               for i, c in enumerate(cells[:-1])]  # fmt: skip
        tds.append("<td>" + ("".join(_flag(f.flag) for f in r.flags) or "-") + "</td>")
        body.append(f'<tr class="{"flagged" if r.flags else ""}">{"".join(tds)}</tr>')
    flags = [f"<li>{_flag(f.flag)} {html.escape(r.kind)} <b>{html.escape(r.name)}</b>: {html.escape(f.figure)}</li>"
             for r in report.rows for f in r.flags]  # fmt: skip
    recs = [f"<li>{_backticks(rec.text)}</li>" for rec in report.recommendations]
    t = report.totals
    totals = [
        f"<li>{t.events:,} events, {t.busy_s:,.1f} s of handler time</li>",
        f"<li>{t.prompt_tokens:,} prompt + {t.completion_tokens:,} completion tokens, ${t.cost_usd:,.4f}</li>",
    ]
    if t.slowest is not None and t.slowest_p95_ms is not None:
        totals.append(f"<li>slowest agent <b>{html.escape(t.slowest)}</b>, p95 {t.slowest_p95_ms:,.1f} ms</li>")
    if t.most_expensive is not None and t.most_expensive_usd is not None:
        totals.append(f"<li>most expensive agent <b>{html.escape(t.most_expensive)}</b>, "
                      f"${t.most_expensive_usd:,.4f}</li>")  # fmt: skip
    if t.loop_lag_p99_ms is not None:
        totals.append(f"<li>event-loop lag p99 {t.loop_lag_p99_ms:,.1f} ms</li>")
    for w in report.workflows:
        slow, dear = html.escape(w.slowest_step or "-"), html.escape(w.most_expensive_step or "-")
        totals.append(f"<li>workflow <b>{html.escape(w.workflow)}</b>: {w.steps} steps, slowest {slow}, "
                      f"most expensive {dear}</li>")  # fmt: skip
    notes = "".join(f"<p class=meta>{html.escape(n)}</p>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>agentflow profile — {html.escape(report.source)}</title>
<style>{_CSS}</style></head><body>
<h1>agentflow profile report</h1>
<p class="meta">{html.escape(report.source)} · {report.window_s:,.1f} s · taken {when}</p>
<div class="charts">{_bars("Share of handler time", time_bars)}{_bars("Share of cost", cost_bars)}</div>
<h2>Rows</h2>
<table class="rows"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>
<h2>Flags</h2><ul class="flags">{"".join(flags) or "<li>none</li>"}</ul>
<h2>Recommendations</h2><ol class="recommendations">{"".join(recs) or "<li>none</li>"}</ol>
<h2>Totals</h2><ul>{"".join(totals)}</ul>
{notes}
</body></html>
"""


def write_html(path: Path, report: ProfileReport) -> None:
    path.write_text(render_html(report), encoding="utf-8")
