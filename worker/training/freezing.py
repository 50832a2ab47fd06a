"""Which weights train (the head only, or the head plus the top N layers), how many do, and
dropout."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.core.errors import InvalidInput
from worker.training.heads import layer_index, trained_in_full


def freeze(model: Any, *, new_weights: Iterable[str], top_layers: int | None) -> None:
    """Freeze all but the task head and what sits above the blocks, such as a pooler (and, with
    `top_layers`, the top N blocks); the embeddings always stay frozen."""
    heads = tuple(f"{m}." for m in trained_in_full(model, new_weights))
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
        index = layer_index(name)
        if name.startswith(heads):
            param.requires_grad = True
        else:
            param.requires_grad = (
                top_layers is not None
                and index is not None
                and index >= num_layers - top_layers
                and "embeddings" not in name
            )
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


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
    return trainable, total
