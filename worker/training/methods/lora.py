"""LoRA: adapters on the target modules found from the architecture; the new head trains and is
saved with the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ml.methods.lora import LoraMethod
from worker.training.heads import trained_in_full
from worker.training.methods.adapter import AdapterMethod, peft_task_type, target_modules

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


class LoraTraining(AdapterMethod[LoraMethod]):
    name = "lora"

    def prepare(
        self,
        model: PreTrainedModel,
        *,
        task: TaskSpec,
        options: LoraMethod,
        new_weights: list[str],
    ) -> Any:
        """Wrap the model in LoRA adapters; the new head goes in modules_to_save to train and
        save."""
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            task_type=peft_task_type(task),
            r=options.r,
            # peft types alpha as int; any positive number works (scaling = alpha / r).
            lora_alpha=options.lora_alpha or 2 * options.r,  # type: ignore[arg-type]
            lora_dropout=options.lora_dropout,
            target_modules=target_modules(model, options.target_modules),
            modules_to_save=trained_in_full(model, new_weights) or None,
        )
        return get_peft_model(model, config)
