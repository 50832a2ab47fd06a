"""What the peft methods share: their task type, target modules found from the architecture,
and the adapter settings as applied."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.ml.methods.base import OptionsT
from worker.training.methods.base import TrainingMethod

if TYPE_CHECKING:
    from peft import TaskType
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


def peft_task_type(task: TaskSpec) -> TaskType | None:
    """peft's TaskType for the task (None: peft's generic PeftModel)."""
    from peft import TaskType

    return TaskType(task.peft_task_type) if task.peft_task_type else None


def target_modules(model: PreTrainedModel, requested: list[str] | None) -> list[str] | str:
    """The requested modules, peft's known ones for this model_type, or every linear layer."""
    if requested:
        return list(requested)
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

    model_type = getattr(model.config, "model_type", None)
    if model_type in KNOWN:
        # For BERT-like encoders this is the attention query and value projections.
        return list(KNOWN[model_type])
    # peft's "all-linear" leaves out the output head, which modules_to_save trains instead.
    return "all-linear"


def resolved_adapter_config(peft_model: Any) -> dict[str, Any]:
    """The adapter settings as applied (target modules after auto-detection, AdaLoRA's schedule)."""
    config = peft_model.peft_config["default"]
    resolved: dict[str, Any] = {"modules_to_save": sorted(set(config.modules_to_save or []))}
    if config.is_prompt_learning:
        resolved["num_virtual_tokens"] = config.num_virtual_tokens
        if config.prefix_projection:
            resolved["encoder_hidden_size"] = config.encoder_hidden_size
        return resolved
    resolved["target_modules"] = sorted(config.target_modules or [])
    if hasattr(config, "init_r"):  # AdaLoRA (whose LoraConfig `r` goes unused)
        resolved |= {"init_r": config.init_r, "target_r": config.target_r}
        resolved |= {"tinit": config.tinit, "tfinal": config.tfinal, "delta_t": config.deltaT}
        resolved["total_step"] = config.total_step
    elif hasattr(config, "r"):
        resolved["r"] = config.r
    if hasattr(config, "lora_alpha"):
        resolved |= {"lora_alpha": config.lora_alpha, "lora_dropout": config.lora_dropout}
    if hasattr(config, "feedforward_modules"):
        resolved["feedforward_modules"] = sorted(config.feedforward_modules or [])
    return resolved


class AdapterMethod(TrainingMethod[OptionsT]):
    """A peft method: `prepare` wraps the model; its settings as applied are peft's config."""

    def applied(self, model: Any) -> dict[str, Any]:
        return resolved_adapter_config(model)
