"""The store's cache of committed values: LRU, each entry trusted for ``ttl_s``, never older over newer.

Unlike the LLM response cache (``agentflow.cache.TTLCache``) an entry carries the value's version and expiry
and the commit *order* that produced it, and a put never replaces an entry from a later commit: replies of
concurrent commits and reads may arrive in any order.
"""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["Entry", "StateCache"]

#: (raw msgpack or None for "absent", version (0 when absent), expiry (Unix time or None), order, trusted
#: until (monotonic time))
Entry = tuple[bytes | None, int, float | None, int, float]


class StateCache:
    """At most ``max_entries`` committed values, least recently used evicted first."""

    __slots__ = ("_data", "hits", "max_entries", "misses", "ttl_s")

    def __init__(self, *, max_entries: int, ttl_s: float) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._data: OrderedDict[str, Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def lookup(self, key: str) -> Entry | None:
        """The entry of ``key`` if it is still trusted and its value has not expired (a hit), else None."""
        data = self._data
        entry = data.get(key)
        if entry is not None:
            if entry[4] > time.monotonic() and (entry[2] is None or entry[2] > time.time()):
                data.move_to_end(key)
                self.hits += 1
                return entry
            del data[key]
        self.misses += 1
        return None

    def put(self, key: str, raw: bytes | None, version: int, expires_at: float | None, order: int) -> None:
        """Remember a committed value, unless an entry from a later commit is already there."""
        data = self._data
        old = data.get(key)
        if old is not None:
            if old[3] > order:
                return
            del data[key]
        elif len(data) >= self.max_entries:
            data.popitem(last=False)
        data[key] = (raw, version, expires_at, order, time.monotonic() + self.ttl_s)

    def pop(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()
