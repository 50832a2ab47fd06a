"""Dynamic micro-batching: concurrent /predict requests share model calls.

Each request's task turns its inputs into feature rows in the request's own thread and submits
them here. A free model thread takes every call queued for the same model (and, for LoRA adapters,
for the same base model) at once and runs all their rows as `runtime.run_rows` does: sorted by
real length, cut into chunks where padding costs less than another model call would
(`plan_chunks`), each chunk padded to its longest row within a token budget; each call gets its
own rows' outputs back, in order.

There is no fixed wait: a request that finds nothing queued and a model slot free runs its model
call at once, in its own thread (a lone request is not slowed, not even by a hand-over), and
requests arriving while the slots are busy form the next batch, which a model thread takes. Only
when the last batch held several calls (the model is under load) does a thread wait up to
`max_wait_ms` for more calls to join, and never beyond the token budget.

A request on the event loop (`submit_async`, small requests: see app/predict/router.py) never
runs a model call itself: its call always goes to the model threads, and its task resumes when the
call's future is done. A call whose waiter gave up (its task cancelled) before a model thread took
it is dropped unrun.

Several model threads (`workers`, one torch thread each by default) use several cores without
one model call's threads waiting on each other: under load each takes the next batch while the
others run theirs. A runner marked not `concurrent` runs in one thread at a time (its calls wait
for it while the other threads take other models' calls). A runner that takes at most
`max_rows` rows a run (ONNX int8: one, see app/ml/runtimes.py) gets only the calls that fit, with
no wait, and the other model threads take the next ones.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from app.predict.runtime import (
    CHUNK_OVERHEAD_TOKENS,
    FeatureRow,
    ModelRunner,
    RowOutputs,
    row_length,
    run_rows,
)

if TYPE_CHECKING:
    from app.monitoring.metrics import Metrics

log = logging.getLogger("tuneserve.batcher")


@dataclass
class _Call:
    runner: ModelRunner
    adapter: str | None
    rows: Sequence[FeatureRow]
    lengths: list[int]
    enqueued: float
    future: Future[list[RowOutputs]] = field(default_factory=Future)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)


class Batcher:
    """The process's model thread and its queue of calls."""

    def __init__(
        self,
        *,
        max_batch_tokens: int = 8192,
        max_batch_rows: int = 64,
        max_wait_ms: float = 2.0,
        threads: int = 1,
        workers: int = 1,
        chunk_overhead_tokens: int = CHUNK_OVERHEAD_TOKENS,
        metrics: Metrics | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.threads = threads
        self.workers = max(1, workers)
        self.chunk_overhead_tokens = chunk_overhead_tokens
        self.metrics = metrics
        self._pending: list[_Call] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        # Batches being run (by model threads, or by a caller that found a slot free), at most
        # `workers`; and the groups among them whose runners are not concurrent.
        self._running = 0
        self._busy: set[Hashable] = set()
        self._stopped = False
        self._last_batch_calls = 0

    # The request side.

    def submit(
        self, runner: ModelRunner, rows: Sequence[FeatureRow], adapter: str | None
    ) -> list[RowOutputs]:
        """Every row's outputs (unpadded, in order), the rows run with other calls' rows."""
        if not rows:
            return []
        with self._cond:
            call = self._accept(runner, rows, adapter)
            # Nothing queued and a model slot free: run it here, sparing two thread wake-ups.
            inline = not self._pending and self._running < self.workers and self._free(runner)
            if inline:
                self._claim(runner)
                self._last_batch_calls = 1
                call.future.set_running_or_notify_cancel()
            else:
                self._pending.append(call)
                self._cond.notify()
        if inline:
            self._run_claimed([call], here=True)
        return call.future.result()

    async def submit_async(
        self, runner: ModelRunner, rows: Sequence[FeatureRow], adapter: str | None
    ) -> list[RowOutputs]:
        """As `submit`, awaited on an event loop: the call always goes to a model thread."""
        if not rows:
            return []
        with self._cond:
            call = self._accept(runner, rows, adapter)
            self._pending.append(call)
            self._cond.notify()
        return await asyncio.wrap_future(call.future)

    def _accept(
        self, runner: ModelRunner, rows: Sequence[FeatureRow], adapter: str | None
    ) -> _Call:
        """A new call of these rows (under the lock), the model threads started."""
        if self._stopped:
            raise RuntimeError("the model thread has stopped")
        self._ensure_thread()
        lengths = [row_length(r) for r in rows]
        return _Call(runner, adapter, rows, lengths, enqueued=time.perf_counter())

    def _free(self, runner: ModelRunner) -> bool:
        return runner.concurrent or runner.group not in self._busy

    def _claim(self, runner: ModelRunner) -> None:
        self._running += 1
        if not runner.concurrent:
            self._busy.add(runner.group)

    def _run_claimed(self, calls: list[_Call], *, here: bool = False) -> None:
        """Run a batch whose slot was claimed, then give the slot back."""
        runner = calls[0].runner
        try:
            if here:
                from app.ml import device as devices

                devices.set_torch_threads(self.threads)
            self._run(calls)
        finally:
            with self._cond:
                self._running -= 1
                if not runner.concurrent:
                    self._busy.discard(runner.group)
                self._cond.notify_all()

    def _ensure_thread(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.workers:
            thread = threading.Thread(
                target=self._loop, name=f"model-thread-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    # The model thread.

    def _loop(self) -> None:
        from app.ml import device as devices

        devices.set_torch_threads(self.threads)
        while True:
            calls = self._take()
            if calls is None:
                return
            self._run_claimed(calls)

    def _take(self) -> list[_Call] | None:
        """The calls of the next batch: the oldest runnable call's group, gathered as described
        above (a group another thread is running, and may not share, waits for it)."""
        with self._cond:
            while True:
                if self._stopped:
                    return None
                if any(c.future.cancelled() for c in self._pending):
                    self._pending = [c for c in self._pending if not c.future.cancelled()]
                head = next((c for c in self._pending if self._free(c.runner)), None)
                if head is None or self._running >= self.workers:
                    self._cond.wait()
                    continue
                calls = [c for c in self._pending if self._joins(head, c)]
                if head.runner.max_rows is not None:
                    calls = _within_rows(calls, head.runner.max_rows)
                elif self._last_batch_calls > 1 and self.max_wait > 0:
                    remaining = head.enqueued + self.max_wait - time.perf_counter()
                    if remaining > 0 and sum(c.tokens for c in calls) < self.max_batch_tokens:
                        self._cond.wait(remaining)
                        continue  # look again: another thread may have taken it
                taken = set(map(id, calls))
                self._pending = [c for c in self._pending if id(c) not in taken]
                # From here a waiter can no longer cancel; one that already did is left out.
                calls = [c for c in calls if c.future.set_running_or_notify_cancel()]
                if not calls:
                    continue
                self._last_batch_calls = len(calls)
                self._claim(head.runner)
                return calls

    @staticmethod
    def _joins(head: _Call, call: _Call) -> bool:
        if call.runner is head.runner:
            return head.runner.mixed_adapters or call.adapter == head.adapter
        return head.runner.mixed_adapters and call.runner.group == head.runner.group

    def _run(self, calls: list[_Call]) -> None:
        now = time.perf_counter()
        runner = calls[0].runner
        if self.metrics is not None:
            for call in calls:
                self.metrics.queue_wait.labels(runner.label).observe(now - call.enqueued)
        rows = [row for call in calls for row in call.rows]
        adapters = [call.adapter for call in calls for _ in call.rows]
        metrics = self.metrics
        try:
            outputs = run_rows(
                runner,
                rows,
                adapters,
                max_tokens=self.max_batch_tokens,
                max_rows=self.max_batch_rows,
                overhead=self.chunk_overhead_tokens,
                observe_batch=(
                    None
                    if metrics is None
                    else lambda n: metrics.batch_size.labels(runner.label).observe(n)
                ),
            )
        except Exception as exc:  # every waiting request learns of it
            log.exception("batched model call failed")
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        start = 0
        for call in calls:
            call.future.set_result(outputs[start : start + len(call.rows)])
            start += len(call.rows)


def _within_rows(calls: list[_Call], max_rows: int) -> list[_Call]:
    """The first calls, in order, whose rows fit in `max_rows` (at least one call): a runner
    that takes few rows a run leaves the rest to the other model threads rather than running
    them all one after another in this one."""
    taken, rows = [calls[0]], len(calls[0].rows)
    for call in calls[1:]:
        if rows + len(call.rows) > max_rows:
            break
        taken.append(call)
        rows += len(call.rows)
    return taken
