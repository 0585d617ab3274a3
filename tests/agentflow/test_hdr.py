from __future__ import annotations

import math
import re
import sys
import tracemalloc
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentflow.hdr import HistogramStatistics, LatencyHistogram

HIGHEST_S = 3600.0
# Values from zero to past the top of the range (saturating), with a bias towards realistic latencies.
values_s = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1.5 * HIGHEST_S),
        st.floats(min_value=1e-4, max_value=10.0),
        st.floats(min_value=-1.0, max_value=0.0),
    ),
    max_size=300,
)
sig_figs = st.sampled_from([2, 3])
quantiles = st.floats(min_value=0.0, max_value=100.0)
hypothesis_settings = settings(max_examples=150, deadline=None, database=None)


def filled(values: list[float], *, significant_figures: int = 3, lowest_s: float = 1e-6) -> LatencyHistogram:
    hist = LatencyHistogram(lowest_s=lowest_s, highest_s=HIGHEST_S, significant_figures=significant_figures)
    for value in values:
        hist.record(value)
    return hist


def exact_percentile(values: list[float], q: float) -> float:
    """The recorded (clamped) value at the rank HdrHistogram uses: the ceil(q% of n)-th smallest."""
    ordered = sorted(min(max(v, 0.0), HIGHEST_S) for v in values)
    rank = max(1, math.ceil(q * len(ordered) / 100.0))
    return ordered[rank - 1]


def same_state(a: LatencyHistogram, b: LatencyHistogram) -> bool:
    return list(a.buckets()) == list(b.buckets()) and a.statistics() == b.statistics()


# -- properties ----------------------------------------------------------------------------------------------


@hypothesis_settings
@given(
    values=values_s.filter(bool),
    qs=st.lists(quantiles, min_size=1, max_size=5),
    sf=sig_figs,
    lowest_s=st.sampled_from([1e-6, 1e-5, 1e-3]),
)
def test_percentiles_are_within_the_documented_error(
    values: list[float], qs: list[float], sf: int, lowest_s: float
) -> None:
    hist = filled(values, significant_figures=sf, lowest_s=lowest_s)
    for q, reported in hist.percentiles([*qs, 0.0, 100.0]).items():
        exact = exact_percentile(values, q)
        bound = exact * 10.0**-sf + lowest_s
        assert abs(reported - exact) <= bound * (1 + 1e-9), (q, reported, exact)
        assert 0.0 <= reported <= hist.max_s


@hypothesis_settings
@given(a=values_s, b=values_s, sf=sig_figs)
def test_merge_is_exact(a: list[float], b: list[float], sf: int) -> None:
    merged = filled(a, significant_figures=sf)
    merged.merge(filled(b, significant_figures=sf))
    together = LatencyHistogram(significant_figures=sf)
    together.record_many(a + b)

    assert list(merged.buckets()) == list(together.buckets())
    assert (merged.count, merged.min_s, merged.max_s, merged.saturated) == (
        together.count,
        together.min_s,
        together.max_s,
        together.saturated,
    )
    assert merged.mean_s == pytest.approx(together.mean_s, rel=1e-9)
    assert merged.percentiles([50.0, 99.0, 100.0]) == together.percentiles([50.0, 99.0, 100.0])


@hypothesis_settings
@given(values=values_s, sf=sig_figs)
def test_bytes_round_trip_exactly(values: list[float], sf: int) -> None:
    hist = filled(values, significant_figures=sf)
    data = hist.to_bytes()
    restored = LatencyHistogram.from_bytes(data)

    assert same_state(restored, hist)
    assert restored.percentiles([0.0, 50.0, 99.9]) == hist.percentiles([0.0, 50.0, 99.9])
    assert restored.to_bytes() == data


# -- recording edge cases ------------------------------------------------------------------------------------


def test_empty_histogram_reports_zeros() -> None:
    hist = LatencyHistogram()

    assert hist.percentile(50) == 0.0
    assert hist.percentiles([0.0, 100.0]) == {0.0: 0.0, 100.0: 0.0}
    assert hist.statistics() == HistogramStatistics(count=0, min_s=0.0, max_s=0.0, mean_s=0.0, saturated=0)
    assert set(hist.summary_ms().values()) == {0.0}
    assert repr(hist) == "<LatencyHistogram count=0>"
    assert list(hist.buckets()) == []
    assert "0.0 while empty" in (LatencyHistogram.percentile.__doc__ or "")


