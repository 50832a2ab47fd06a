"""Dynamic micro-batching: concurrent /predict requests share model calls.

Each request's task code tokenizes in its own thread and calls the model as usual; the model it
holds is a `BatchedModel`, whose call hands the padded tensors to the process's one model thread
and waits. That thread takes every call queued for the same model (and, for LoRA adapters, for the
same base model) at once, sorts their rows by real length, runs them in chunks padded to the
longest row of each chunk within a token budget, and hands each call its own rows back, in order.

There is no fixed wait: a request that finds the model idle runs at once (a lone request is not
slowed), and requests arriving while the model is busy form the next batch. Only when the last
batch held several calls (the model is under load) does the thread wait up to `max_wait_ms` for
more calls to join, and never beyond the token budget.
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
        metrics: Metrics | None = None,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000
        self.threads = threads
        self.metrics = metrics
        self._pending: list[_Call] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
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
            self._pending.append(call)
            self._cond.notify()
        return call.future.result()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="model-thread", daemon=True)
            self._thread.start()

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
                self._run(calls)

    def _take(self) -> list[_Call] | None:
        """The calls of the next batch: the oldest call's group, gathered as described above."""
        with self._cond:
            while not self._pending and not self._stopped:
                self._cond.wait()
            if self._stopped:
                return None
            if self._last_batch_calls > 1 and self.max_wait > 0:
                deadline = self._pending[0].enqueued + self.max_wait
                while (remaining := deadline - time.perf_counter()) > 0:
                    if self._group_tokens(self._pending[0]) >= self.max_batch_tokens:
                        break
                    self._cond.wait(remaining)
            head = self._pending[0]
            calls = [c for c in self._pending if self._joins(head, c)]
            taken = set(map(id, calls))
            self._pending = [c for c in self._pending if id(c) not in taken]
            self._last_batch_calls = len(calls)
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
        outputs: dict[int, dict[str, torch.Tensor]] = {}
        start = 0
        try:
            while start < len(rows):
                end = start + 1
                while end < len(rows) and end - start < self.max_batch_rows:
                    longest = rows[end][0].lengths[rows[end][1]]
                    if longest * (end - start + 1) > self.max_batch_tokens:
                        break
                    end += 1
                self._run_chunk(runner, rows[start:end], outputs)
                start = end
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
