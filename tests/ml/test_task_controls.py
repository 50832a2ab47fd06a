"""What each task declares for training controls matches what it computes."""

from __future__ import annotations

import numpy as np
import pytest

from app.ml.tasks import REGISTRY
from app.ml.tasks.classification import classification_metrics
from app.ml.tasks.ner_tags import ner_metrics
from app.ml.tasks.qa_postprocess import squad_scores


def reported(task: str) -> dict[str, object]:
    """What the task's metrics function returns on a small example."""
    if task == "classification":
        return classification_metrics(np.eye(2)[[0, 1, 1]], np.array([0, 1, 0]), ["a", "b"])
    if task == "ner":
        return ner_metrics([["B-PER", "O"]], [["B-PER", "B-LOC"]])
    return dict(squad_scores(["Paris", "x"], [["Paris"], ["y"]]))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_early_stopping_metrics_are_scalars_the_task_reports(name: str) -> None:
    task = REGISTRY[name]
    metrics = reported(name)
    assert task.eval_metrics and task.primary_metric in task.eval_metrics
    for metric in task.eval_metrics:
        assert isinstance(metrics[metric], float), (name, metric)


def test_label_smoothing_only_where_batches_carry_labels() -> None:
    assert {n: t.supports_label_smoothing for n, t in REGISTRY.items()} == {
        "classification": True,
        "ner": True,
        "qa": False,  # start/end positions, which the Trainer would not smooth
    }
