"""An HdrHistogram-style latency histogram in pure Python: fixed memory, bounded relative error, exact merges.

Values are stored as integer multiples of ``lowest_s`` in log-linear buckets: each power of two is split into
enough linear sub-buckets to keep ``significant_figures`` decimal digits, so a reported value is within
``10 ** -significant_figures`` (relative) plus one ``lowest_s`` of the recorded value it stands for.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate, compress

import msgspec

__all__ = ["HistogramStatistics", "LatencyHistogram"]

_FORMAT_VERSION = 1
_SUMMARY_QUANTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


class HistogramStatistics(msgspec.Struct, frozen=True, gc=False):
    """A snapshot of a :class:`LatencyHistogram`; every field is 0 while it is empty."""

    count: int
    min_s: float
    max_s: float
    mean_s: float
    saturated: int


class _Wire(msgspec.Struct, frozen=True, array_like=True):
    # Sparse: only non-empty buckets travel, indices delta-encoded so most fit in one msgpack byte.
    version: int
    lowest_s: float
    highest_s: float
    significant_figures: int
    count: int
    saturated: int
    sum_s: float
    min_s: float
    max_s: float
    index_deltas: list[int]
    counts: list[int]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)


class LatencyHistogram:
    """Records durations in seconds with bounded relative error, in memory fixed by its layout.

    ::

        hist = LatencyHistogram()              # 1 µs .. 1 h, 3 significant figures
        for _ in range(1000):
            t0 = time.perf_counter()
            await call()
            hist.record(time.perf_counter() - t0)
        hist.percentile(99)                    # seconds; 0.0 while empty
        total = LatencyHistogram.from_bytes(worker_bytes)
        total.merge(hist)                      # exact: same counts as recording both into one

    Negative values are recorded as 0; values above ``highest_s`` (including ``inf``) are recorded as
    ``highest_s`` and counted in ``saturated``; NaN raises ``ValueError``. ``min_s``, ``max_s`` and ``mean_s``
    describe the recorded (clamped) values exactly; percentiles carry the bucket error.

    Memory is one preallocated list of counters, sized by the layout and never by the number of records: with
    the defaults it has 23,221 slots, 185,824 bytes (``memory_bytes``). Only a bucket whose count passes 256
    holds its own int object (28-32 bytes), so even a full histogram stays under 1 MB. Not thread-safe: keep one
    per thread or process and ``merge`` them.
    """

    __slots__ = (
        "_count", "_counts", "_half_mag", "_highest_s", "_lowest_s", "_mask", "_max", "_min", "_saturated",
        "_scale", "_sf", "_sub_mag", "_sum",
    )  # fmt: skip

    def __init__(self, *, lowest_s: float = 1e-6, highest_s: float = 3600.0, significant_figures: int = 3) -> None:
        if not (math.isfinite(lowest_s) and lowest_s > 0.0):
            raise ValueError(f"lowest_s must be a positive number of seconds, not {lowest_s!r}.")
        if not (math.isfinite(highest_s) and highest_s >= 2.0 * lowest_s):
            raise ValueError(f"highest_s must be finite and at least twice lowest_s, not {highest_s!r}.")
        if isinstance(significant_figures, bool) or significant_figures not in range(1, 6):
            raise ValueError(f"significant_figures must be an integer from 1 to 5, not {significant_figures!r}.")
        self._lowest_s = float(lowest_s)
        self._highest_s = float(highest_s)
        self._sf = significant_figures
        self._scale = 1.0 / self._lowest_s
        # At least 2 * 10**sf linear steps per power of two keep sf digits across each bucket's upper half.
        self._sub_mag: int = (2 * 10**significant_figures - 1).bit_length()
        self._half_mag: int = self._sub_mag - 1
        self._mask: int = (1 << self._sub_mag) - 1
        self._counts = [0] * (self._index(self._to_units(self._highest_s)) + 1)
        self._reset_totals()

    def _reset_totals(self) -> None:
        self._count = 0
        self._saturated = 0
        self._sum = 0.0
        # inf/-inf send the first value down the slow path, which sets both.
        self._min = math.inf
        self._max = -math.inf

    def _to_units(self, value_s: float) -> int:
        return int(value_s * self._scale)

    def _index(self, units: int) -> int:
        bucket = (units | self._mask).bit_length() - self._sub_mag
        return (bucket << self._half_mag) + (units >> bucket)

    def _span(self) -> tuple[int, int]:
        """The slice of counters that can be non-zero: from the minimum's bucket to the maximum's, inclusive.

        Recorded values sit between min and max, so scans (merge, encoding, percentiles) read only this stretch,
        a fraction of the layout for latencies of one order of magnitude or two.
        """
        if not self._count:
            return 0, 0
        return self._index(self._to_units(self._min)), self._index(self._to_units(self._max)) + 1

    def _bounds(self, index: int) -> tuple[int, int]:
        """The lowest value (in units) and the width of the bucket at ``index``."""
        bucket = max((index >> self._half_mag) - 1, 0)
        return (index - (bucket << self._half_mag)) << bucket, 1 << bucket

    def record(self, value_s: float) -> None:
        """Record one duration in seconds."""
        # A value inside the range already seen needs no clamping and moves neither min nor max, so the
        # common case pays for one chained comparison; the rest (and NaN) falls to the slow path.
        if self._min <= value_s <= self._max:
            units = int(value_s * self._scale)
            bucket = (units | self._mask).bit_length() - self._sub_mag
            self._counts[(bucket << self._half_mag) + (units >> bucket)] += 1
            self._count += 1
            self._sum += value_s
        else:
            self._record_slow(value_s, 1)

    def record_n(self, value_s: float, count: int) -> None:
        """Record ``count`` occurrences of one duration in seconds."""
        if count < 0:
            raise ValueError(f"count must be zero or more, not {count!r}.")
        if count:
            self._record_slow(value_s, count)

    def record_many(self, values: Iterable[float]) -> None:
        """Record every duration in ``values`` (seconds); same result as calling ``record`` for each."""
        counts, scale, mask, sub_mag, half_mag = self._counts, self._scale, self._mask, self._sub_mag, self._half_mag
        for value_s in values:  # ``record``'s body with the layout in locals: ~15% faster per value
            if self._min <= value_s <= self._max:
                units = int(value_s * scale)
                bucket = (units | mask).bit_length() - sub_mag
                counts[(bucket << half_mag) + (units >> bucket)] += 1
                self._count += 1
                self._sum += value_s
            else:
                self._record_slow(value_s, 1)

    def _record_slow(self, value_s: float, n: int) -> None:
        if value_s != value_s:
            raise ValueError("Cannot record NaN as a latency; check the clock arithmetic that produced it.")
        if value_s <= 0.0:
            value_s = 0.0  # also turns -0.0 into 0.0
        elif value_s > self._highest_s:
            value_s = self._highest_s
            self._saturated += n
        self._min = min(self._min, value_s)
        self._max = max(self._max, value_s)
        self._counts[self._index(self._to_units(value_s))] += n
        self._count += n
        self._sum += value_s * n

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return self._count

    @property
    def saturated(self) -> int:
        """How many values were above ``highest_s`` and recorded as ``highest_s``."""
        return self._saturated

    @property
    def min_s(self) -> float:
        return self._min if self._count else 0.0

    @property
    def max_s(self) -> float:
        return self._max if self._count else 0.0

    @property
    def mean_s(self) -> float:
        return self._sum / self._count if self._count else 0.0

    @property
    def memory_bytes(self) -> int:
        """Size of the counter list in bytes, fixed at construction."""
        return sys.getsizeof(self._counts)

    def percentile(self, q: float) -> float:
        """The value (seconds) at or below which ``q`` percent of records fall; 0.0 while empty.

        As in HdrHistogram, the answer is the highest value equivalent to the bucket holding that record,
        capped at the exact maximum; ``percentile(0)`` is the lowest value of the minimum's bucket.
        """
        return self.percentiles((q,))[q]

    def percentiles(self, qs: Iterable[float]) -> dict[float, float]:
        """``percentile`` for each of ``qs`` in one pass over the counters."""
        qs = list(qs)
        for q in qs:
            if not 0.0 <= q <= 100.0:
                raise ValueError(f"A percentile must be between 0 and 100, not {q!r}.")
        if not self._count:
            return dict.fromkeys(qs, 0.0)
        lo, hi = self._span()
        cumulative = list(accumulate(self._counts[lo:hi]))
        result = {}
        for q in qs:
            rank = max(1, math.ceil(q * self._count / 100.0))
            low, width = self._bounds(lo + bisect_left(cumulative, rank))
            if q == 0.0:
                result[q] = low * self._lowest_s
            else:
                result[q] = min((low + width - 1) * self._lowest_s, self._max)
        return result

    def summary_ms(self) -> dict[str, float]:
        """Percentiles, extremes and mean in milliseconds, plus ``count``; all 0 while empty."""
        values = self.percentiles(_SUMMARY_QUANTILES.values())
        summary = {key: values[q] * 1e3 for key, q in _SUMMARY_QUANTILES.items()}
        summary.update(max=self.max_s * 1e3, mean=self.mean_s * 1e3, min=self.min_s * 1e3, count=self._count)
        return summary

    def statistics(self) -> HistogramStatistics:
        """Count, exact extremes and mean, and how many values saturated."""
        return HistogramStatistics(self._count, self.min_s, self.max_s, self.mean_s, self._saturated)

    def buckets(self) -> Iterator[tuple[float, float, int]]:
        """``(low_s, high_s, count)`` for each non-empty bucket, in increasing order."""
        counts = self._counts
        lo, hi = self._span()
        for index in compress(range(lo, hi), counts[lo:hi]):
            low, width = self._bounds(index)
            yield low * self._lowest_s, (low + width - 1) * self._lowest_s, counts[index]

    def __repr__(self) -> str:
        if not self._count:
            return "<LatencyHistogram count=0>"
        p = self.percentiles((50.0, 99.0))
        saturated = f" saturated={self._saturated}" if self._saturated else ""
        return (
            f"<LatencyHistogram count={self._count} p50={p[50.0] * 1e3:.3g}ms p99={p[99.0] * 1e3:.3g}ms"
            f" max={self._max * 1e3:.3g}ms{saturated}>"
        )

    @property
    def _layout(self) -> tuple[float, float, int]:
        return self._lowest_s, self._highest_s, self._sf

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s records to this histogram; both must share one layout."""
        if other._layout != self._layout:
            raise ValueError(
                f"Cannot merge histograms with different layouts (lowest_s, highest_s, significant_figures): "
                f"{self._layout} and {other._layout}; create both with the same arguments."
            )
        theirs, ours = other._counts, self._counts
        lo, hi = other._span()
        for index in compress(range(lo, hi), theirs[lo:hi]):
            ours[index] += theirs[index]
        self._count += other._count
        self._saturated += other._saturated
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def copy(self) -> LatencyHistogram:
        clone = type(self)(lowest_s=self._lowest_s, highest_s=self._highest_s, significant_figures=self._sf)
        clone.merge(self)
        return clone

    def reset(self) -> None:
        """Forget every record; memory stays allocated."""
        self._counts[:] = [0] * len(self._counts)
        self._reset_totals()

    def to_bytes(self) -> bytes:
        """A compact msgpack encoding holding only the non-empty buckets; see ``from_bytes``."""
        counts = self._counts
        lo, hi = self._span()
        indices = list(compress(range(lo, hi), counts[lo:hi]))
        deltas = [b - a for a, b in zip([0, *indices], indices, strict=False)]
        wire = _Wire(
            _FORMAT_VERSION, self._lowest_s, self._highest_s, self._sf, self._count, self._saturated,
            self._sum, self._min, self._max, deltas, [counts[i] for i in indices],
        )  # fmt: skip
        return _encoder.encode(wire)

    @classmethod
    def from_bytes(cls, data: bytes) -> LatencyHistogram:
        """Rebuild a histogram from ``to_bytes`` output exactly; raises ``ValueError`` on anything else."""
        wire = _decoder.decode(data)  # msgspec.DecodeError is a ValueError
        if wire.version != _FORMAT_VERSION:
            raise ValueError(f"Histogram bytes have format version {wire.version}; this agentflow reads 1.")
        hist = cls(lowest_s=wire.lowest_s, highest_s=wire.highest_s, significant_figures=wire.significant_figures)
        indices = list(accumulate(wire.index_deltas))
        if (
            len(indices) != len(wire.counts)
            or any(d <= 0 for d in wire.index_deltas[1:])
            or (indices and not 0 <= indices[0] <= indices[-1] < len(hist._counts))
            or any(c <= 0 for c in wire.counts)
            or sum(wire.counts) != wire.count
            or not 0 <= wire.saturated <= wire.count
            or (wire.count and not 0.0 <= wire.min_s <= wire.max_s <= wire.highest_s)
            or (wire.count and hist._index(hist._to_units(wire.min_s)) != indices[0])
            or (wire.count and hist._index(hist._to_units(wire.max_s)) != indices[-1])
        ):
            raise ValueError("Histogram bytes are inconsistent (bucket indices or counts); they may be corrupt.")
        for index, count in zip(indices, wire.counts, strict=True):
            hist._counts[index] = count
        hist._count, hist._saturated, hist._sum = wire.count, wire.saturated, wire.sum_s
        hist._min, hist._max = wire.min_s, wire.max_s
        return hist
