"""LoRA with peft: target modules found from the architecture; the new head trains and saves."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from app.job.schemas import LoraMethod

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


def head_modules(new_weights: Iterable[str]) -> list[str]:
    """Modules whose weights the checkpoint lacked (the task head): they must train in full."""
    # "classifier.weight" -> "classifier"; "classifier.out_proj.bias" -> "classifier.out_proj".
    return sorted({name.rpartition(".")[0] for name in new_weights if "." in name})


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


def apply_lora(
    model: PreTrainedModel, *, task: TaskSpec, method: LoraMethod, new_weights: Iterable[str]
) -> Any:
    """Wrap the model in LoRA adapters; the new head goes in modules_to_save to train and save."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType(task.peft_task_type) if task.peft_task_type else None,
        r=method.r,
        # peft types alpha as int; any positive number works (scaling = alpha / r).
        lora_alpha=method.lora_alpha or 2 * method.r,  # type: ignore[arg-type]
        lora_dropout=method.lora_dropout,
        target_modules=target_modules(model, method.target_modules),
        modules_to_save=head_modules(new_weights) or None,
    )
    return get_peft_model(model, config)


def resolved_lora_config(peft_model: Any) -> dict[str, Any]:
    """The adapter settings as applied (target modules after auto-detection)."""
    config = peft_model.peft_config["default"]
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": sorted(config.target_modules or []),
        "modules_to_save": sorted(config.modules_to_save or []),
    }


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
