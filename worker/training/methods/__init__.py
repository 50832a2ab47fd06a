"""The worker's side of the method registry: how each fine-tuning method trains, by the name the
API side (app/ml/methods) gives it. A method is a file here and a line below."""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInput
from worker.training.methods.adalora import AdaLoraTraining
from worker.training.methods.base import StartingModel, TrainingMethod
from worker.training.methods.distill import DistillTraining
from worker.training.methods.full import FullTraining
from worker.training.methods.head_only import HeadOnlyTraining
from worker.training.methods.ia3 import Ia3Training
from worker.training.methods.lora import LoraTraining
from worker.training.methods.prefix_tuning import PrefixTuningTraining

TRAINING_METHODS: dict[str, TrainingMethod[Any]] = {
    method.name: method
    for method in (
        FullTraining(),
        LoraTraining(),
        Ia3Training(),
        AdaLoraTraining(),
        PrefixTuningTraining(),
        HeadOnlyTraining(),
        DistillTraining(),
    )
}


def training_method(name: str) -> TrainingMethod[Any]:
    """How method `name` trains (InvalidInput for a method this worker does not know)."""
    try:
        return TRAINING_METHODS[name]
    except KeyError:
        raise InvalidInput(
            f"method.type: this worker cannot train method '{name}'; it knows "
            f"{list(TRAINING_METHODS)}",
            field="method.type",
        ) from None


__all__ = ["TRAINING_METHODS", "StartingModel", "TrainingMethod", "training_method"]
