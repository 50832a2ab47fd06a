"""The TaskSpec protocol: everything that differs between ML tasks, behind one interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class DatasetSummary:
    """What validation learned about an uploaded dataset, shown on the Dataset resource."""

    num_rows: int
    columns: list[str]
    label_names: list[str] | None = None
    label_counts: dict[str, int] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class TaskSpec(Protocol):
    """One ML task: dataset schema, preprocessing, metrics, and serving."""

    name: str
    # Columns a dataset must have after the client's column_mapping is applied, and optional ones.
    required_columns: tuple[str, ...]
    optional_columns: tuple[str, ...]
    # Common alternative names accepted for a canonical column when the canonical one is absent
    # and no column_mapping names it (banking77's `category` for `label`, GLUE's `sentence`...).
    column_aliases: Mapping[str, tuple[str, ...]]
    # The transformers Auto class that builds the model, and peft's TaskType name.
    auto_model_class_name: str
    peft_task_type: str
    # The metric that decides which checkpoint is best, and the one shown first.
    primary_metric: str
    # Request schema for POST /v1/predict/{name}.
    predict_request: type[BaseModel]

    def normalize(self, ds: datasets.Dataset) -> datasets.Dataset:
        """Check rows and bring columns to canonical types; raise InvalidInput naming the row."""
        ...

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        """Row count, label names and counts of a normalized dataset."""
        ...

    def label_names(
        self, train: datasets.Dataset, validation: datasets.Dataset | None
    ) -> list[str]:
        """The label set the model is trained with (sorted, stable)."""
        ...

    def check_compatible(self, train: DatasetSummary, validation: DatasetSummary) -> None:
        """Raise InvalidInput when a validation set cannot be evaluated against the train set."""
        ...

    def stratify_column(self) -> str | None:
        """The column a train/validation split is stratified on, if any."""
        ...

    def preprocess(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label2id: Mapping[str, int],
        max_length: int,
    ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
        """A batched `datasets.map` function turning rows into model features (no padding)."""
        ...

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[Any]], Any]:
        """Pads a list of features to the longest in the batch (never to max_length)."""
        ...

    def compute_metrics(self, label_names: Sequence[str]) -> Callable[[Any], dict[str, Any]]:
        """A Trainer `compute_metrics` function."""
        ...

    def predict(
        self,
        model: PreTrainedModel | torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        label_names: Sequence[str],
        max_length: int,
        batch_size: int,
    ) -> list[Any]:
        """Run a validated predict request; one result per input, in input order."""
        ...
