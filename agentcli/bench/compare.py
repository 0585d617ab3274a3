"""``agentcli benchmark compare A.json B.json``: is B a regression of A?

The rule is :mod:`agentcli.gate`'s, with the rounds as replicates: the agentflow side's throughput, p50 and p99
of each ``--repeat`` round, and each ratio of each round (a ratio regresses when it falls; ``blocked_vs_raw``, a
time ratio, when it rises). With fewer than five rounds a side a figure is inconclusive: run both with
``--repeat 5`` or more. The values shown are the reports' own (the median round). The error rate is tested on
the runs' counts.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from ..gate import Comparison, Gate, judge, judge_errors
from .schema import Report, Run

__all__ = ["compare_reports", "read_report"]

#: Ratios where a larger value is worse (a time ratio).
_LOWER_IS_BETTER = frozenset({"blocked_vs_raw"})


def read_report(path: Path) -> Report:
    """Read a ``--json`` report; ValueError with a sentence if it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}.") from None
    try:
        return msgspec.json.decode(data, type=Report)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path} is not an agentcli benchmark --json report ({exc}).") from None


def _ours(rep: Report) -> list[Run]:
    return [r for r in rep.runs if r.side == "agentflow"]


def _latency(runs: list[Run], key: str) -> list[float]:
    return [getattr(r.latency_ms, key) / 1e3 for r in runs if r.latency_ms is not None]


def compare_reports(a: Report, b: Report, gate: Gate) -> Comparison:
    out = Comparison([])
    ra, rb = _ours(a), _ours(b)
    out.figures.append(
        judge(
            "throughput", "/s", [r.throughput_per_s for r in ra], [r.throughput_per_s for r in rb], gate,
            higher_is_worse=False, a_value=a.throughput_per_s, b_value=b.throughput_per_s,
        )
    )  # fmt: skip
    for key in ("p50", "p99"):
        out.figures.append(
            judge(
                f"latency {key}", "ms", _latency(ra, key), _latency(rb, key), gate, higher_is_worse=True,
                min_delta=gate.min_delta_s,
                a_value=getattr(a.latency_ms, key) / 1e3 if a.latency_ms is not None else None,
                b_value=getattr(b.latency_ms, key) / 1e3 if b.latency_ms is not None else None,
            )
        )  # fmt: skip
    for name in sorted(set(a.ratios) & set(b.ratios)):
        sa = [rr.ratios[name] for rr in a.round_ratios if name in rr.ratios]
        sb = [rr.ratios[name] for rr in b.round_ratios if name in rr.ratios]
        out.figures.append(
            judge(
                f"ratio {name}", "x", sa, sb, gate, higher_is_worse=name in _LOWER_IS_BETTER,
                a_value=a.ratios[name], b_value=b.ratios[name],
            )
        )  # fmt: skip
    errors_a, errors_b = sum(r.errors for r in ra), sum(r.errors for r in rb)
    total_a, total_b = sum(r.completed + r.errors for r in ra), sum(r.completed + r.errors for r in rb)
    out.figures.append(judge_errors(errors_a, total_a, errors_b, total_b, gate))
    if (a.scenario, a.mode, a.bus) != (b.scenario, b.mode, b.bus):
        out.notes.append(
            f"The runs measured different things ({a.scenario}/{a.mode}/{a.bus} vs {b.scenario}/{b.mode}/{b.bus}); "
            "compare with care."
        )
    if a.phases or b.phases:
        out.notes.append("Only the first phase is compared (the noop figures of a bare `agentcli benchmark`).")
    for rep, which in ((a, "baseline"), (b, "candidate")):
        if rep.interrupted is not None:
            out.notes.append(f"The {which} run was interrupted after {rep.interrupted.covered_s:.1f} s.")
    return out
