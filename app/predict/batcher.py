"""Dynamic micro-batching: concurrent /predict requests share model calls.

Each request's task code tokenizes in its own thread and calls the model as usual; the model it
holds is a `BatchedModel`, whose call hands the padded tensors to the process's model threads and
waits. A free model thread takes every call queued for the same model (and, for LoRA adapters, for
the same base model) at once, sorts their rows by real length, cuts them into chunks where padding
costs less than another model call would (`plan_chunks`), runs each chunk padded to its longest
row within a token budget, and hands each call its own rows back, in order.

There is no fixed wait: a request that finds nothing queued and a model slot free runs its model
call at once, in its own thread (a lone request is not slowed, not even by a hand-over), and
requests arriving while the slots are busy form the next batch, which a model thread takes. Only
when the last batch held several calls (the model is under load) does a thread wait up to
`max_wait_ms` for more calls to join, and never beyond the token budget.

Several model threads (`workers`, one torch thread each by default) use several cores without
one model call's threads waiting on each other: under load each takes the next batch while the
others run theirs. A runner marked not `concurrent` runs in one thread at a time (its calls wait
for it while the other threads take other models' calls).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from app.monitoring.metrics import Metrics

log = logging.getLogger("tuneserve.batcher")

# What one more model call costs, in padded tokens' worth of model time (all-MiniLM-L6-v2 on CPU,
# measured with SST-2 sentences: a call's fixed cost is about that of 24 tokens). Cutting a sorted
# batch where the padding saved exceeds it makes the batch cheaper.
CHUNK_OVERHEAD_TOKENS = 24


def plan_chunks(
    lengths: list[int],
    *,
    max_tokens: int,
    max_rows: int,
    overhead: int = CHUNK_OVERHEAD_TOKENS,
) -> list[tuple[int, int]]:
    """Cut rows sorted by length (shortest first) into chunks `[start, end)`.

    A chunk costs its rows times its longest row (the padded tokens) plus `overhead`; the plan is
    the cheapest of all cuts (dynamic programming over the cut points) in which every chunk has at
    most `max_rows` rows and `max_tokens` padded tokens (a row longer than that runs alone).
    """
    n = len(lengths)
    best = [0] + [0] * n  # best[j]: the cheapest plan of rows [0, j)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        best_cost, best_start = -1, end - 1
        for start in range(end - 1, max(-1, end - 1 - max_rows), -1):
            rows = end - start
            if rows > 1 and rows * width > max_tokens:
                break
            cost = best[start] + rows * width + overhead
            if best_cost < 0 or cost <= best_cost:  # ties: the longer chunk
                best_cost, best_start = cost, start
        best[end], cut[end] = best_cost, best_start
    chunks: list[tuple[int, int]] = []
    end = n
    while end > 0:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


class BatchOutput(dict[str, Any]):
    """A model output: tensors by name, also readable as attributes (`out.logits`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


@dataclass
class ModelRunner:
    """How to run one executable model: its module, the pad value of each input and whether
    its outputs have a sequence dimension (token-level tasks). `group` is what calls must share
    to run in one batch (the base model), and `forward(inputs, adapters)` runs a padded batch
    where `adapters[i]` names the adapter of row i (None for a plain model)."""

    module: Any
    group: Hashable
    label: str
    sequence_outputs: bool
    pad_values: Mapping[str, int]
    forward: Callable[[dict[str, torch.Tensor], list[str | None]], Mapping[str, torch.Tensor]]
    # Whether rows of different adapters may share one forward (LoRA's per-row adapters).
    mixed_adapters: bool = False
    # Whether two model threads may run this group's forward at the same time.
    concurrent: bool = True


@dataclass
class _Call:
    runner: ModelRunner
    adapter: str | None
    inputs: dict[str, torch.Tensor]
    lengths: list[int]
    enqueued: float
    future: Future[BatchOutput] = field(default_factory=Future)

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
        self, runner: ModelRunner, inputs: Mapping[str, torch.Tensor], adapter: str | None
    ) -> BatchOutput:
        """Run the model on one call's padded tensors (as a model call would), batched."""
        mask = inputs.get("attention_mask")
        batch = next(iter(inputs.values())).shape[0]
        width = next(iter(inputs.values())).shape[1]
        lengths = mask.sum(dim=1).tolist() if mask is not None else [width] * batch
        call = _Call(runner, adapter, {k: v.cpu() for k, v in inputs.items()}, lengths, 0.0)
        with self._cond:
            if self._stopped:
                raise RuntimeError("the model thread has stopped")
            self._ensure_thread()
            call.enqueued = time.perf_counter()
            # Nothing queued and a model slot free: run it here, sparing two thread wake-ups.
            inline = not self._pending and self._running < self.workers and self._free(runner)
            if inline:
                self._claim(runner)
                self._last_batch_calls = 1
            else:
                self._pending.append(call)
                self._cond.notify()
        if inline:
            self._run_claimed([call], here=True)
        return call.future.result()

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
                import torch

                from app.ml import device as devices

                devices.set_torch_threads(self.threads)
                with torch.inference_mode():
                    self._run(calls)
            else:
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
        import torch

        from app.ml import device as devices

        devices.set_torch_threads(self.threads)
        with torch.inference_mode():
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
                head = next((c for c in self._pending if self._free(c.runner)), None)
                if head is None or self._running >= self.workers:
                    self._cond.wait()
                    continue
                if self._last_batch_calls > 1 and self.max_wait > 0:
                    remaining = head.enqueued + self.max_wait - time.perf_counter()
                    if remaining > 0 and self._group_tokens(head) < self.max_batch_tokens:
                        self._cond.wait(remaining)
                        continue  # look again: another thread may have taken it
                calls = [c for c in self._pending if self._joins(head, c)]
                taken = set(map(id, calls))
                self._pending = [c for c in self._pending if id(c) not in taken]
                self._last_batch_calls = len(calls)
                self._claim(head.runner)
                return calls

    def _group_tokens(self, head: _Call) -> int:
        return sum(c.tokens for c in self._pending if self._joins(head, c))

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
        # Every row of every call, shortest first, cut into chunks within the token budget.
        rows = sorted(
            ((c, r) for c in calls for r in range(len(c.lengths))),
            key=lambda cr: cr[0].lengths[cr[1]],
        )
        chunks = plan_chunks(
            [call.lengths[r] for call, r in rows],
            max_tokens=self.max_batch_tokens,
            max_rows=self.max_batch_rows,
            overhead=self.chunk_overhead_tokens,
        )
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        try:
            for start, end in chunks:
                self._run_chunk(runner, rows[start:end], outputs)
        except Exception as exc:  # every waiting request learns of it
            log.exception("batched model call failed")
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(exc)
            return
        for call in calls:
            call.future.set_result(BatchOutput(outputs[id(call)]))

    def _run_chunk(
        self,
        runner: ModelRunner,
        rows: list[tuple[_Call, int]],
        outputs: dict[int, dict[str, torch.Tensor]],
    ) -> None:
        import torch

        width = max(call.lengths[r] for call, r in rows)
        names = list(rows[0][0].inputs)
        batch: dict[str, torch.Tensor] = {}
        for name in names:
            first = rows[0][0].inputs[name]
            tensor = torch.full(
                (len(rows), width), runner.pad_values.get(name, 0), dtype=first.dtype
            )
            for i, (call, r) in enumerate(rows):
                n = call.lengths[r]
                source = call.inputs[name][r]
                # Rows are padded on the right by the tokenizers used here; the real tokens
                # are where the attention mask is set.
                tensor[i, :n] = source[:n]
            batch[name] = tensor
        device = getattr(runner.module, "device", None)
        if device is not None and str(device) != "cpu":
            batch = {k: v.to(device) for k, v in batch.items()}
        result = runner.forward(batch, [call.adapter for call, _ in rows])
        if self.metrics is not None:
            self.metrics.batch_size.labels(runner.label).observe(len(rows))
        for key, value in result.items():
            if not isinstance(value, torch.Tensor):
                continue
            value = value.detach().cpu()
            for i, (call, r) in enumerate(rows):
                slot = outputs.setdefault(id(call), {})
                if key not in slot:
                    shape = list(value.shape[1:])
                    call_width = next(iter(call.inputs.values())).shape[1]
                    if runner.sequence_outputs:
                        shape[0] = call_width
                    slot[key] = torch.zeros((len(call.lengths), *shape), dtype=value.dtype)
                if runner.sequence_outputs:
                    n = min(width, slot[key].shape[1])
                    slot[key][r, :n] = value[i, :n]
                else:
                    slot[key][r] = value[i]


class BatchedModel:
    """Stands in for a model inside a task's predict: calls go through the batcher."""

    def __init__(self, batcher: Batcher, runner: ModelRunner, adapter: str | None = None) -> None:
        self._batcher = batcher
        self._runner = runner
        self._adapter = adapter

    def __call__(self, **inputs: torch.Tensor) -> BatchOutput:
        return self._batcher.submit(self._runner, inputs, self._adapter)

    def __getattr__(self, name: str) -> Any:
        # config, device, dtype...: the real model's.
        return getattr(self._runner.module, name)
