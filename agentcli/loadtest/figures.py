"""What a run measures, in bounded memory: live windows, closed window records, stage and run accumulators.

Every figure comes from HDR histograms (:class:`agentflow.LatencyHistogram`) and counters; no sample is
stored. The generator records into one live :class:`Window`; when the window closes (every ``window_s`` and at
every stage boundary, so a stage is an exact union of windows) it becomes a :class:`WindowRecord` holding
compact histogram bytes, and is merged into its stage's :class:`Accumulator`. :class:`WindowList` keeps at
most ``max_windows`` records by merging the oldest adjacent pair of the finest span, one pair per new window,
so a 10-hour soak holds the same number of records as a 4-minute run (older ones cover more time).
Records from several worker processes with the same index merge exactly (:func:`merge_records`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from agentflow import LatencyHistogram

from ..thresholds import LATENCY, NUMBER, Figures

__all__ = [
    "HIST_NAMES",
    "MAX_ERROR_KINDS",
    "MAX_WINDOWS",
    "THRESHOLD_FIGURES",
    "Accumulator",
    "Window",
    "WindowList",
    "WindowRecord",
    "merge_records",
]

#: latency: intended start → finished; service: actual start → finished; lag: intended → actual start (the
#: generator's own delay); ttft / itl: streaming time to first token and between tokens.
HIST_NAMES = ("latency", "service", "lag", "ttft", "itl")
MAX_WINDOWS = 240
#: Distinct error kinds kept per window; the rest count as "other" so labels stay bounded.
MAX_ERROR_KINDS = 20
_QUANTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}
_LATENCY_STATS = ("p50", "p90", "p95", "p99", "p999", "max", "mean", "min")
#: Latency figures take no prefix (intended start → finished), lag_ (the generator's own start lag), service_
#: (actual start → finished), ttft_ / itl_ (streaming time to first token, inter-token latency).
_LATENCY_PREFIXES = ("", "lag_", "service_", "ttft_", "itl_")
_COUNTS = {
    "error_rate": "errors / finished iterations (0..1; 1% also works)",
    "errors": "failed iterations",
    "dropped": "iterations not started because --max-vus were busy",
    "dropped_rate": "dropped / scheduled iterations (0..1)",
    "rate": "iterations started per second; may use N*target",
    "throughput": "iterations finished per second; may use N*target",
    "vus": "most virtual users active at once",
}
#: What `agentcli loadtest --threshold` may name (agentcli.thresholds holds the grammar).
THRESHOLD_FIGURES = Figures(
    kinds={
        **{f"{p}{s}": LATENCY for p in _LATENCY_PREFIXES for s in _LATENCY_STATS},
        **dict.fromkeys(_COUNTS, NUMBER),
    },
    known=", ".join(["p50..p999/max/mean/min (prefix lag_, service_, ttft_, itl_)", *_COUNTS]),
    of_target=frozenset({"rate", "throughput"}),
)


class WindowRecord(msgspec.Struct, kw_only=True):
    """A closed window (or a merge of several): counters and histogram bytes, times relative to the run start."""

    index: int
    stage: int
    t0_s: float
    t1_s: float
    #: mean target over the window: arrivals/s (open model) or VUs (closed model)
    target: float
    scheduled: int = 0
    started: int = 0
    completed: int = 0
    errors: int = 0
    dropped: int = 0
    vus_max: int = 0
    errors_by_kind: dict[str, int] = msgspec.field(default_factory=dict)
    hists: dict[str, bytes] = msgspec.field(default_factory=dict)
    #: how many base windows this record covers
    span: int = 1


def _add_errors(into: dict[str, int], more: dict[str, int]) -> None:
    for kind, n in more.items():
        if kind not in into and len(into) >= MAX_ERROR_KINDS:
            kind = "other"
        into[kind] = into.get(kind, 0) + n


def _merge_hist_bytes(a: bytes | None, b: bytes | None) -> bytes | None:
    if a is None or b is None:
        return a if b is None else b
    h = LatencyHistogram.from_bytes(a)
    h.merge(LatencyHistogram.from_bytes(b))
    return h.to_bytes()


def merge_records(a: WindowRecord, b: WindowRecord, *, concurrent: bool) -> WindowRecord:
    """Merge two records exactly: ``concurrent`` for the same window of two workers, else adjacent windows."""
    d_a, d_b = a.t1_s - a.t0_s, b.t1_s - b.t0_s
    if concurrent:
        target, vus, span = a.target + b.target, a.vus_max + b.vus_max, a.span
    else:
        total = d_a + d_b
        target = (a.target * d_a + b.target * d_b) / total if total > 0 else a.target
        vus, span = max(a.vus_max, b.vus_max), a.span + b.span
    errors = dict(a.errors_by_kind)
    _add_errors(errors, b.errors_by_kind)
    hists = {}
    for name in HIST_NAMES:
        merged = _merge_hist_bytes(a.hists.get(name), b.hists.get(name))
        if merged is not None:
            hists[name] = merged
    return WindowRecord(
        index=min(a.index, b.index), stage=min(a.stage, b.stage), t0_s=min(a.t0_s, b.t0_s),
        t1_s=max(a.t1_s, b.t1_s), target=target, scheduled=a.scheduled + b.scheduled,
        started=a.started + b.started, completed=a.completed + b.completed, errors=a.errors + b.errors,
        dropped=a.dropped + b.dropped, vus_max=vus, errors_by_kind=errors, hists=hists, span=span,
    )  # fmt: skip


class Window:
    """The live window the generator records into; only counters and fixed-size histograms."""

    __slots__ = (
        "completed", "dropped", "errors", "errors_by_kind", "index", "itl", "lag", "latency", "scheduled",
        "service", "stage", "started", "t0_s", "ttft", "vus_max",
    )  # fmt: skip

    def __init__(self, index: int, stage: int, t0_s: float) -> None:
        self.index, self.stage, self.t0_s = index, stage, t0_s
        self.scheduled = self.started = self.completed = self.errors = self.dropped = self.vus_max = 0
        self.errors_by_kind: dict[str, int] = {}
        self.latency = LatencyHistogram()
        self.service = LatencyHistogram()
        self.lag = LatencyHistogram()
        self.ttft: LatencyHistogram | None = None
        self.itl: LatencyHistogram | None = None

    def error(self, kind: str) -> None:
        self.errors += 1
        _add_errors(self.errors_by_kind, {kind: 1})

    def hists(self) -> dict[str, LatencyHistogram]:
        out = {"latency": self.latency, "service": self.service, "lag": self.lag}
        if self.ttft is not None:
            out["ttft"] = self.ttft
        if self.itl is not None:
            out["itl"] = self.itl
        return {k: h for k, h in out.items() if h.count}

    def close(self, t1_s: float, target: float) -> WindowRecord:
        return WindowRecord(
            index=self.index, stage=self.stage, t0_s=self.t0_s, t1_s=t1_s, target=target,
            scheduled=self.scheduled, started=self.started, completed=self.completed, errors=self.errors,
            dropped=self.dropped, vus_max=self.vus_max, errors_by_kind=dict(self.errors_by_kind),
            hists={name: h.to_bytes() for name, h in self.hists().items()},
        )  # fmt: skip


class Accumulator:
    """Counters and live histograms of a stretch of the run (a stage, or the whole run), fed window by window."""

    def __init__(self, stage: int | None = None) -> None:
        self.stage = stage
        self.t0_s: float | None = None
        self.t1_s = 0.0
        self.target_area = 0.0
        self.scheduled = self.started = self.completed = self.errors = self.dropped = self.vus_max = 0
        self.errors_by_kind: dict[str, int] = {}
        self.hists: dict[str, LatencyHistogram] = {}

    def add(self, rec: WindowRecord, live: dict[str, LatencyHistogram] | None = None) -> None:
        """Add a record; ``live`` are its histograms still in memory (saves decoding the bytes)."""
        self.t0_s = rec.t0_s if self.t0_s is None else min(self.t0_s, rec.t0_s)
        self.t1_s = max(self.t1_s, rec.t1_s)
        self.target_area += rec.target * (rec.t1_s - rec.t0_s)
        self.scheduled += rec.scheduled
        self.started += rec.started
        self.completed += rec.completed
        self.errors += rec.errors
        self.dropped += rec.dropped
        self.vus_max = max(self.vus_max, rec.vus_max)
        _add_errors(self.errors_by_kind, rec.errors_by_kind)
        for name, data in rec.hists.items():
            h = live[name] if live is not None and name in live else LatencyHistogram.from_bytes(data)
            mine = self.hists.get(name)
            if mine is None:
                self.hists[name] = h.copy()
            else:
                mine.merge(h)

    def merge(self, other: Accumulator) -> None:
        if other.t0_s is None:
            return
        self.t0_s = other.t0_s if self.t0_s is None else min(self.t0_s, other.t0_s)
        self.t1_s = max(self.t1_s, other.t1_s)
        self.target_area += other.target_area
        for field in ("scheduled", "started", "completed", "errors", "dropped"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        self.vus_max = max(self.vus_max, other.vus_max)
        _add_errors(self.errors_by_kind, other.errors_by_kind)
        for name, h in other.hists.items():
            if name in self.hists:
                self.hists[name].merge(h)
            else:
                self.hists[name] = h.copy()

    @property
    def duration_s(self) -> float:
        return self.t1_s - self.t0_s if self.t0_s is not None else 0.0

    def figures(self, *, open_model: bool) -> dict[str, float | None]:
        return figures_of(
            self.duration_s, self.target_area, self.scheduled, self.started, self.completed, self.errors,
            self.dropped, self.vus_max, self.hists, open_model=open_model,
        )  # fmt: skip


def figures_of(
    duration_s: float,
    target_area: float,
    scheduled: int,
    started: int,
    completed: int,
    errors: int,
    dropped: int,
    vus_max: int,
    hists: dict[str, LatencyHistogram],
    *,
    open_model: bool,
) -> dict[str, float | None]:
    """The named figures thresholds and reports use; latency figures in seconds, None when there is no data."""
    finished = completed + errors
    out: dict[str, float | None] = {
        "duration_s": duration_s,
        "rate": started / duration_s if duration_s > 0 else None,
        "throughput": finished / duration_s if duration_s > 0 else None,
        "target": (target_area / duration_s if duration_s > 0 else None) if open_model else None,
        "vus_target": None if open_model else (target_area / duration_s if duration_s > 0 else None),
        "error_rate": errors / finished if finished else None,
        "errors": float(errors),
        "dropped": float(dropped),
        "dropped_rate": dropped / scheduled if scheduled else None,
        "vus": float(vus_max),
        "scheduled": float(scheduled),
        "started": float(started),
        "completed": float(completed),
    }
    for name in HIST_NAMES:
        prefix = "" if name == "latency" else f"{name}_"
        h = hists.get(name)
        if h is None or not h.count:
            for key in (*_QUANTILES, "max", "mean", "min"):
                out[prefix + key] = None
            continue
        values = h.percentiles(_QUANTILES.values())
        for key, q in _QUANTILES.items():
            out[prefix + key] = values[q]
        out[prefix + "max"], out[prefix + "mean"], out[prefix + "min"] = h.max_s, h.mean_s, h.min_s
    return out


def record_figures(rec: WindowRecord, *, open_model: bool) -> dict[str, float | None]:
    hists = {name: LatencyHistogram.from_bytes(data) for name, data in rec.hists.items()}
    return figures_of(
        rec.t1_s - rec.t0_s, rec.target * (rec.t1_s - rec.t0_s), rec.scheduled, rec.started, rec.completed,
        rec.errors, rec.dropped, rec.vus_max, hists, open_model=open_model,
    )  # fmt: skip


class WindowList:
    """At most ``max_windows`` records; each append beyond that merges one adjacent pair (same stage)."""

    def __init__(self, max_windows: int = MAX_WINDOWS) -> None:
        if max_windows < 4:
            raise ValueError("max_windows must be at least 4.")
        self.max_windows = max_windows
        self.records: list[WindowRecord] = []
        self.merges = 0

    def append(self, rec: WindowRecord) -> None:
        self.records.append(rec)
        if len(self.records) > self.max_windows:
            self._compact_one()

    def _compact_one(self) -> None:
        recs = self.records
        best: int | None = None
        for i in range(len(recs) - 1):
            a, b = recs[i], recs[i + 1]
            if a.span == b.span and a.stage == b.stage and (best is None or a.span < recs[best].span):
                best = i
        if best is None:  # every neighbour differs in span or stage: merge the two oldest
            best = 0
        recs[best : best + 2] = [merge_records(recs[best], recs[best + 1], concurrent=False)]
        self.merges += 1

    def __iter__(self) -> Any:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def stage_accumulators(records: Iterable[WindowRecord], stages: int) -> list[Accumulator]:
    accs = [Accumulator(i) for i in range(stages)]
    for rec in records:
        accs[min(rec.stage, stages - 1)].add(rec)
    return accs
