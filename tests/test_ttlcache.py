"""The hot path's short-lived lookups: entries expire, capacity holds, 0 remembers nothing."""

from __future__ import annotations

from app.core.ttlcache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_time() -> None:
    clock = Clock()
    cache: TTLCache[str, int] = TTLCache(2.0, clock=clock)
    cache.put("a", 1)
    clock.now += 1.9
    assert cache.get("a") == 1
    clock.now += 0.2
    assert cache.get("a") is None and len(cache) == 0
    cache.put("a", 2)  # stored again: a new lifetime
    clock.now += 1.0
    assert cache.get("a") == 2


def test_capacity_drops_the_oldest_and_clear_forgets_all() -> None:
    cache: TTLCache[int, int] = TTLCache(60.0, capacity=3, clock=Clock())
    for i in range(5):
        cache.put(i, i)
    assert [cache.get(i) for i in range(5)] == [None, None, 2, 3, 4]
    cache.clear()
    assert cache.get(4) is None


def test_zero_seconds_remembers_nothing() -> None:
    cache: TTLCache[str, int] = TTLCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None
