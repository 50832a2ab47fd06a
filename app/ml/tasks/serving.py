"""Helpers the tasks' encode_inputs and postprocess share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def feature_rows(
    encoding: Mapping[str, Sequence[Any]], names: Sequence[str] | None = None
) -> list[dict[str, list[int]]]:
    """A tokenizer's batch output (lists by input name) as one dict per row, keeping `names`
    (default: every input the tokenizer gave)."""
    keys = [k for k in encoding if names is None or k in names]
    count = len(encoding[keys[0]]) if keys else 0
    return [{k: list(encoding[k][i]) for k in keys} for i in range(count)]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis, computed in float64 and returned as float32."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32)
    return probabilities
