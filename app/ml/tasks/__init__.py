"""The task registry: one entry per ML task; everything task-specific lives behind it."""

from __future__ import annotations

from app.core.errors import InvalidInput
from app.ml.tasks.base import AbsentLabels, DatasetSummary, TaskSpec
from app.ml.tasks.classification import ClassificationTask
from app.ml.tasks.ner import NerTask
from app.ml.tasks.qa import QATask

REGISTRY: dict[str, TaskSpec] = {
    "classification": ClassificationTask(),
    "ner": NerTask(),
    "qa": QATask(),
}


def get_task(name: str) -> TaskSpec:
    """The task called `name`, or InvalidInput listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown task '{name}'; expected one of {sorted(REGISTRY)}", field="task"
        ) from None


__all__ = ["REGISTRY", "AbsentLabels", "DatasetSummary", "TaskSpec", "get_task"]
