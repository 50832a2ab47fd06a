"""LoRA and IA3 adapters: target modules found from the architecture; the new head trains and is
saved with the adapter. The other methods and the choice between them: adapters.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from app.job.schemas import Ia3Method, LoraMethod
from worker.training.heads import trained_in_full

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from app.ml.tasks import TaskSpec


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
        modules_to_save=trained_in_full(model, new_weights) or None,
    )
    return get_peft_model(model, config)


def apply_ia3(
    model: PreTrainedModel, *, task: TaskSpec, method: Ia3Method, new_weights: Iterable[str]
) -> Any:
    """Wrap the model in (IA)^3 vectors; the new head goes in modules_to_save."""
    from peft import IA3Config, TaskType, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS

    model_type = str(getattr(model.config, "model_type", "") or "")
    targets = method.target_modules or TARGETS.get(model_type)
    feedforward = method.feedforward_modules or (
        None if method.target_modules else FEEDFORWARD.get(model_type)
    )
    if targets is None:
        from app.core.errors import InvalidInput

        raise InvalidInput(
            f"method.target_modules: peft knows no IA3 modules for '{model_type}' models; "
            "name them (and method.feedforward_modules)",
            field="method.target_modules",
        )
    config = IA3Config(
        task_type=TaskType(task.peft_task_type) if task.peft_task_type else None,
        target_modules=list(targets),
        feedforward_modules=list(feedforward or []),
        modules_to_save=trained_in_full(model, new_weights) or None,
    )
    return get_peft_model(model, config)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