def test_values_above_highest_are_clamped_and_counted() -> None:
    hist = LatencyHistogram(highest_s=10.0)
    hist.record(0.5)
    hist.record(25.0)
    hist.record(math.inf)
    hist.record_n(11.0, 3)

    assert hist.saturated == 5
    assert hist.count == 6
    assert hist.max_s == 10.0
    assert hist.percentile(100) == 10.0
    assert hist.statistics().saturated == 5
    assert "saturated=5" in repr(hist)


def test_negative_values_are_recorded_as_zero() -> None:
    hist = LatencyHistogram()
    hist.record(-0.25)
    hist.record_many([-math.inf, -0.0])

    assert hist.count == 3
    assert (hist.min_s, hist.max_s, hist.mean_s) == (0.0, 0.0, 0.0)
    assert hist.percentile(50) == 0.0
    assert hist.saturated == 0


def test_nan_is_refused() -> None:
    hist = LatencyHistogram()
    hist.record(0.001)
    with pytest.raises(ValueError, match="Cannot record NaN"):
        hist.record(math.nan)
    with pytest.raises(ValueError, match="Cannot record NaN"):
        hist.record_many([0.002, math.nan])
    assert hist.count == 2  # the value before the NaN in the batch was kept


def test_record_n_equals_repeated_record() -> None:
    one_by_one = filled([0.0123] * 7 + [0.5])
    batched = LatencyHistogram()
    batched.record_n(0.0123, 7)
    batched.record_n(0.5, 1)
    batched.record_n(9.0, 0)

    assert list(batched.buckets()) == list(one_by_one.buckets())
    assert batched.count == 8
    with pytest.raises(ValueError, match="zero or more"):
        batched.record_n(0.1, -1)


# -- queries -------------------------------------------------------------------------------------------------


def test_percentile_100_is_max_and_0_is_the_min_bucket() -> None:
    hist = filled([0.0123456, 0.0047, 0.9876, 0.25])
    low_s, high_s, _ = next(hist.buckets())

    assert hist.percentile(100) == hist.max_s == 0.9876
    assert hist.percentile(0) == low_s
    assert low_s <= hist.min_s <= high_s
    assert hist.min_s == 0.0047


def test_known_distribution_summary_repr_and_statistics() -> None:
    hist = LatencyHistogram()
    hist.record_many(i / 1e6 for i in range(1, 1001))  # 1 µs .. 1 ms, below 2048 units: exact buckets

    assert hist.percentile(50) == pytest.approx(500e-6)
    assert hist.percentile(99) == pytest.approx(990e-6)
    summary = hist.summary_ms()
    assert list(summary) == ["p50", "p90", "p95", "p99", "p999", "max", "mean", "min", "count"]
    assert summary["count"] == 1000
    assert summary["p90"] == pytest.approx(0.9)
    assert summary["max"] == pytest.approx(1.0)
    assert summary["min"] == pytest.approx(0.001)
    assert summary["mean"] == pytest.approx(0.5005)
    assert repr(hist) == "<LatencyHistogram count=1000 p50=0.5ms p99=0.99ms max=1ms>"
    stats = hist.statistics()
    assert (stats.count, stats.saturated) == (1000, 0)
    assert stats.mean_s == pytest.approx(500.5e-6)
    with pytest.raises(AttributeError):  # a frozen snapshot
        stats.count = 3  # type: ignore[misc]


def test_repr_tracks_live_state() -> None:
    hist = LatencyHistogram()
    hist.record_many([0.00102] * 98 + [0.0041, 0.005])

    assert re.fullmatch(r"<LatencyHistogram count=100 p50=1\.02ms p99=4\.1ms max=5ms>", repr(hist))
    hist.record(0.5)
    assert "count=101" in repr(hist) and "max=500ms" in repr(hist)


@pytest.mark.parametrize("q", [-0.1, 100.5, math.nan])
def test_percentile_outside_0_to_100_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        filled([0.1]).percentile(q)


