"""Training controls checked against the task and the workers' device when a job is submitted."""

from __future__ import annotations

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.job.schemas import Hyperparameters
from app.ml.methods import get_method
from app.ml.tasks import TaskSpec

# The validation loss, reported by every task; the only early-stopping metric lower is better.
LOSS_METRIC = "loss"
UNSUPPORTED_PRECISION = "unsupported_precision"


def default_learning_rate(task: TaskSpec, method: str, *, train_rows: int | None = None) -> float:
    """An omitted or "auto" learning rate: the task's for the method (or for the method whose
    defaults it takes), else the method's."""
    spec = get_method(method)
    rate = task.default_hyperparameters(spec.defaults_name(), train_rows=train_rows).get(
        "learning_rate"
    )
    return float(rate) if isinstance(rate, int | float) else spec.default_learning_rate


def early_stopping_metrics(task: TaskSpec) -> list[str]:
    """The metrics early stopping may watch for `task`."""
    return [*task.eval_metrics, LOSS_METRIC]


def greater_is_better(metric: str) -> bool:
    return metric != LOSS_METRIC


def resolve_controls(hp: Hyperparameters, task: TaskSpec) -> Hyperparameters:
    """Fill the early-stopping metric when omitted (the task's primary metric)."""
    if hp.early_stopping is not None and hp.early_stopping.metric is None:
        stopping = hp.early_stopping.model_copy(update={"metric": task.primary_metric})
        hp = hp.model_copy(update={"early_stopping": stopping})
    return hp


def check_controls(settings: Settings, hp: Hyperparameters, task: TaskSpec) -> None:
    """Raise InvalidInput naming the field for a control the task or the workers cannot honour."""
    if hp.label_smoothing > 0 and not task.supports_label_smoothing:
        raise InvalidInput(
            f"hyperparameters.label_smoothing: task '{task.name}' does not train on class "
            "labels, so there is nothing to smooth; leave it at 0",
            field="hyperparameters.label_smoothing",
        )
    stopping = hp.early_stopping
    if stopping is not None:
        valid = early_stopping_metrics(task)
        if stopping.metric not in valid:
            raise InvalidInput(
                f"hyperparameters.early_stopping.metric: task '{task.name}' does not report "
                f"'{stopping.metric}'; expected one of {valid}",
                field="hyperparameters.early_stopping.metric",
            )
        if hp.checkpoint_every == "no":
            raise InvalidInput(
                'hyperparameters.checkpoint_every: "no" cannot be combined with early_stopping, '
                'which evaluates at each checkpoint and restores the best one; use "epoch" or '
                "a number of steps",
                field="hyperparameters.checkpoint_every",
            )
    _check_precision(settings, hp.mixed_precision)


def _check_precision(settings: Settings, precision: str) -> None:
    if precision not in ("bf16", "fp16"):
        return
    device: str = settings.worker_device
    if device == "auto":
        from app.ml.device import visible_device_type

        device = visible_device_type()
    if device != "cuda":
        raise InvalidInput(
            f"hyperparameters.mixed_precision: {precision} needs a CUDA GPU and the workers "
            f'train on {device}; use "auto" or "no"',
            field="hyperparameters.mixed_precision",
            code=UNSUPPORTED_PRECISION,
        )
