"""TTLCache: LRU bound, TTL expiry (with a fake clock), statistics."""

from __future__ import annotations

import pytest

from agentflow.llm.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ttl_expires_entries() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(max_entries=10, ttl_s=5.0, clock=clock)
    cache.put("a", 1)
    clock.now = 4.9
    assert cache.get("a") == 1
    clock.now = 5.0
    assert cache.get("a") is None
    assert len(cache) == 0
    s = cache.statistics()
    assert (s.hits, s.misses, s.expirations) == (1, 1, 1)
    assert s.hit_rate == 0.5


def test_put_again_restarts_the_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(max_entries=10, ttl_s=5.0, clock=clock)
    cache.put("a", 1)
    clock.now = 4.0
    cache.put("a", 2)
    clock.now = 8.0
    assert cache.get("a") == 2


def test_bounded_least_recently_used_goes_first() -> None:
    cache: TTLCache[int, int] = TTLCache(max_entries=3, ttl_s=60.0)
    for i in range(3):
        cache.put(i, i)
    assert cache.get(0) == 0  # 0 is now the most recently used
    cache.put(3, 3)  # evicts 1, the least recently used
    assert cache.get(1) is None
    assert [cache.get(k) for k in (0, 2, 3)] == [0, 2, 3]
    for i in range(100):
        cache.put(100 + i, i)
    assert len(cache) == 3
    assert cache.statistics().evictions == 101
    assert "size=3/3" in repr(cache)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        TTLCache(max_entries=0, ttl_s=1.0)
    with pytest.raises(ValueError, match="ttl_s"):
        TTLCache(max_entries=1, ttl_s=0)
