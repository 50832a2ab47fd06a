"""What a checkpoint of a peft model holds beside the Trainer's files, so that every method (LoRA,
IA3, AdaLoRA, prefix tuning) resumes as it trained. The methods themselves: methods/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.training.methods.adalora import (
    allocating_tuner,
    allocator_state,
    restore_allocator,
)

# Beside the Trainer's own files in each checkpoint of a peft model (see save_checkpoint_state).
CHECKPOINT_STATE = "tuneserve-adapter-state.safetensors"


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
