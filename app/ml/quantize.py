"""Dynamic int8 quantization of a registered model, for CPU serving.

A quantized model stores no weights of its own: its directory holds its metadata and tokenizer and
names its parent, whose fp32 weights are loaded (adapters merged in) and quantized again at every
load. `quantize_dynamic` is deterministic (each Linear weight gets its own per-tensor scale from
its min and max), so the model a /predict call runs is the one its job evaluated, and it takes
about a second for an all-MiniLM-L6-v2-sized model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.core.config import Settings
from app.ml.lineage import load_base_model, resolve_recorded_base

if TYPE_CHECKING:
    import torch

    from app.ml.tasks import TaskSpec

# Models.artifact of a dynamic int8 quantization of a registered model.
INT8_DYNAMIC = "int8_dynamic"
QUANTIZED_ARTIFACTS = frozenset({INT8_DYNAMIC})


def quantize_int8_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose nn.Linear layers are DynamicQuantizedLinear: int8 weights (one
    scale per tensor), activations quantized per batch as they come. CPU only."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao; the eager API still does this.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False
        )
    quantized.eval()
    return quantized


def quantized_linear_count(model: torch.nn.Module) -> int:
    """How many layers of `model` are DynamicQuantizedLinear."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    return sum(isinstance(m, DynamicQuantizedLinear) for m in model.modules())


def load_int8_dynamic(
    settings: Settings, task: TaskSpec, meta: dict[str, Any], label_names: Sequence[str]
) -> torch.nn.Module:
    """A registered int8_dynamic model for inference: its parent's fp32 weights (rebuilt from
    its lineage, adapters merged) quantized again. Unavailable when the parent's files are gone."""
    parent = resolve_recorded_base(settings, meta)
    return quantize_int8_dynamic(load_base_model(task, parent, label_names=label_names))
