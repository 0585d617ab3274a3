"""A bounded LRU cache with a time-to-live, for deterministic LLM responses (layer L2: no I/O, no agents).

``get`` is a dict lookup plus an expiry check; entries past ``ttl_s`` are dropped when seen, and the least
recently used entry is evicted when ``max_entries`` is reached, so memory stays bounded::

    cache: TTLCache[str, bytes] = TTLCache(max_entries=1000, ttl_s=60.0)
    cache.put("k", b"v")
    cache.get("k")          # b"v" (a hit), None after 60 s or once evicted (a miss)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import msgspec

__all__ = ["CacheStatistics", "TTLCache"]

K = TypeVar("K")
V = TypeVar("V")


class CacheStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the cache was made; ``hit_rate`` is hits / (hits + misses), 0 before any lookup."""

    size: int
    max_entries: int
    ttl_s: float
    hits: int
    misses: int
    evictions: int
    expirations: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class TTLCache(Generic[K, V]):
    """Least-recently-used cache of at most ``max_entries``, each entry valid for ``ttl_s`` after its put.

    ``clock`` is injectable so tests can move time without sleeping.
    """

    __slots__ = ("_clock", "_data", "evictions", "expirations", "hits", "max_entries", "misses", "ttl_s")

    def __init__(self, *, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1.")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be greater than 0.")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return (
            f"<TTLCache size={len(self._data)}/{self.max_entries} ttl_s={self.ttl_s:g} hits={self.hits} "
            f"misses={self.misses}>"
        )

    def get(self, key: K) -> V | None:
        """The value for ``key`` if present and fresh (and mark it recently used), else None."""
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._data[key]
            self.expirations += 1
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V, ttl_s: float | None = None) -> None:
        """Store ``value`` for ``ttl_s`` (default: the cache's); evict the least recently used entry when full."""
        data = self._data
        if key in data:
            del data[key]
        elif len(data) >= self.max_entries:
            data.popitem(last=False)
            self.evictions += 1
        data[key] = (self._clock() + (self.ttl_s if ttl_s is None else ttl_s), value)

    def clear(self) -> None:
        self._data.clear()

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            size=len(self._data),
            max_entries=self.max_entries,
            ttl_s=self.ttl_s,
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            expirations=self.expirations,
        )
