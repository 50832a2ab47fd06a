"""Which peft method wraps the model (LoRA, IA3, AdaLoRA, prefix tuning), what it needs while it
trains, what a checkpoint of it holds, and how the trained adapter is saved: alone or merged."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidInput
from app.job.schemas import (
    ADAPTER_METHODS,
    AdaLoraMethod,
    Ia3Method,
    LoraMethod,
    Method,
    PrefixTuningMethod,
)
from worker.training.adalora import (
    RankAllocationCallback,
    adalora_schedule,
    allocating_tuner,
    allocator_state,
    apply_adalora,
    restore_allocator,
)
from worker.training.heads import trained_in_full
from worker.training.lora import apply_ia3, apply_lora

if TYPE_CHECKING:
    from transformers import PreTrainedModel, TrainerCallback

    from app.ml.tasks import TaskSpec

PeftMethod = LoraMethod | Ia3Method | AdaLoraMethod | PrefixTuningMethod
# The shortest input a prefix may leave room for (the least hyperparameters.max_length allows).
MIN_INPUT_TOKENS = 8
# Beside the Trainer's own files in each checkpoint of a peft model (see save_checkpoint_state).
CHECKPOINT_STATE = "tuneserve-adapter-state.safetensors"


def apply_prefix_tuning(
    model: PreTrainedModel,
    *,
    task: TaskSpec,
    method: PrefixTuningMethod,
    new_weights: Iterable[str],
) -> Any:
    """Prepend trained key/value vectors to every attention layer; the head trains in full."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from app.ml.prefix import accept_prefix

    if task.peft_task_type is None or "prefix_tuning" in task.unsupported_methods:
        # Submission refuses these jobs; a job row written some other way fails here.
        raise InvalidInput(
            f"method.type: 'prefix_tuning' cannot train '{task.name}' models", field="method.type"
        )
    config = PrefixTuningConfig(
        task_type=TaskType(task.peft_task_type),
        num_virtual_tokens=method.num_virtual_tokens,
        prefix_projection=method.prefix_projection,
        encoder_hidden_size=method.encoder_hidden_size or model.config.hidden_size,
        modules_to_save=trained_in_full(model, new_weights) or None,
    )
    try:
        accept_prefix(model)
    except ValueError as exc:
        raise InvalidInput(
            f"method.type: 'prefix_tuning' cannot train this base model: {exc}",
            field="method.type",
        ) from None
    return get_peft_model(model, config)


def apply_adapter(
    model: PreTrainedModel,
    *,
    task: TaskSpec,
    method: PeftMethod,
    new_weights: Iterable[str],
    total_steps: int,
) -> Any:
    """Wrap the model for the job's peft method; `total_steps` is what AdaLoRA schedules over."""
    if isinstance(method, LoraMethod):
        return apply_lora(model, task=task, method=method, new_weights=new_weights)
    if isinstance(method, Ia3Method):
        return apply_ia3(model, task=task, method=method, new_weights=new_weights)
    if isinstance(method, AdaLoraMethod):
        return apply_adalora(
            model, task=task, method=method, new_weights=new_weights, total_steps=total_steps
        )
    return apply_prefix_tuning(model, task=task, method=method, new_weights=new_weights)


# AdaLoRA is wrapped before the job's step count is known ("auto" batch sizes need the wrapped
# model's parameter counts); `schedule` then sets the real one.
PROVISIONAL_STEPS = 1_000_000


def schedule(model: Any, method: PeftMethod, *, total_steps: int) -> None:
    """Schedule AdaLoRA's rank reallocation over the job's `total_steps` (other methods: no-op)."""
    if not isinstance(method, AdaLoraMethod):
        return
    tinit, tfinal = adalora_schedule(method, total_steps)
    # The rank allocator reads this same config object at every step.
    config = model.peft_config["default"]
    config.total_step, config.tinit, config.tfinal = total_steps, tinit, tfinal


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


def reserved_positions(method: Method, config: Any) -> int:
    """Position embeddings the method takes from the input.

    With a prefix as past key/values, BERT-like models number the input's positions from
    num_virtual_tokens on, so the input gets what the position embeddings leave.
    """
    if not isinstance(method, PrefixTuningMethod):
        return 0
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions - method.num_virtual_tokens < MIN_INPUT_TOKENS:
        raise InvalidInput(
            f"method.num_virtual_tokens: {method.num_virtual_tokens} virtual tokens leave fewer "
            f"than {MIN_INPUT_TOKENS} of the base model's {positions} positions for the input",
            field="method.num_virtual_tokens",
        )
    return method.num_virtual_tokens


def training_callbacks(model: Any) -> list[TrainerCallback]:
    """Callbacks the wrapped model needs while it trains (AdaLoRA's reallocation)."""
    tuner = allocating_tuner(model)
    return [RankAllocationCallback(tuner)] if tuner is not None else []


def save_checkpoint_state(model: Any, directory: Path) -> None:
    """Every trainable tensor of a peft model as it is in memory, for resuming.

    The adapter files the Trainer writes in a checkpoint are the ones meant for serving, and
    peft cannot load them back into a model that is training: AdaLoRA's are cut to the ranks
    allocated so far (the training model keeps init_r), and a projected prefix is saved as the
    projection's output, without the projection that trains it.
    """
    from safetensors.torch import save_file

    if not hasattr(model, "peft_config"):
        return
    tensors = {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    metadata: dict[str, str] = {}
    tuner = allocating_tuner(model)
    if tuner is not None:
        scores, metadata = allocator_state(tuner)
        tensors |= scores
    save_file(tensors, str(directory / CHECKPOINT_STATE), metadata=metadata)


def load_checkpoint_state(model: Any, directory: Path) -> bool:
    """Load what save_checkpoint_state wrote into the training model; False if it wrote none."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = directory / CHECKPOINT_STATE
    if not hasattr(model, "peft_config") or not path.is_file():
        return False
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    params = dict(model.named_parameters())
    trainable = {name for name, param in params.items() if param.requires_grad}
    saved = {name for name in tensors if not name.startswith("adalora.")}
    if saved != trainable:
        raise RuntimeError(
            f"checkpoint {directory.name} holds other trainable weights than this model: "
            f"{sorted(saved ^ trainable)[:5]}"
        )
    with torch.no_grad():
        for name in saved:
            params[name].copy_(tensors[name])
    tuner = allocating_tuner(model)
    if tuner is not None:
        restore_allocator(tuner, tensors, metadata)
    return True


def artifact_kind(method: Method) -> str:
    """What the model directory will hold: "full", "adapter", or "merged" (an adapter folded
    into the base weights at registration, on request)."""
    if method.type not in ADAPTER_METHODS:
        return "full"
    return "merged" if getattr(method, "merge_adapter", False) else "adapter"


def saver(model: Any, tokenizer: Any, *, merge: bool) -> Callable[[Path], None]:
    """A function that saves the trained model into a directory, merged into a full model or not."""

    def save(directory: Path) -> None:
        # Full models: config (with id2label) + model.safetensors. Adapters: adapter_config.json
        # + adapter_model.safetensors, the head included through modules_to_save.
        target = model.merge_and_unload() if merge else model
        target.save_pretrained(str(directory), safe_serialization=True)
        tokenizer.save_pretrained(str(directory))

    return save