# -- layout, memory, copies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "other",
    [
        {"significant_figures": 2},
        {"lowest_s": 1e-3},
        {"highest_s": 60.0},
    ],
)
def test_merge_refuses_a_different_layout(other: dict[str, float]) -> None:
    hist = LatencyHistogram()
    with pytest.raises(ValueError, match="Cannot merge histograms with different layouts"):
        hist.merge(LatencyHistogram(**other))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lowest_s": 0.0}, "lowest_s must be a positive"),
        ({"lowest_s": math.inf}, "lowest_s must be a positive"),
        ({"highest_s": 1.5e-6}, "at least twice lowest_s"),
        ({"highest_s": math.nan}, "at least twice lowest_s"),
        ({"significant_figures": 0}, "from 1 to 5"),
        ({"significant_figures": 6}, "from 1 to 5"),
    ],
)
def test_invalid_layout_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyHistogram(**kwargs)  # type: ignore[arg-type]


def test_memory_is_fixed_by_the_layout() -> None:
    hist = LatencyHistogram()
    slots, size = len(hist._counts), sys.getsizeof(hist._counts)
    assert hist.memory_bytes == size == 185_824  # the figure the class docstring states

    def latencies(n: int) -> Iterator[float]:
        return ((i % 1000) * 5e-4 + 1e-6 for i in range(n))  # 1000 buckets between 1 µs and 0.5 s

    hist.record_many(latencies(1_000_000))

    assert hist.count == 1_000_000
    assert (len(hist._counts), sys.getsizeof(hist._counts), hist.memory_bytes) == (slots, size, size)

    # Every count is past CPython's small-int cache now, so recording more only swaps int objects.
    tracemalloc.start()
    try:
        hist.record_many(latencies(20_000))
        settled = tracemalloc.get_traced_memory()[0]
        hist.record_many(latencies(100_000))
        grown = tracemalloc.get_traced_memory()[0] - settled
    finally:
        tracemalloc.stop()
    assert grown < 1024


def test_copy_is_independent_and_reset_keeps_memory() -> None:
    hist = filled([0.001, 0.002, 7.0])
    clone = hist.copy()
    clone.record(0.5)

    assert hist.count == 3 and clone.count == 4
    assert same_state(filled([0.001, 0.002, 7.0]), hist)

    size = hist.memory_bytes
    hist.reset()
    assert hist.statistics() == LatencyHistogram().statistics()
    assert list(hist.buckets()) == []
    assert hist.memory_bytes == size
    hist.record(0.25)
    assert (hist.min_s, hist.max_s, hist.count) == (0.25, 0.25, 1)


def test_merge_with_itself_doubles_and_empty_merge_is_a_no_op() -> None:
    hist = filled([0.001, 0.3])
    hist.merge(LatencyHistogram())
    assert same_state(hist, filled([0.001, 0.3]))

    hist.merge(hist)
    assert [count for _, _, count in hist.buckets()] == [2, 2]
    assert (hist.count, hist.min_s, hist.max_s) == (4, 0.001, 0.3)


# -- serialisation -------------------------------------------------------------------------------------------


def test_bytes_are_sparse() -> None:
    empty = LatencyHistogram().to_bytes()
    small = filled([0.001, 0.002, 0.003]).to_bytes()
    assert len(empty) < 64
    assert len(small) < len(empty) + 16
    assert same_state(LatencyHistogram.from_bytes(empty), LatencyHistogram())


@pytest.mark.parametrize(
    "corrupt",
    [
        b"not msgpack at all",
        msgspec.msgpack.encode([2, 1e-6, 3600.0, 3, 0, 0, 0.0, math.inf, -math.inf, [], []]),
        msgspec.msgpack.encode([1, 1e-6, 3600.0, 3, 2, 0, 0.1, 0.05, 0.05, [50000], [2]]),
        msgspec.msgpack.encode([1, 1e-6, 3600.0, 3, 3, 0, 0.1, 0.05, 0.05, [4000], [2]]),
        msgspec.msgpack.encode([1, 1e-6, 3600.0, 3, 2, 0, 0.1, 0.05, 0.05, [4000, 0], [1, 1]]),
        msgspec.msgpack.encode([1, 1e-6, 3600.0, 3, 1, 0, 0.1, 0.05, 0.05, [10], [1]]),
        msgspec.msgpack.encode([1, 1e-6, 3600.0, 9, 0, 0, 0.0, math.inf, -math.inf, [], []]),
    ],
)
def test_from_bytes_refuses_anything_else(corrupt: bytes) -> None:
    with pytest.raises(ValueError):
        LatencyHistogram.from_bytes(corrupt)
