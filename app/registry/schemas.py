"""Registered model resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    task: str
    base_model: str
    method: str
    artifact: Literal["full", "adapter", "merged"] = Field(
        description="What the model directory holds: a full model, an adapter to apply to "
        "base_model, or an adapter merged into the base weights at registration."
    )
    label_names: list[str]
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    job_id: str
    train_dataset: str
    validation_dataset: str | None
    size_bytes: int
    created_at: datetime
