"""Full fine-tuning: every weight trains, or only the task head and the top N layers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ml.methods.full import FullMethod
from worker.training.freezing import freeze
from worker.training.methods.base import TrainingMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


class FullTraining(TrainingMethod[FullMethod]):
    name = "full"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: FullMethod,
        new_weights: list[str],
    ) -> Any:
        if options.train_top_layers is not None:
            freeze(model, new_weights=new_weights, top_layers=options.train_top_layers)
        return model
