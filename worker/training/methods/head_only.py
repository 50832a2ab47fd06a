"""Head only: everything but the task head (and a pooler above the blocks) frozen."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ml.methods.head_only import HeadOnlyMethod
from app.ml.pooling import POOLING_KEY, declared_pooling
from worker.training.freezing import freeze
from worker.training.methods.base import StartingModel, TrainingMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.basemodel.schemas import ResolvedBaseModel
    from app.core.config import Settings
    from app.ml.tasks import TaskSpec
    from worker.training.state import AttemptFence


class HeadOnlyTraining(TrainingMethod[HeadOnlyMethod]):
    name = "head_only"

    def start(
        self,
        settings: Settings,
        fence: AttemptFence,
        *,
        task: TaskSpec,
        base: ResolvedBaseModel,
        options: HeadOnlyMethod,
        label_names: list[str],
    ) -> StartingModel:
        """A catalog base gets its head over what `options.pooling` names (for `auto`, the
        pooling the checkpoint declares); a registered model keeps its own."""
        if task.per_token_outputs or base.lineage is not None:
            return super().start(
                settings, fence, task=task, base=base, options=options, label_names=label_names
            )
        from app.ml.loading import load_model_for_training

        pooling: str = options.pooling
        if pooling == "auto":
            pooling = declared_pooling(base.path_or_hub_id) or "cls"
        model, new_weights = load_model_for_training(
            task, base.path_or_hub_id, label_names=label_names, pooling=pooling
        )
        return StartingModel(model, new_weights)

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

    def applied(self, model: Any) -> dict[str, Any]:
        """The pooling a classifier from a catalog base was given (the others keep their
        parent's, or read every token)."""
        pooling = getattr(model.config, POOLING_KEY, None)
        return {"pooling": pooling} if pooling else {}
