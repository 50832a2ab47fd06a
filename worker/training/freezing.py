"""Which weights train (the head only, or the head plus the top N layers), and dropout."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from app.core.errors import InvalidInput
from worker.training.lora import head_modules

# "bert.encoder.layer.5.attention..." / "model.layers.11.mlp..." / "transformer.h.3.attn...":
# the index of the transformer block a parameter belongs to.
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def freeze(model: Any, *, new_weights: Iterable[str], top_layers: int | None) -> None:
    """Freeze all but the task head (and, with `top_layers`, the top N blocks and what sits
    above them, such as a pooler); the embeddings always stay frozen."""
    heads = tuple(f"{m}." for m in head_modules(new_weights))
    names = [name for name, _ in model.named_parameters()]
    indices = [i for i in map(layer_index, names) if i is not None]
    num_layers = max(indices) + 1 if indices else 0
    if top_layers is not None and top_layers > num_layers:
        raise InvalidInput(
            f"method.train_top_layers: {top_layers} is more than the {num_layers} layers of "
            "the base model",
            field="method.train_top_layers",
        )
    for name, param in model.named_parameters():
        if name.startswith(heads):
            param.requires_grad = True
        elif top_layers is None or "embeddings" in name:
            param.requires_grad = False
        else:
            index = layer_index(name)
            # Outside any block and not an embedding: above the blocks (pooler, final norm).
            param.requires_grad = index is None or index >= num_layers - top_layers
    if not any(p.requires_grad for p in model.parameters()):
        raise InvalidInput(
            "method: nothing would train (the base model has no new task head to train)",
            field="method",
        )


def set_dropout(model: Any, p: float) -> None:
    """Every dropout layer drops with probability `p`; the config records it for the record."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    config = getattr(model, "config", None)
    for name in list(vars(config) if config is not None else ()):
        if "dropout" in name and isinstance(getattr(config, name), float):
            setattr(config, name, p)
