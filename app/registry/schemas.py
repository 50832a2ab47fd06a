"""Registered model resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.schemas import ParameterCounts


class ModelRead(BaseModel):
    id: str
    object: Literal["model"] = "model"
    task: str
    base_model: str
    method: str
    label_names: list[str]
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    job_id: str
    train_dataset: str
    validation_dataset: str | None
    size_bytes: int
    parameters: ParameterCounts | None = Field(
        default=None,
        description="Weights as trained; null for models registered before they were counted.",
    )
    created_at: datetime
