"""How far a training run is: percent done, seconds spent, seconds left, samples per second.

Arithmetic over a clock and step counts only, so it is tested with a fake clock. The rate counts
the steps this attempt has trained itself: an attempt resumed from a checkpoint starts at the
checkpoint's step, and the steps it skipped to get there took none of its time. Time spent by
earlier attempts comes from the checkpoint it resumed from (`elapsed_s` in its manifest).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from app.job.schemas import percent_done


def earlier_seconds(manifest: dict[str, Any]) -> float:
    """Seconds of training behind a checkpoint (0 for one saved without the figure)."""
    value = manifest.get("elapsed_s")
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return float(value)
    return 0.0


class ProgressTimer:
    """Elapsed time, ETA and throughput of one attempt's training, from `start` to `finish`."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.earlier_s = 0.0
        self.samples_per_step = 0
        self._started: float | None = None
        self._first_step = 0
        self._finished: float | None = None

    def start(self, step: int, *, samples_per_step: int, earlier_s: float = 0.0) -> None:
        """Training (re)starts at `step`, after `earlier_s` seconds spent by earlier attempts."""
        self._started = self.clock()
        self._first_step = step
        self.samples_per_step = samples_per_step
        self.earlier_s = earlier_s
        self._finished = None

    def finish(self) -> None:
        """Training ended: the clock stops and the run counts as 100% done."""
        if self._finished is None:
            self._finished = self.clock()

    def _attempt_seconds(self) -> float:
        if self._started is None:
            return 0.0
        now = self._finished if self._finished is not None else self.clock()
        return max(0.0, now - self._started)

    def elapsed(self) -> float:
        """Seconds of training so far, earlier attempts' included."""
        return self.earlier_s + self._attempt_seconds()

    def snapshot(self, step: int, total: int) -> dict[str, float | None]:
        """`percent`, `elapsed_s`, `eta_s` and `samples_per_second` at `step` of `total`; the last
        two are None until this attempt has trained a step."""
        seconds = self._attempt_seconds()
        trained = step - self._first_step
        rate = trained / seconds if trained > 0 and seconds > 0 else None
        eta: float | None
        if self._finished is not None:
            percent, eta = 100.0, 0.0
        else:
            percent = percent_done(step, total)
            eta = round(max(0, total - step) / rate, 1) if rate is not None else None
        return {
            "percent": percent,
            "elapsed_s": round(self.elapsed(), 1),
            "eta_s": eta,
            "samples_per_second": (
                round(rate * self.samples_per_step, 2) if rate is not None else None
            ),
        }
