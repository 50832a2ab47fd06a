"""(IA)^3: rescaling vectors on the modules peft knows for the architecture (or those named);
the new head trains and is saved with them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidInput
from app.ml.methods.ia3 import Ia3Method
from worker.training.heads import trained_in_full
from worker.training.methods.adapter import AdapterMethod, peft_task_type

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


class Ia3Training(AdapterMethod[Ia3Method]):
    name = "ia3"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: Ia3Method,
        new_weights: list[str],
    ) -> Any:
        """Wrap the model in (IA)^3 vectors; the new head goes in modules_to_save."""
        from peft import IA3Config, get_peft_model
        from peft.utils import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

        model_type = str(getattr(model.config, "model_type", "") or "")
        targets = options.target_modules or TARGETS.get(model_type)
        feedforward = options.feedforward_modules or (
            None if options.target_modules else FEEDFORWARD.get(model_type)
        )
        if targets is None:
            raise InvalidInput(
                f"method.target_modules: peft knows no IA3 modules for '{model_type}' models; "
                "name them (and method.feedforward_modules)",
                field="method.target_modules",
            )
        config = IA3Config(
            task_type=peft_task_type(task),
            target_modules=list(targets),
            feedforward_modules=list(feedforward or []),
            modules_to_save=trained_in_full(model, new_weights) or None,
        )
        return get_peft_model(model, config)
