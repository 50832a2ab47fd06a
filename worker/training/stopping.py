"""Early stopping: when to evaluate, the Trainer's callback, and the best checkpoint restored."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.job.controls import LOSS_METRIC, greater_is_better
from app.job.schemas import ResolvedHyperparameters
from worker.training.callbacks import clean_eval_metrics

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback

    from worker.training.state import AttemptFence


def evaluation_args(hp: ResolvedHyperparameters) -> dict[str, Any]:
    """TrainingArguments for evaluation: once an epoch; with early stopping, at every checkpoint
    and with the best one restored at the end."""
    stopping = hp.early_stopping
    if stopping is None or stopping.metric is None:
        return {"eval_strategy": "epoch"}
    save_strategy = "epoch" if hp.checkpoint_every == "epoch" else "steps"
    return {
        # The Trainer judges a checkpoint by the evaluation made when it was saved.
        "eval_strategy": save_strategy,
        "eval_steps": hp.checkpoint_every if isinstance(hp.checkpoint_every, int) else None,
        "load_best_model_at_end": True,
        "metric_for_best_model": stopping.metric,
        "greater_is_better": greater_is_better(stopping.metric),
        # The patience count is saved with each checkpoint; a resumed attempt carries on with it.
        "restore_callback_states_from_checkpoint": True,
    }


def callbacks(hp: ResolvedHyperparameters) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback when the job asks for early stopping."""
    from transformers import EarlyStoppingCallback

    if hp.early_stopping is None:
        return []
    return [
        EarlyStoppingCallback(
            early_stopping_patience=hp.early_stopping.patience,
            early_stopping_threshold=hp.early_stopping.threshold,
        )
    ]


def restored_best(trainer: Trainer) -> tuple[int, dict[str, Any]] | None:
    """(step, metrics) of the evaluation of the best checkpoint, when the Trainer restored it."""
    state = trainer.state
    best = state.best_model_checkpoint
    if not trainer.args.load_best_model_at_end or best is None or not Path(best).is_dir():
        return None
    # The evaluation logs come back with a resumed checkpoint's state, so this also finds an
    # evaluation that an earlier attempt made.
    for entry in reversed(state.log_history):
        if entry.get("step") == state.best_global_step and "eval_loss" in entry:
            metrics = clean_eval_metrics({k: v for k, v in entry.items() if k != "step"})
            return int(entry["step"]), metrics
    return None


def report(trainer: Trainer, hp: ResolvedHyperparameters, fence: AttemptFence) -> dict[str, Any]:
    """Events saying why training stopped early and which checkpoint became the model."""
    stopping, state = hp.early_stopping, trainer.state
    if stopping is None:
        return {}
    stopped_early = state.global_step < state.max_steps
    facts: dict[str, Any] = {"stopped_early": stopped_early}
    if stopped_early:
        margin = f" by more than {stopping.threshold:g}" if stopping.threshold else ""
        fence.log(
            f"stopped early at step {state.global_step} of {state.max_steps} (epoch "
            f"{float(state.epoch or 0):.2f}): {stopping.metric} has not beaten its best "
            f"({_number(state.best_metric)}){margin} in the last {stopping.patience} "
            "evaluation(s)",
            stopped_early=True,
            step=state.global_step,
            max_steps=state.max_steps,
            metric=stopping.metric,
            best=state.best_metric,
            patience=stopping.patience,
            threshold=stopping.threshold,
        )
    best = restored_best(trainer)
    if best is None:
        fence.log("no best checkpoint could be restored; the model is the last step's")
        return facts
    step, metrics = best
    value = metrics.get("eval_loss" if stopping.metric == LOSS_METRIC else str(stopping.metric))
    fence.log(
        f"restored checkpoint-{step}, the best by {stopping.metric} ({_number(value)}): the "
        "registered model and its metrics are that checkpoint's",
        restored_checkpoint_step=step,
        metric=stopping.metric,
        value=value,
    )
    return {**facts, "restored_checkpoint_step": step}


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"
