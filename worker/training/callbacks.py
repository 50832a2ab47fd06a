"""A TrainerCallback that reports progress to the job row and stops training on cancellation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from worker.training.progress import ProgressTimer, earlier_seconds
from worker.training.state import AttemptFence, JobCancelled

# Trainer bookkeeping that is not a model-quality metric.
_RUNTIME_KEYS = {
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    # Reported by an evaluation outside training (the first one of a Trainer).
    "eval_model_preparation_time",
    "epoch",
}
# Training-step events kept through a database outage before the oldest are given up.
MAX_PENDING = 10_000


def clean_eval_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Trainer's eval_* metrics without the prefix (eval_loss keeps its name) or runtime figures."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in _RUNTIME_KEYS:
            continue
        if key == "eval_loss":
            out[key] = value
        elif key.startswith("eval_"):
            out[key.removeprefix("eval_")] = value
        else:
            out[key] = value
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


class JobProgressCallback(TrainerCallback):
    """Heartbeat and progress every `poll_seconds`, loss per logging step, eval per epoch."""

    def __init__(
        self,
        fence: AttemptFence,
        *,
        poll_seconds: float,
        primary_metric: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fence = fence
        self.poll_seconds = poll_seconds
        self.primary_metric = primary_metric
        self.clock = clock
        self.last_sync = clock()
        self.last_loss: float | None = None
        self.step_seconds = 0.0
        self._step_started: float | None = None
        # (global step, cleaned metrics) of the latest evaluation.
        self.last_eval: tuple[int, dict[str, Any]] | None = None
        self.timer = ProgressTimer(clock=clock)
        self.earlier_s = 0.0
        # Training-step metrics events not yet written: one transaction every poll_seconds
        # rather than one a step. Kept across a database outage (the next write takes them).
        self.pending: list[tuple[str, dict[str, Any]]] = []
        self.flushed = False

    def resuming(self, manifest: dict[str, Any]) -> None:
        """Training goes on from this checkpoint: its elapsed time counts as already spent."""
        self.earlier_s = earlier_seconds(manifest)

    def _detail(self, state: TrainerState) -> dict[str, float | None]:
        return self.timer.snapshot(state.global_step, state.max_steps)

    def _sync(self, state: TrainerState, *, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self.last_sync < self.poll_seconds:
            return
        self.last_sync = now
        values: dict[str, Any] = {
            "progress_step": state.global_step,
            "progress_total": state.max_steps,
            "epoch": float(state.epoch or 0.0),
            "progress_detail": self._detail(state),
        }
        if self.last_loss is not None:
            values["train_loss"] = self.last_loss
        self.flush(state)
        if self.fence.progress(**values):
            raise JobCancelled()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # A resumed run begins at its checkpoint's step.
        per_step = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        self.timer.start(state.global_step, samples_per_step=per_step, earlier_s=self.earlier_s)
        self._sync(state, force=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Also after an early stop, short of max_steps: training is done either way.
        self.timer.finish()
        self._sync(state, force=True)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Every step up to a checkpoint is written before a resume could start from it.
        self.flush(state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._step_started = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self._step_started is not None:
            self.step_seconds += time.perf_counter() - self._step_started
            self._step_started = None
        self._sync(state)

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Evaluation can be long too: keep polling for cancellation during it.
        self._sync(state)

    def flush(self, state: TrainerState) -> None:
        """Write the pending training-step events with the job's progress, in one transaction."""
        if not self.pending:
            return
        self.flushed = True
        written = self.fence.metrics_batch(
            self.pending,
            progress_step=state.global_step,
            progress_total=state.max_steps,
            epoch=float(state.epoch or 0.0),
            train_loss=self.last_loss,
            progress_detail=self._detail(state),
        )
        if written or len(self.pending) >= MAX_PENDING:
            self.pending = []

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not logs or "loss" not in logs:
            return
        self.last_loss = _finite(logs["loss"])
        data = {
            "kind": "train",
            "step": state.global_step,
            "total": state.max_steps,
            "epoch": round(float(state.epoch or 0.0), 2),
            **self._detail(state),
            "loss": self.last_loss,
            "learning_rate": _finite(logs.get("learning_rate")),
            "grad_norm": _finite(logs.get("grad_norm")),
        }
        self.pending.append(
            (f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}", data)
        )
        if len(self.pending) == 1 and not self.flushed:
            self.flush(state)  # the first step at once: a client sees the job move

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        cleaned = clean_eval_metrics(metrics or {})
        self.last_eval = (state.global_step, cleaned)
        self.flush(state)  # the steps before it come first
        epoch = float(state.epoch or 0.0)
        headline = ", ".join(
            f"{k} {cleaned[k]:.4f}"
            for k in (self.primary_metric, "eval_loss")
            if isinstance(cleaned.get(k), int | float)
        )
        self.fence.metrics(
            f"evaluation at epoch {epoch:.2f}: {headline}",
            {"kind": "eval", "step": state.global_step, "epoch": round(epoch, 2), **cleaned},
        )
