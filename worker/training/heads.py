"""Which modules make up the task head that trains in full under every method: the new weights
the checkpoint lacked, and what sits above the transformer blocks (a pooler, a final norm)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# "bert.encoder.layer.5.attention..." / "model.layers.11.mlp..." / "transformer.h.3.attn...":
# the index of the transformer block a parameter belongs to.
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def head_modules(new_weights: Iterable[str]) -> list[str]:
    """Modules whose weights the checkpoint lacked (the task head): they must train in full."""
    # "classifier.weight" -> "classifier"; "classifier.out_proj.bias" -> "classifier.out_proj".
    return sorted({name.rpartition(".")[0] for name in new_weights if "." in name})


def above_blocks(model: Any) -> list[str]:
    """Modules outside every transformer block and the embeddings: above the blocks.

    BERT's pooler is one. It shapes the only features a classification head reads, and a
    sentence-embedding checkpoint (all-MiniLM-L6-v2 pools the mean of its tokens) never trained
    it for that: left frozen, a probe on it reached 0.60 SST-2 dev accuracy where one that trains
    it reached 0.68 (README "Method defaults").
    """
    names = [name for name, _ in model.named_parameters()]
    if not any(layer_index(name) is not None for name in names):
        return []
    return sorted(
        {
            name.rpartition(".")[0]
            for name in names
            if layer_index(name) is None and "embeddings" not in name and "." in name
        }
    )


def trained_in_full(model: Any, new_weights: Iterable[str]) -> list[str]:
    """The head a method trains in full beside its adapter or frozen body: nothing when there is
    no task head (what sits above the blocks trains only to serve one)."""
    heads = head_modules(new_weights)
    if not heads:
        return []
    return heads + [m for m in above_blocks(model) if not m.startswith(tuple(heads))]
