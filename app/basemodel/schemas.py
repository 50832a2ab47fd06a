"""Base-model catalog schemas: what can be fine-tuned, and where the worker finds it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class BaseModelSource(StrEnum):
    PACKAGE = "package"
    LOCAL = "local"
    HUB = "hub"
    # A registered model continued by a job (base_model "model:<id>"); never listed as a base.
    MODEL = "model"


class BaseModelRead(BaseModel):
    """One fine-tunable base model. Paths on disk are never exposed."""

    id: str = Field(description="The id to name as `base_model` in a job.")
    object: Literal["base_model"] = "base_model"
    source: BaseModelSource
    model_type: str | None = Field(default=None, description="config.json's model_type.")
    architectures: list[str] = Field(default_factory=list)
    num_parameters: int | None = Field(
        default=None, description="Weights in the checkpoint, read from its safetensors header."
    )
    hidden_size: int | None = None
    num_layers: int | None = None
    max_position_embeddings: int | None = None
    available: bool = Field(
        default=True, description="False for a hub id that is not in the local cache."
    )


@dataclass(frozen=True)
class ModelLineage:
    """A registered model as a job's base: what the worker and the predictor rebuild it from."""

    parent_id: str
    # Relative to the data directory, as on the parent's row.
    parent_storage_path: str
    # The catalog base model at the root of the lineage.
    root_id: str
    # Adapter directories merged, oldest first, into the weights at path_or_hub_id.
    adapters: tuple[str, ...]
    # The parent's labels in its order: a continued model keeps its head's outputs.
    label_names: tuple[str, ...]
    # The task head's weights as the parent recorded them (they train in full); may be empty.
    head_weights: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedBaseModel:
    """Where a base-model id lives on this machine; only the worker and the predictor see this."""

    id: str
    source: BaseModelSource
    # A local directory (package, local, cached hub snapshot) that from_pretrained reads offline.
    path_or_hub_id: str
    model_type: str | None = None
    # Transformer blocks, from config.json's num_hidden_layers (None when it does not say).
    num_layers: int | None = None
    # Set for base_model "model:<id>": path_or_hub_id is then the parent's directory (full
    # weights) or the root base's, with `lineage.adapters` to merge in.
    lineage: ModelLineage | None = None

    @property
    def parent_model_id(self) -> str | None:
        return self.lineage.parent_id if self.lineage else None

    @property
    def root_id(self) -> str:
        return self.lineage.root_id if self.lineage else self.id
