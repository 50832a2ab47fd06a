"""Head only: everything but the task head (and a pooler above the blocks) frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ml.methods.head_only import HeadOnlyMethod
from worker.training.freezing import freeze
from worker.training.methods.base import TrainingMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


class HeadOnlyTraining(TrainingMethod[HeadOnlyMethod]):
    name = "head_only"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: HeadOnlyMethod,
        new_weights: list[str],
    ) -> Any:
        freeze(model, new_weights=new_weights, top_layers=None)
        return model
