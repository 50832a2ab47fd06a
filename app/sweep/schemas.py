"""Sweep spec and sweep schemas: a job spec with search spaces, plus how to search."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.job.schemas import JobError

# The fields of a job spec (JobCreate) that a sweep takes, search spaces allowed in two.
JOB_FIELDS = (
    "task",
    "base_model",
    "train_dataset",
    "validation_dataset",
    "method",
    "hyperparameters",
    "task_options",
    "seed",
    "resources",
)
SPACE_HELP = (
    'Any value may be a search space: {"loguniform": [low, high]}, {"uniform": [low, high]}, '
    '{"int": [low, high]} (bounds included) or {"choice": [a, b, ...]}.'
)
MAX_TRIALS = 200
MAX_PARALLEL = 32
MAX_BUDGET_S = 30 * 24 * 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pruning(_Strict):
    """Stop a trial early when its evaluation is worse than the median of the completed trials'
    evaluations at the same point (Optuna's MedianPruner)."""

    type: Literal["median"] = "median"
    startup_trials: int = Field(
        default=3,
        ge=0,
        le=MAX_TRIALS,
        description="Completed trials needed before any trial is pruned.",
    )
    warmup_evaluations: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Evaluations a trial makes before it may be pruned (0: from its first).",
    )


class SweepCreate(_Strict):
    """Body of POST /v1/sweeps: a job spec as for POST /v1/jobs, with search spaces."""

    task: str = Field(description="As for a job.")
    base_model: str = Field(min_length=1, max_length=300, description="As for a job.")
    train_dataset: str | None = None
    validation_dataset: str | None = Field(
        default=None,
        description="Where each trial is evaluated (else a split held out of train_dataset, "
        "the same for every trial: it follows `seed`).",
    )
    method: dict[str, Any] = Field(
        default_factory=lambda: {"type": "full"},
        description=f"As for a job; every trial uses the same `type`. {SPACE_HELP}",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description=f"As for a job. {SPACE_HELP}"
    )
    task_options: dict[str, Any] = Field(default_factory=dict, description="As for a job.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Every trial's seed.")
    resources: dict[str, Any] = Field(default_factory=dict, description="As for a job.")
    metric: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description='The evaluation metric to optimise: one the task reports, or "loss" (the '
        "validation loss). Default: the task's primary metric.",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        default=None,
        description='Default: "maximize", or "minimize" for the metric "loss".',
    )
    max_trials: int = Field(default=10, ge=1, le=MAX_TRIALS, description="Trials in all.")
    parallel: int = Field(
        default=2, ge=1, le=MAX_PARALLEL, description="Trials queued or running at once."
    )
    time_budget_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_BUDGET_S,
        description="Seconds from submission after which no trial starts and the trials still "
        "queued or running are cancelled; the sweep then ends with the best trial so far.",
    )
    pruning: Pruning | None = Field(
        default_factory=Pruning,
        description="How trials are stopped early on their evaluations; null: never.",
    )
    alias: str | None = Field(
        default=None,
        max_length=64,
        description="An alias to point at the best trial's model when the sweep ends (not "
        "moved to a model no better than the task's trivial baseline).",
    )

    def job_spec(self) -> dict[str, Any]:
        """The job spec part, as sent (fields left out stay out: JobCreate fills them)."""
        sent = self.model_dump(mode="json", include=set(JOB_FIELDS), exclude_unset=True)
        return {"task": self.task, "base_model": self.base_model, **sent}


class SweepTrialRead(BaseModel):
    number: int = Field(description="The trial's number in the sweep, from 0.")
    state: str = Field(description="running, succeeded, pruned, failed or cancelled.")
    params: dict[str, Any] = Field(description="The sampled values, by parameter.")
    value: float | None = Field(
        description="The sweep's metric: the job's final evaluation, or for a pruned trial its "
        "last one."
    )
    job_id: str | None
    job_status: str | None = Field(description="Its job's status (null once deleted).")
    model_id: str | None
    metrics: dict[str, Any] | None = Field(description="Its job's evaluation metrics.")
    duration_s: float | None = Field(
        description="Seconds its job has run (its latest attempt), so far or in all."
    )
    error: JobError | None = None
    note: str | None = Field(default=None, description="Why it ended as it did, where not plain.")
    created_at: datetime
    finished_at: datetime | None


class SweepRead(BaseModel):
    id: str
    object: Literal["sweep"] = "sweep"
    task: str
    status: str = Field(
        description="running; cancelling (its trials are being stopped); then succeeded (at "
        "least one trial succeeded), failed (none did) or cancelled."
    )
    stop_reason: str | None = Field(
        description="Why no more trials start: max_trials, time_budget or cancelled."
    )
    spec: dict[str, Any] = Field(description="The job spec as submitted, search spaces in place.")
    search_space: dict[str, dict[str, Any]] = Field(
        description="The parameters searched, each with its space."
    )
    metric: str
    direction: str
    max_trials: int
    parallel: int
    time_budget_s: float | None
    pruning: dict[str, Any] | None
    alias: str | None
    trial_counts: dict[str, int] = Field(description="Trials by state.")
    trials: list[SweepTrialRead]
    best: SweepTrialRead | None = Field(description="The best succeeded trial so far.")
    best_model_id: str | None = Field(
        description="The best trial's model, set when the sweep ends."
    )
    notes: list[str] = Field(default_factory=list)
    created_at: datetime
    finished_at: datetime | None
    elapsed_s: float = Field(description="Seconds from submission to its end, or to now.")
