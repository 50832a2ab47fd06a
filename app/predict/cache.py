"""A thread-safe LRU of loaded predictors within a count and a memory budget; each model loads once
even under concurrent requests."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from app.predict.predictor import Predictor
from app.predict.shared import SharedBases

if TYPE_CHECKING:
    from app.monitoring.metrics import Metrics

T = TypeVar("T")


class LRUCache(Generic[T]):
    """At most `capacity` values, and at most `budget` by `size()` (the newest value is kept even
    alone over it); the least recently used are dropped first and handed to `on_drop`."""

    def __init__(
        self,
        capacity: int,
        *,
        metrics: Metrics | None = None,
        budget: int | None = None,
        size: Callable[[], int] | None = None,
        on_drop: Callable[[T], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.metrics = metrics
        self.budget = budget
        self._size = size
        self._on_drop = on_drop
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()
        # One lock per key being loaded, so two requests for one model load it once
        # while requests for other (cached) models are not held up.
        self._loading: dict[str, threading.Lock] = {}

    def get(self, key: str) -> T | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def loaded(self, key: str) -> T | None:
        """The cached value for `key` (counted as a hit), or None without loading it."""
        value = self.get(key)
        if value is not None:
            self._count("hit")
        return value

    def get_or_load(self, key: str, loader: Callable[[], T]) -> T:
        """The cached value for `key`, or `loader()`'s, cached. A failed load caches nothing."""
        value = self.loaded(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            try:
                value = self.get(key)
                if value is not None:
                    self._count("hit")  # loaded by the request this one waited for
                    return value
                started = time.perf_counter()
                try:
                    value = loader()
                except Exception:
                    self._count("load_failure")
                    raise
                if self.metrics is not None:
                    self.metrics.model_load_seconds.observe(time.perf_counter() - started)
                self._count("load")
                self._put(key, value)
                return value
            finally:
                with self._lock:
                    if self._loading.get(key) is key_lock:
                        del self._loading[key]

    def _put(self, key: str, value: T) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
        self._shrink()

    def _over(self) -> bool:
        if len(self._items) > self.capacity:
            return True
        return self.budget is not None and self._size is not None and self._size() > self.budget

    def _shrink(self) -> None:
        """Drop least recently used values until within capacity and budget."""
        while True:
            with self._lock:
                if len(self._items) <= 1 or not self._over():
                    return
                _, dropped = self._items.popitem(last=False)
            self._count("eviction")
            # Outside the lock: freeing a shared adapter waits for the batch using it.
            if self._on_drop is not None:
                self._on_drop(dropped)

    def _count(self, event: str) -> None:
        if self.metrics is not None:
            self.metrics.cache_events.labels(event).inc()

    def values(self) -> list[T]:
        with self._lock:
            return list(self._items.values())

    def evict(self, key: str) -> None:
        """Forget `key` (a deleted model)."""
        with self._lock:
            dropped = self._items.pop(key, None)
        if dropped is not None and self._on_drop is not None:
            self._on_drop(dropped)

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._items.values())
            self._items.clear()
        for value in dropped:
            if self._on_drop is not None:
                self._on_drop(value)

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class PredictorCache(LRUCache[Predictor]):
    """Loaded predictors by model id: `get_or_load(model_id, lambda: load_predictor(...))`.

    The memory budget counts each predictor's own weights plus, once, each base model its
    adapters share; a dropped predictor frees what it holds once no request still uses it.
    """

    def __init__(
        self,
        capacity: int,
        *,
        budget_bytes: int | None = None,
        shared: SharedBases | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.shared = shared
        super().__init__(
            capacity,
            metrics=metrics,
            budget=budget_bytes,
            size=self.total_bytes,
            on_drop=lambda predictor: predictor.close(),
        )

    def memory(self) -> dict[str, int]:
        """Bytes of weights (parameters and buffers) of each loaded model and shared base."""
        sizes = {p.model_id: p.weight_bytes for p in self.values()}
        if self.shared is not None:
            sizes |= self.shared.memory()
        return sizes

    def total_bytes(self) -> int:
        # Called with the cache lock held: reads the items directly.
        total = sum(p.weight_bytes for p in self._items.values())
        if self.shared is not None:
            total += sum(self.shared.memory().values())
        return total
