"""Registered model resources."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


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
    label_names: list[str]
    metrics: dict[str, Any]
    hyperparameters: dict[str, Any]
    job_id: str
    train_dataset: str
    validation_dataset: str | None
    size_bytes: int
    created_at: datetime
