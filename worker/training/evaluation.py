"""Evaluate a registered model again exactly as its training evaluated it.

The rows are the ones its job was evaluated on (its validation dataset, or its held-out split
drawn again from the same train set with the same seed and fraction, checked against what its
metadata recorded), tokenized at its max_length with its task options, and evaluated in dataset
order at its batch size by the Trainer with the task's compute_metrics, as training does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import (
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from app.core.config import Settings
from app.core.errors import ServiceError
from worker.training import data as training_data
from worker.training.callbacks import clean_eval_metrics
from worker.training.plan import ordered_eval_trainer
from worker.training.runner import JobInputs
from worker.training.state import AttemptFence, JobCancelled

if TYPE_CHECKING:
    import datasets
    import torch
    from pydantic import BaseModel
    from transformers import PreTrainedTokenizerBase

    from app.ml.tasks import TaskSpec

VALIDATION_MISMATCH = "validation_rows_mismatch"


@dataclass
class EvalSetup:
    """How a registered model was evaluated, from its metadata, to evaluate it the same way."""

    label_names: list[str]
    max_length: int
    batch_size: int
    label_smoothing: float
    options: BaseModel


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    seconds: float
    samples_per_second: float


class EvalProgress(TrainerCallback):
    """Progress (batches of every evaluation that shares it, of `total`) and cancellation."""

    def __init__(self, fence: AttemptFence, *, total: int, poll_seconds: float) -> None:
        self.fence = fence
        self.total = total
        self.poll_seconds = poll_seconds
        self.done = 0
        self.last_sync = time.monotonic()

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.advance()

    def advance(self) -> None:
        """One more batch evaluated (by the Trainer, or by a loop of its own)."""
        self.done += 1
        if time.monotonic() - self.last_sync < self.poll_seconds:
            return
        self.last_sync = time.monotonic()
        if self.fence.progress(progress_step=self.done, progress_total=self.total):
            raise JobCancelled()


def eval_setup(task: TaskSpec, meta: dict[str, Any], fallback_labels: list[str]) -> EvalSetup:
    """The evaluation settings a model's metadata records (as its job resolved them)."""
    hp: dict[str, Any] = meta.get("hyperparameters") or {}
    return EvalSetup(
        label_names=list(meta.get("label_names") or fallback_labels),
        max_length=int(meta.get("max_length") or hp.get("max_length") or 128),
        batch_size=int(hp.get("batch_size") or 32),
        label_smoothing=float(hp.get("label_smoothing") or 0.0),
        options=task.options_model.model_validate(meta.get("task_options") or {}),
    )


def evaluation_rows(
    settings: Settings, inputs: JobInputs, parent_meta: dict[str, Any]
) -> tuple[datasets.Dataset, datasets.Dataset, str]:
    """The rows both models are evaluated on, the train rows beside them (the whole train set, or
    what the held-out split leaves: the task's trivial baseline is built from them), and how the
    rows came about ("given", or the kind of the held-out split). The parent's own rows are
    checked against what its metadata recorded."""
    recorded: dict[str, Any] = parent_meta.get("validation_dataset") or {}
    parent_train = (parent_meta.get("train_dataset") or {}).get("id")
    if inputs.validation_row is not None:
        rows = training_data.load_rows(settings, inputs.validation_row)
        train = training_data.load_rows(settings, inputs.train_row)
        kind = "given"
        own = recorded.get("id") == inputs.validation_row.id
    else:
        hp = inputs.spec.hyperparameters
        split = training_data.hold_out(
            training_data.load_rows(settings, inputs.train_row),
            fraction=hp.validation_split,
            seed=inputs.spec.seed,
            stratify_column=inputs.task.stratify_column(),
        )
        rows, train, kind, own = split.validation, split.train, split.kind, True
        if recorded.get("id") is not None or parent_train != inputs.train_row.id:
            raise ServiceError(
                f"the parent '{inputs.base.id}' was not evaluated on a split held out of "
                f"dataset '{inputs.train_row.id}'; name its validation dataset",
                code=VALIDATION_MISMATCH,
            )
    if own and (recorded.get("rows_used"), recorded.get("kind")) != (rows.num_rows, kind):
        raise ServiceError(
            f"the validation rows of '{inputs.base.id}' cannot be drawn again: it was evaluated "
            f"on {recorded.get('rows_used')} rows ({recorded.get('kind')}), this job has "
            f"{rows.num_rows} ({kind}); name a validation_dataset to compare on",
            code=VALIDATION_MISMATCH,
        )
    return rows, train, kind


def eval_args(setup: EvalSetup, *, output_dir: Path, seed: int) -> TrainingArguments:
    """Evaluation-only Trainer arguments, on the CPU."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_eval_batch_size=setup.batch_size,
        # Training evaluated a loss smoothed as its training loss was.
        label_smoothing_factor=setup.label_smoothing,
        seed=seed,
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # Quantized kernels run on the CPU only: both precisions are measured there.
        use_cpu=True,
    )


def evaluate(
    model: torch.nn.Module,
    *,
    args: TrainingArguments,
    features: datasets.Dataset,
    rows: datasets.Dataset,
    collator: Any,
    tokenizer: PreTrainedTokenizerBase,
    compute_metrics: Any,
    progress: EvalProgress,
) -> Evaluation:
    """The Trainer's evaluation of `model` in dataset order, timed after one warm-up batch."""
    import torch

    trainer = ordered_eval_trainer()(
        model=model,
        args=args,
        eval_dataset=features,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)
    # One batch first: lazy one-time setup (kernel selection, allocations) is not timed.
    first = range(min(args.per_device_eval_batch_size, len(features)))
    warm = collator([features[i] for i in first])
    with torch.inference_mode():
        model(**warm)
    started = time.perf_counter()
    metrics = trainer.evaluate()
    seconds = time.perf_counter() - started
    return Evaluation(
        metrics=clean_eval_metrics(metrics),
        seconds=round(seconds, 3),
        samples_per_second=round(rows.num_rows / max(seconds, 1e-9), 2),
    )


def headline(metrics: dict[str, Any], primary: str) -> str:
    """'accuracy 0.9106, eval_loss 0.2551' for a log line."""
    return ", ".join(
        f"{k} {metrics[k]:.4f}" for k in (primary, "eval_loss") if isinstance(metrics.get(k), float)
    )
