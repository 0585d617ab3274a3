"""The profile report as plain text: a table sized to its content (never cut to the terminal's width, so it
reads the same in a pipe or a file), then the flags, the recommendations and the totals."""

from __future__ import annotations

import datetime

from agentflow import ProfileReport

__all__ = ["COLUMNS", "render_text", "table_rows"]


def _n(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _cost(v: float) -> str:
    return "-" if not v else f"{v:,.4f}"


COLUMNS = ("kind", "name", "calls", "p50 ms", "p95 ms", "p99 ms", "wait p95 ms", "busy slots", "util", "time",
           "tokens", "cost $", "cost", "errors", "timeouts", "retries", "cache hits", "breaker opens",
           "limiter waits", "flags")  # fmt: skip


def table_rows(report: ProfileReport) -> list[list[str]]:
    """One list of cells per row, in :data:`COLUMNS` order (the HTML page shows the same cells)."""
    out = []
    for r in report.rows:
        name = r.name if r.workflow is None else f"{r.workflow}/{r.name}"
        busy = (
            "-"
            if r.busy_slots is None
            else f"{r.busy_slots:.1f}/{r.concurrency}"
            if r.concurrency
            else f"{r.busy_slots:.1f}"
        )
        out.append([
            r.kind, name, f"{r.calls:,}", _n(r.p50_ms, ",.1f"), _n(r.p95_ms, ",.1f"), _n(r.p99_ms, ",.1f"),
            _n(r.queue_wait_p95_ms, ",.1f"), busy, _pct(r.utilisation), _pct(r.share_of_time),
            f"{r.prompt_tokens + r.completion_tokens:,}" if r.prompt_tokens + r.completion_tokens else "-",
            _cost(r.cost_usd), _pct(r.share_of_cost), _pct(r.error_rate), _pct(r.timeout_rate),
            _pct(r.retry_rate), _pct(r.cache_hit_rate), str(r.breaker_opens) if r.breaker_opens else "-",
            _pct(r.limiter_wait_share), " ".join(f.flag for f in r.flags) or "-",
        ])  # fmt: skip
    return out


def _grid(header: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)] if rows else []
    left = {0, 1, len(header) - 1}

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render_text(report: ProfileReport) -> str:
    """The report as plain text: header, the table, flags, recommendations, totals, workflows and notes."""
    when = datetime.datetime.fromtimestamp(report.taken_at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = [f"Profile of {report.source}: {report.window_s:,.1f} s, taken {when}", ""]
    rows = table_rows(report)
    out += _grid(COLUMNS, rows) if rows else ["(no agents, providers, tools or steps ran)"]
    flagged = [(r, f) for r in report.rows for f in r.flags]
    out += ["", "Flags" + ("" if flagged else ": none")]
    out += [f"  {f.flag:<10}  {r.kind} {r.name}: {f.figure}" for r, f in flagged]
    out += ["", "Recommendations" + ("" if report.recommendations else ": none")]
    out += [f"  {i}. {rec.text}" for i, rec in enumerate(report.recommendations, 1)]
    t = report.totals
    totals = (
        f"{t.events:,} events, {t.busy_s:,.1f} s of handler time, {t.prompt_tokens + t.completion_tokens:,} tokens, "
        f"${t.cost_usd:,.4f}"
    )
    if t.slowest is not None and t.slowest_p95_ms is not None:
        totals += f"; slowest agent {t.slowest} (p95 {t.slowest_p95_ms:,.1f} ms)"
    if t.most_expensive is not None and t.most_expensive_usd is not None:
        totals += f"; most expensive agent {t.most_expensive} (${t.most_expensive_usd:,.4f})"
    if t.loop_lag_p99_ms is not None:
        totals += f"; event-loop lag p99 {t.loop_lag_p99_ms:,.1f} ms"
    out += ["", f"Totals: {totals}"]
    for w in report.workflows:
        line = f"Workflow {w.workflow}: {w.steps} steps, {w.calls:,} calls, {w.busy_s:,.1f} s, ${w.cost_usd:,.4f}"
        if w.slowest_step is not None and w.slowest_p95_ms is not None:
            line += f"; slowest step {w.slowest_step} (p95 {w.slowest_p95_ms:,.1f} ms)"
        if w.most_expensive_step is not None and w.most_expensive_usd is not None:
            line += f"; most expensive step {w.most_expensive_step} (${w.most_expensive_usd:,.4f})"
        out.append(line)
    out += [f"Note: {n}" for n in report.notes]
    return "\n".join(out)
