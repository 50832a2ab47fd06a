"""Registered model resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.schemas import ParameterCounts
from app.ml.quality import BASELINE_DESCRIPTION, QUALITY_DESCRIPTION, Quality


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    task: str
    base_model: str = Field(
        description='The base it was trained from: a base-model id, or "model:<id>" for a model '
        "continued from a registered one."
    )
    parent_model: str | None = Field(
        default=None, description="The registered model it was continued from, if any."
    )
    method: str
    artifact: Literal["full", "adapter", "merged", "int8_dynamic", "onnx", "onnx_int8"] = Field(
        description="What the model directory holds: a full model, an adapter to apply to "
        "base_model, an adapter merged into the base weights at registration, "
        "(int8_dynamic) no weights: parent_model's, quantized to int8 when loaded, or an ONNX "
        "graph of parent_model (onnx: fp32 weights; onnx_int8: int8 weights)."
    )
    runtime: Literal["torch", "torch_int8", "onnx", "onnx_int8"] = Field(
        description="What serves it: torch (fp32), torch_int8 (dynamic int8 kernels on the "
        "CPU), or ONNX Runtime (onnx, onnx_int8)."
    )
    label_names: list[str]
    metrics: dict[str, Any] = Field(
        description="The evaluation on the validation set; for a quantized model, the "
        "quantized model's."
    )
    parent_metrics: dict[str, Any] | None = Field(
        default=None,
        description="Quantized, exported and distilled models only: parent_model (fp32 torch; "
        "for a distilled model, its teacher) evaluated by the same job on the same validation "
        "rows, to read beside `metrics`.",
    )
    baseline_metrics: dict[str, Any] | None = Field(
        default=None,
        description=BASELINE_DESCRIPTION
        + " A quantized model's is its parent's when it is evaluated on the parent's rows. "
        "Null for models registered before baselines were computed.",
    )
    quality: Quality | None = Field(default=None, description=QUALITY_DESCRIPTION)
    hyperparameters: dict[str, Any]
    job_id: str
    train_dataset: str
    validation_dataset: str | None
    size_bytes: int
    parameters: ParameterCounts | None = Field(
        default=None,
        description="Weights as trained; null for models registered before they were counted.",
    )
    aliases: list[str] = Field(
        default_factory=list, description="Names that point at this model (see /v1/aliases)."
    )
    created_at: datetime


FORCE_DESCRIPTION = (
    f"Point the alias at a model whose quality is `{Quality.NO_BETTER}` anyway; without it such "
    "a move (or creation) is refused with 409 `model_below_baseline`."
)


class AliasPut(BaseModel):
    """Optional body of PUT /v1/models/{id}/aliases/{name}."""

    model_config = ConfigDict(extra="forbid")

    force: bool = Field(default=False, description=FORCE_DESCRIPTION)


class AliasRead(BaseModel):
    """A name for a model, accepted by /predict wherever a model id is."""

    name: str
    object: Literal["alias"] = "alias"
    model: str = Field(description="The model the alias points at now.")
    previous_model: str | None = Field(
        description="The model it pointed at before its last move (to move it back)."
    )
    created_at: datetime
    updated_at: datetime
