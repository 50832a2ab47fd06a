"""Per-key token buckets, kept in the API process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from app.core.errors import TooManyRequests


class RateLimiter:
    """`per_minute` sustained requests per key with bursts up to `burst`; 0 turns it off."""

    def __init__(
        self, *, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for `key`, or raise TooManyRequests with the wait until the next."""
        if self.rate <= 0:
            return
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise TooManyRequests(
                    f"rate limit exceeded for this API key ({int(self.rate * 60)} requests per "
                    f"minute, bursts of {int(self.burst)}); retry in {wait:.1f} s",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)
