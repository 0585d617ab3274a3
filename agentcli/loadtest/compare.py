"""``agentcli loadtest compare A.json B.json``: is B a regression of A?

Latency: a two-sample Kolmogorov-Smirnov test on the two runs' whole latency histograms (the CDFs are exact
at bucket edges, since both use the same layout), plus the relative change of p50, p99 and p99.9. Throughput:
Welch's t-test on the per-window throughput of each run, plus the relative change of the run's mean.
A figure regresses only when its change is statistically significant (p < ``alpha``) **and** worse than
``tolerance``: with hundreds of thousands of samples the test alone flags differences nobody cares about, and
a large change in a short, noisy run should not pass as a regression on one lucky draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from agentflow import LatencyHistogram

from .report import LoadReport

__all__ = ["Comparison", "compare_reports", "ks_test", "render_comparison", "welch_test"]


@dataclass(frozen=True, slots=True)
class Row:
    figure: str
    baseline: float | None
    candidate: float | None
    change: float | None
    p_value: float | None
    regressed: bool


@dataclass(frozen=True, slots=True)
class Comparison:
    rows: list[Row]
    ks_statistic: float | None
    regressed: bool
    notes: list[str]


def _kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution."""
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-12:
            break
    return min(max(total, 0.0), 1.0)


def ks_test(a: LatencyHistogram, b: LatencyHistogram) -> tuple[float, float]:
    """(D, p-value) of the two-sample KS test between two histograms' distributions (asymptotic p)."""
    if not a.count or not b.count:
        return 0.0, 1.0
    edges: dict[float, list[int]] = {}
    for which, h in ((0, a), (1, b)):
        for _low, high, count in h.buckets():
            edges.setdefault(high, [0, 0])[which] += count
    ca = cb = 0
    d = 0.0
    for high in sorted(edges):
        na, nb = edges[high]
        ca += na
        cb += nb
        d = max(d, abs(ca / a.count - cb / b.count))
    en = math.sqrt(a.count * b.count / (a.count + b.count))
    return d, _kolmogorov_q((en + 0.12 + 0.11 / en) * d)


def welch_test(xs: list[float], ys: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test (normal approximation of t, fine for 10+ windows each); None if n<3."""
    if len(xs) < 3 or len(ys) < 3:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    vx = sum((x - mx) ** 2 for x in xs) / (len(xs) - 1)
    vy = sum((y - my) ** 2 for y in ys) / (len(ys) - 1)
    se = math.sqrt(vx / len(xs) + vy / len(ys))
    if se == 0:
        return 0.0 if mx != my else 1.0
    t = abs(mx - my) / se
    return math.erfc(t / math.sqrt(2.0))


def _hist(rep: LoadReport) -> LatencyHistogram | None:
    data = rep.run.hists.get("latency")
    return LatencyHistogram.from_bytes(data) if data else None


def _change(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0:
        return None
    return b / a - 1.0


def compare_reports(a: LoadReport, b: LoadReport, *, tolerance: float, alpha: float) -> Comparison:
    notes: list[str] = []
    rows: list[Row] = []
    ha, hb = _hist(a), _hist(b)
    d: float | None = None
    if ha is not None and hb is not None and ha.count and hb.count:
        d, p = ks_test(ha, hb)
        pa, pb = ha.percentiles((50.0, 99.0, 99.9)), hb.percentiles((50.0, 99.0, 99.9))
        for name, q in (("latency p50 ms", 50.0), ("latency p99 ms", 99.0), ("latency p99.9 ms", 99.9)):
            change = _change(pa[q], pb[q])
            bad = p < alpha and change is not None and change > tolerance
            rows.append(Row(name, pa[q] * 1e3, pb[q] * 1e3, change, p, bad))
    else:
        notes.append("One of the runs has no latency histogram; latency was not compared.")
    ta = [w.completed / (w.t1_s - w.t0_s) for w in a.windows if w.t1_s > w.t0_s]
    tb = [w.completed / (w.t1_s - w.t0_s) for w in b.windows if w.t1_s > w.t0_s]
    p_tp = welch_test(ta, tb)
    change = _change(a.run.throughput_per_s, b.run.throughput_per_s)
    bad = p_tp is not None and p_tp < alpha and change is not None and change < -tolerance
    rows.append(Row("throughput /s", a.run.throughput_per_s, b.run.throughput_per_s, change, p_tp, bad))
    ea, eb = a.run.error_rate or 0.0, b.run.error_rate or 0.0
    rows.append(Row("error rate", ea, eb, eb - ea, None, eb - ea > max(tolerance * ea, 0.001)))
    if a.profile != b.profile:
        notes.append(f"The runs had different load profiles ({a.profile!r} vs {b.profile!r}); compare with care.")
    return Comparison(rows, d, any(r.regressed for r in rows), notes)


def render_comparison(console: Console, c: Comparison) -> None:
    t = Table(title="baseline → candidate", title_justify="left")
    for col in ("figure", "baseline", "candidate", "change", "p-value", "verdict"):
        t.add_column(col, justify="left" if col == "figure" else "right")
    for r in c.rows:
        change = "-" if r.change is None else (f"{r.change:+.1%}" if r.figure != "error rate" else f"{r.change:+.4f}")
        t.add_row(
            r.figure, "-" if r.baseline is None else f"{r.baseline:,.3f}",
            "-" if r.candidate is None else f"{r.candidate:,.3f}", change,
            "-" if r.p_value is None else f"{r.p_value:.3g}", "[red]REGRESSED[/]" if r.regressed else "ok",
        )  # fmt: skip
    console.print(t)
    if c.ks_statistic is not None:
        console.print(f"KS statistic D = {c.ks_statistic:.4f} on the whole latency distributions", highlight=False)
    for note in c.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print("[red]regression beyond tolerance[/]" if c.regressed else "[green]no regression beyond tolerance[/]")
