"""``agentcli loadtest compare A.json B.json``: is B a regression of A?

The rule is :mod:`agentcli.gate`'s: a figure regresses only when a one-sided Mann-Whitney U test on the runs'
windows says it got worse (p < ``alpha``) and it got worse by more than ``tolerance`` and, for latency, by more
than ``min_delta``. The windows are the replicates: each window's p50, p95 and p99 latency (intended start →
done) and its throughput (finished iterations per second). The values shown are the whole runs' own figures
(from their exact histograms). The error rate is tested on the runs' counts with a two-proportion z-test and
must rise by more than ``tolerance`` of the baseline's rate and 0.1 percentage point.

Latency from the intended start includes the generator's own start lag, and on a busy machine the generator is
what gets late (another process takes the CPU, the iterations start milliseconds after they were due). So a
latency figure that regresses is tested again on the service time (actual start → done, which holds all of the
target's work, its CPU included): when that did not regress, the verdict is "inconclusive" and a note blames
the generator's lag — the machine, not the target. A slower target slows its service time and still fails.
"""

from __future__ import annotations

import dataclasses

from ..gate import Comparison, Gate, judge, judge_errors
from .report import LoadReport, WindowOut

__all__ = ["compare_reports"]

_LATENCY = (("latency p50", "p50"), ("latency p95", "p95"), ("latency p99", "p99"))


def _window_values(rep: LoadReport, key: str, hist: str = "latency") -> list[float]:
    """Each window's ``key`` of ``hist`` in seconds (windows without it left out)."""
    return [w.latency_ms[hist][key] / 1e3 for w in rep.windows if key in w.latency_ms.get(hist, {})]


def _throughput(w: WindowOut) -> float | None:
    d = w.t1_s - w.t0_s
    return (w.completed + w.errors) / d if d > 0 else None


def _run_latency(rep: LoadReport, key: str) -> float | None:
    value = rep.run.latency_ms.get("latency", {}).get(key)
    return value / 1e3 if value is not None else None


def compare_reports(a: LoadReport, b: LoadReport, gate: Gate) -> Comparison:
    out = Comparison([])
    for name, key in _LATENCY:
        fig = judge(
            name, "ms", _window_values(a, key), _window_values(b, key), gate, higher_is_worse=True,
            min_delta=gate.min_delta_s, a_value=_run_latency(a, key), b_value=_run_latency(b, key),
        )  # fmt: skip
        if fig.verdict == "REGRESSED":
            service = judge(
                name, "ms", _window_values(a, key, "service"), _window_values(b, key, "service"), gate,
                higher_is_worse=True, min_delta=gate.min_delta_s,
            )  # fmt: skip
            if service.verdict != "REGRESSED":
                fig = dataclasses.replace(fig, verdict="inconclusive")
                lag = b.generator_lag_ms.get("p99")
                out.notes.append(
                    f"{name}: the candidate's latency from the intended start got worse, but its service time (actual "
                    "start → done) did not: the load generator started iterations late"
                    + (f" (its start lag p99 was {lag:.2f} ms)" if lag is not None else "")
                    + ", so the machine was busy, not the target slower. Rerun both on a quieter machine."
                )
        out.figures.append(fig)
    ta = [t for w in a.windows if (t := _throughput(w)) is not None]
    tb = [t for w in b.windows if (t := _throughput(w)) is not None]
    out.figures.append(
        judge(
            "throughput", "/s", ta, tb, gate, higher_is_worse=False, a_value=a.run.throughput_per_s,
            b_value=b.run.throughput_per_s,
        )
    )  # fmt: skip
    fa, fb = a.run.completed + a.run.errors, b.run.completed + b.run.errors
    out.figures.append(judge_errors(a.run.errors, fa, b.run.errors, fb, gate))
    if a.profile != b.profile:
        out.notes.append(f"The runs had different load profiles ({a.profile!r} vs {b.profile!r}); compare with care.")
    for rep, which in ((a, "baseline"), (b, "candidate")):
        if rep.interrupted is not None:
            out.notes.append(f"The {which} run was interrupted after {rep.interrupted.covered_s:.1f} s.")
    return out
