"""The task's trivial baseline beside a job's evaluation, the verdict against it, and the warnings
a job gets when its model is no better than the baseline or its training loss did not fall."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.ml.quality import Quality, loss_warning, required, verdict, verdict_warning
from worker.training.state import AttemptFence

if TYPE_CHECKING:
    import datasets
    from pydantic import BaseModel

    from app.ml.tasks import TaskSpec


@dataclass
class Judgement:
    """What a job records beside its model's metrics."""

    baseline_metrics: dict[str, float]
    quality: Quality | None
    warnings: list[str] = field(default_factory=list)


def task_baseline(
    fence: AttemptFence,
    task: TaskSpec,
    train: datasets.Dataset,
    validation: datasets.Dataset,
    *,
    label_names: Sequence[str],
    options: BaseModel,
) -> dict[str, float]:
    """The task's trivial baseline on the validation rows, logged to the job's events."""
    baseline = task.baseline_metrics(train, validation, label_names=label_names, options=options)
    primary = task.primary_metric
    fence.log(
        f"trivial baseline on the {validation.num_rows} validation rows: {primary} "
        f"{baseline[primary]:.4f} (the model needs {required(baseline[primary]):.4f})",
        baseline_metrics=baseline,
    )
    return baseline


def train_losses(log_history: Sequence[dict[str, Any]]) -> list[float]:
    """The training losses the Trainer logged, in order (a resumed run's include its earlier
    attempts', restored with the checkpoint's state)."""
    return [
        float(entry["loss"]) for entry in log_history if isinstance(entry.get("loss"), int | float)
    ]


def judge(
    fence: AttemptFence,
    task: TaskSpec,
    *,
    metrics: dict[str, Any],
    baseline: dict[str, float],
    rows: int,
    losses: Sequence[float] = (),
) -> Judgement:
    """The verdict on the model's metrics against the baseline; a warning event for each thing
    the user should act on, also kept on the job row (`warnings` of GET /jobs/{id})."""
    primary = task.primary_metric
    quality = verdict(metrics, baseline, primary=primary, rows=rows)
    warnings: list[str] = []
    loss_text = loss_warning(losses)
    if loss_text is not None:
        fence.warning(loss_text, kind="training_loss", logged_losses=len(losses))
        warnings.append(loss_text)
    text = verdict_warning(quality, metrics, baseline, primary=primary, rows=rows)
    if text is not None:
        assert quality is not None
        fence.warning(
            text,
            kind="quality",
            quality=quality,
            metric=primary,
            value=metrics.get(primary),
            baseline=baseline.get(primary),
            required=required(float(baseline[primary])),
            validation_rows=rows,
        )
        warnings.append(text)
    if quality is not None:
        fence.log(f"quality: {quality}", quality=quality)
    if warnings:
        fence.update(training_warnings=warnings)
    return Judgement(baseline, quality, warnings)
