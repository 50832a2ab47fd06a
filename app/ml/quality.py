"""Is a model better than its task's trivial baseline? The verdict, its margin, and the check on a
training loss that does not fall: constants in one place, used by the worker, the API's text and
the README.

With primary metric m and the baseline's b on the same validation rows, a model beats the
baseline when m >= b + max(MIN_MARGIN, GAP_FRACTION * (1 - b)): it closes at least a tenth of the
gap from the baseline to a perfect score (and at least one point). Fewer than
MIN_VALIDATION_ROWS validation rows (sentences, questions) are too few to tell either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MIN_MARGIN = 0.01
GAP_FRACTION = 0.1
MIN_VALIDATION_ROWS = 50

# Loss check: the mean of the first LOSS_WINDOW_FRACTION of the logged training losses (at least
# LOSS_WINDOW_MIN of them) against the mean of the last as many; the loss has not fallen when the
# last is not below LOSS_FALL_RATIO x the first. Fewer than 2 x LOSS_WINDOW_MIN values: no check.
LOSS_WINDOW_FRACTION = 0.2
LOSS_WINDOW_MIN = 2
LOSS_FALL_RATIO = 0.95


class Quality(StrEnum):
    BETTER = "better_than_baseline"
    NO_BETTER = "no_better_than_baseline"
    TOO_FEW_ROWS = "too_few_validation_rows"


QUALITY_DESCRIPTION = (
    f"`{Quality.BETTER}` when the primary metric m reaches b + max({MIN_MARGIN}, "
    f"{GAP_FRACTION} x (1 - b)) with b the trivial baseline's on the same validation rows (a "
    f"tenth of the gap to a perfect score closed); `{Quality.NO_BETTER}` otherwise; "
    f"`{Quality.TOO_FEW_ROWS}` with fewer than {MIN_VALIDATION_ROWS} validation rows (sentences, "
    "questions), too few to tell; null when nothing was evaluated."
)
BASELINE_DESCRIPTION = (
    "The task's trivial baseline scored on the same validation rows as `metrics`: "
    "classification the train set's majority class, NER a lookup of the train set's entity "
    "words, QA the context sentence closest to the question (see the README)."
)

ADVICE = "try more training data, more epochs, another method, or a sweep over the learning rate"
LOSS_ADVICE = "try a higher or a lower learning rate, or more epochs"


def required(baseline: float) -> float:
    """The primary metric a model must reach to beat a baseline scoring `baseline`."""
    return baseline + max(MIN_MARGIN, GAP_FRACTION * (1.0 - baseline))


def verdict(
    metrics: Mapping[str, Any] | None,
    baseline: Mapping[str, Any] | None,
    *,
    primary: str,
    rows: int,
) -> Quality | None:
    """The model's quality against the baseline; None when either has no `primary` value."""
    value = (metrics or {}).get(primary)
    base = (baseline or {}).get(primary)
    if not isinstance(value, int | float) or not isinstance(base, int | float):
        return None
    if rows < MIN_VALIDATION_ROWS:
        return Quality.TOO_FEW_ROWS
    return Quality.BETTER if value >= required(float(base)) else Quality.NO_BETTER


def verdict_warning(
    quality: Quality | None,
    metrics: Mapping[str, Any],
    baseline: Mapping[str, Any],
    *,
    primary: str,
    rows: int,
) -> str | None:
    """The plain-words warning a verdict calls for (None for a better model or no verdict)."""
    if quality is Quality.TOO_FEW_ROWS:
        return (
            f"the validation set has {rows} rows, fewer than {MIN_VALIDATION_ROWS}: too few to "
            f"tell whether the model ({primary} {metrics[primary]:.4f}) is better than the "
            f"trivial baseline ({baseline[primary]:.4f}); evaluate on a larger validation set"
        )
    if quality is Quality.NO_BETTER:
        base = float(baseline[primary])
        return (
            f"the model is no better than the trivial baseline: {primary} "
            f"{metrics[primary]:.4f} against the baseline's {base:.4f} (it needs "
            f"{required(base):.4f}); {ADVICE}"
        )
    return None


@dataclass(frozen=True)
class LossTrend:
    first: float
    last: float
    window: int


def loss_trend(losses: Sequence[float]) -> LossTrend | None:
    """Mean of the first and of the last window of logged losses (None: too few to compare)."""
    if len(losses) < 2 * LOSS_WINDOW_MIN:
        return None
    window = min(len(losses) // 2, max(LOSS_WINDOW_MIN, round(LOSS_WINDOW_FRACTION * len(losses))))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    return LossTrend(first, last, window)


def loss_warning(losses: Sequence[float]) -> str | None:
    """A warning when the training loss did not fall (last window not below 0.95 x the first)."""
    trend = loss_trend(losses)
    if trend is None or trend.last < LOSS_FALL_RATIO * trend.first:
        return None
    return (
        f"the training loss did not fall: the mean of the last {trend.window} logged losses is "
        f"{trend.last:.4f}, against {trend.first:.4f} for the first {trend.window} (it should "
        f"be below {LOSS_FALL_RATIO} x that); {LOSS_ADVICE}"
    )
