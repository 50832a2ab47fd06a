"""Sweep trials report each evaluation to their Optuna study and stop when its pruner says so.

A trial is an ordinary job whose row names its sweep; its evaluations go to the study as
intermediate values, numbered by epoch (1 for the evaluation at the end of the first epoch), so
trials of different batch sizes compare at the same point. Pruning stops the job with
TrialPruned, which the worker records as status `pruned` (worker/jobs.py). A data-parallel trial
(resources.processes > 1) is not pruned: its ranks would have to stop together.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from app.core.config import Settings
from app.db.models import Job, Sweep, SweepTrial
from app.db.session import session_scope
from worker.training.state import AttemptFence
from worker.training.world import World

if TYPE_CHECKING:
    import optuna
    from transformers import TrainerCallback

log = logging.getLogger("tuneserve.worker")


class TrialPruned(Exception):
    """The sweep's pruner stopped this trial; `metrics` are its last evaluation."""

    def __init__(self, message: str, *, metrics: dict[str, Any]) -> None:
        super().__init__(message)
        self.metrics = metrics


def evaluation_step(epoch: float | None) -> int:
    """The intermediate value's step: the epoch an evaluation closes (1 for the first)."""
    return max(1, math.ceil(round(float(epoch or 0.0), 2)))


def sweep_pruning(
    settings: Settings, fence: AttemptFence, job: Job, world: World
) -> TrainerCallback | None:
    """The callback that reports a sweep trial's evaluations, or None for any other job (or a
    sweep without pruning, or a data-parallel trial)."""
    if job.sweep_id is None or world.size > 1:
        return None
    with session_scope(fence.factory) as session:
        sweep = session.get(Sweep, job.sweep_id)
        # The trial row is written with the job, in the same transaction.
        number = session.scalar(select(SweepTrial.number).where(SweepTrial.job_id == job.id))
        if sweep is None or number is None or not sweep.pruning:
            return None
        session.expunge(sweep)
    from app.sweep import study as studies
    from app.sweep.trials import metric_key

    try:
        import optuna

        study = studies.load_study(settings, sweep)
        storage = studies.storage(settings)
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(sweep.id), number
        )
        trial = optuna.trial.Trial(study, trial_id)
    except Exception:  # noqa: BLE001  (the study's trouble never fails the training)
        log.warning("job %s: its sweep's study cannot be read; not pruned", job.id, exc_info=True)
        fence.warning(f"sweep {sweep.id}: its study could not be read; this trial is not pruned")
        return None
    return _callback(trial, fence, metric=metric_key(sweep.metric), number=number)


def _median_at(study: optuna.Study, step: int) -> float | None:
    from optuna.trial import TrialState

    values = [
        t.intermediate_values[step]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if step in t.intermediate_values
    ]
    return statistics.median(values) if values else None


def _callback(
    trial: optuna.trial.Trial, fence: AttemptFence, *, metric: str, number: int
) -> TrainerCallback:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    from worker.training.callbacks import clean_eval_metrics

    class SweepPruning(TrainerCallback):
        def on_evaluate(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            metrics: dict[str, Any] | None = None,
            **kw: Any,
        ) -> None:
            cleaned = clean_eval_metrics(metrics or {})
            value = cleaned.get(metric)
            if not isinstance(value, int | float) or not math.isfinite(value):
                return
            step = evaluation_step(state.epoch)
            try:
                trial.report(float(value), step)
                pruned = trial.should_prune()
            except Exception:  # noqa: BLE001  (the study's trouble never fails the training)
                log.warning("job %s: could not report to its sweep", fence.job_id, exc_info=True)
                return
            if not pruned:
                return
            median = _median_at(trial.study, step)
            against = f" the median {median:.4f} of" if median is not None else ""
            raise TrialPruned(
                f"job pruned: sweep trial {number} stopped early at epoch {step}: {metric} "
                f"{value:.4f} is worse than{against} the sweep's completed trials at that epoch",
                metrics=cleaned,
            )

    return SweepPruning()
