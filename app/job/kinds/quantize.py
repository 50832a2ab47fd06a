"""Quantize jobs: a registered model's int8 copy for lean CPU serving, evaluated beside it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.job.kinds.derived import DerivingKind
from app.ml.methods import MethodOptions


class QuantizeMethod(MethodOptions):
    """Quantize a registered model (base_model "model:<id>") for lean CPU serving; nothing trains.

    The job evaluates the parent (fp32, adapters merged) and its quantized copy on the parent's
    validation rows (or on validation_dataset) with the task's own evaluation, and registers the
    quantized model with both results: `metrics` (quantized) and `parent_metrics` (the parent).
    It takes no training fields: hyperparameters, task_options and seed keep their defaults."""

    type: Literal["quantize"]
    scheme: Literal["int8_dynamic"] = Field(
        default="int8_dynamic",
        description="int8_dynamic: every nn.Linear gets int8 weights (one scale per tensor) and "
        "quantizes its input per batch at run time (torch's quantize_dynamic); embeddings and "
        "layer norms stay fp32. Served on the CPU.",
    )


class Quantize(DerivingKind):
    name = "quantize"
    options_model = QuantizeMethod
