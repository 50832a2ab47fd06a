"""The predictor cache: LRU eviction, one load per model under concurrency, failures not cached."""

from __future__ import annotations

import threading
import time

import pytest

from app.predict.cache import LRUCache, PredictorCache


def test_least_recently_used_is_evicted() -> None:
    cache: LRUCache[str] = LRUCache(2)
    cache.get_or_load("a", lambda: "A")
    cache.get_or_load("b", lambda: "B")
    assert cache.get_or_load("a", lambda: "never") == "A"  # a is now the most recent
    cache.get_or_load("c", lambda: "C")
    assert cache.keys() == ["a", "c"]
    cache.evict("a")
    assert cache.keys() == ["c"] and len(cache) == 1


def test_concurrent_requests_load_once() -> None:
    cache = PredictorCache(2)
    calls: list[int] = []
    barrier = threading.Barrier(8)

    def loader() -> object:
        calls.append(1)
        time.sleep(0.05)
        return object()

    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(cache.get_or_load("m", loader))  # type: ignore[arg-type]

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(r) for r in results}) == 1


def test_failed_load_is_not_cached() -> None:
    cache: LRUCache[str] = LRUCache(1)

    def broken() -> str:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        cache.get_or_load("m", broken)
    assert cache.get_or_load("m", lambda: "ok") == "ok"


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LRUCache(0)
