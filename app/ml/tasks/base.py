"""The TaskSpec protocol: everything that differs between ML tasks, behind one interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import datasets
    import numpy as np
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

    from app.ml.tables import ParsedTable


@dataclass
class DatasetSummary:
    """What validation learned about an uploaded dataset, shown on the Dataset resource."""

    num_rows: int
    columns: list[str]
    label_names: list[str] | None = None
    label_counts: dict[str, int] | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class AbsentLabels:
    """Labels of the train set that a validation set has no example of: nothing evaluates them."""

    labels: list[str]
    # What is missing, e.g. "rows of class(es)" or "entities of type(s)".
    what: str
    # What the metrics then cover, e.g. "macro-F1 is computed over the classes it has".
    effect: str

    def message(self, source: str, *, limit: int = 20) -> str:
        """'validation dataset ds_x has no rows of class(es) `sports`; macro-F1 is ...'."""
        names = ", ".join(f"`{label}`" for label in self.labels[:limit])
        if len(self.labels) > limit:
            names += f" and {len(self.labels) - limit} more"
        return f"{source} has no {self.what} {names}; {self.effect}"


@dataclass
class Normalized:
    """A validated dataset in canonical columns, and notes on what was repaired or converted."""

    rows: datasets.Dataset
    notes: dict[str, Any] = field(default_factory=dict)


def column_values(ds: datasets.Dataset, name: str) -> list[Any]:
    """A whole column as a list."""
    # datasets >= 4 returns a lazy Column whose iteration formats one row at a time (seconds for
    # 67k rows); a slice reads the whole column at once.
    return list(ds[name][:])


@dataclass
class Encoded:
    """A predict request as model features: one unpadded row per model input (token ids and
    their companions, by input name), and what the task's postprocess needs to map the rows'
    outputs back to its inputs (e.g. which input and words each row holds)."""

    rows: list[dict[str, list[int]]]
    state: Any = None


class NoOptions(BaseModel):
    """A task without task-specific options."""

    model_config = ConfigDict(extra="forbid")


class TaskSpec(Protocol):
    """One ML task: dataset schema, preprocessing, metrics, and serving."""

    name: str
    # Columns a dataset must have after the client's column_mapping is applied, and optional ones.
    required_columns: tuple[str, ...]
    optional_columns: tuple[str, ...]
    # Common alternative names accepted for a canonical column when the canonical one is absent
    # and no column_mapping names it (banking77's `category` for `label`, GLUE's `sentence`...).
    column_aliases: Mapping[str, tuple[str, ...]]
    # File formats only this task reads (CoNLL columns, SQuAD JSON), beside the generic ones.
    native_formats: tuple[str, ...]
    # The transformers Auto class that builds the model, and peft's TaskType name (None: peft's
    # generic PeftModel, which hands every input to the model unchanged).
    auto_model_class_name: str
    peft_task_type: str | None
    # Whether the model's outputs have a sequence dimension (one answer per token: NER's tags,
    # QA's start/end logits) rather than one per input; the serving batcher pads them back.
    per_token_outputs: bool
    # The metric that decides which checkpoint is best, and the one shown first.
    primary_metric: str
    # The scalar metrics compute_metrics always reports, each higher-is-better; early stopping
    # may watch any of them, or "loss" (the validation loss, which every task reports).
    eval_metrics: tuple[str, ...]
    # Whether training batches carry a `labels` tensor of class ids (-100: ignored), which is
    # what the Trainer's label smoothing needs; it skips batches without one, so a task whose
    # targets are something else (QA's start/end positions) must say False.
    supports_label_smoothing: bool
    # Job-spec `task_options` (e.g. NER's label_all_tokens, QA's doc_stride), validated on submit.
    options_model: type[BaseModel]
    # Request schema for POST /v1/predict/{name}.
    predict_request: type[BaseModel]
    # Columns the evaluation features carry for compute_metrics that the model must not see.
    eval_only_columns: tuple[str, ...]
    # Fine-tuning methods (job spec `method.type`) this task cannot train, each with the reason;
    # a job naming one is refused at submission with that reason.
    unsupported_methods: Mapping[str, str]
    # The fields of one predict input, as the dashboard's try box asks for them: ("text",) sends
    # the text itself; several send an object with those keys.
    input_fields: tuple[str, ...]

    def default_hyperparameters(
        self, method: str, *, train_rows: int | None = None
    ) -> dict[str, Any]:
        """Hyperparameters this task sets when the job spec leaves them out (e.g. QA's length);
        `train_rows`, when known, lets a default depend on the train set's size."""
        ...

    def sniff_format(self, head: str, *, filename: str | None) -> str | None:
        """One of native_formats when the file's first characters look like it, else None."""
        ...

    def read_native(self, path: Path, fmt: str, *, max_rows: int) -> ParsedTable:
        """Parse a file in one of native_formats; raise InvalidInput naming the line at fault."""
        ...

    def adapt_table(self, table: pa.Table) -> pa.Table:
        """Convert an alternative row schema to the canonical one (same rows, same order)."""
        ...

    def normalize(self, ds: datasets.Dataset, *, strict: bool) -> Normalized:
        """Check rows and bring columns to canonical types; raise InvalidInput naming the row.

        With `strict`, refuse data that would otherwise be repaired (and counted in the notes).
        """
        ...

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        """Row count, label names and counts of a normalized dataset."""
        ...

    def label_names(
        self, train: datasets.Dataset, validation: datasets.Dataset | None
    ) -> list[str]:
        """The label set the model is trained with (sorted, stable); empty when there is none."""
        ...

    def check_compatible(self, train: DatasetSummary, validation: DatasetSummary) -> None:
        """Raise InvalidInput when a validation set cannot be evaluated against the train set."""
        ...

    def absent_labels(
        self, labels: Sequence[str], validation: DatasetSummary
    ) -> AbsentLabels | None:
        """Which of the train set's `labels` the validation set has no example of (None when it
        has all, or the task has no labels): a job is told, since its metrics cannot show it."""
        ...

    def stratify_column(self) -> str | None:
        """The column a train/validation split is stratified on, if any."""
        ...

    def transfer_inputs(self, rows: datasets.Dataset) -> list[Any]:
        """One predict input (an item of the predict request's `inputs`) per row of a normalized
        dataset: what a distillation teacher is asked about a transfer set's rows."""
        ...

    def with_predicted_labels(
        self, rows: datasets.Dataset, predictions: Sequence[Any]
    ) -> datasets.Dataset:
        """`rows` with their label columns replaced by `predictions` (one per row, what
        postprocess answers with its default top_k): the teacher's labels of a transfer set."""
        ...

    def preprocess(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label2id: Mapping[str, int],
        max_length: int,
        options: BaseModel,
        for_eval: bool,
    ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
        """A batched `datasets.map` function turning rows into model features (no padding).

        A row may give several features (QA's document stride). With `for_eval`, features may
        also carry `eval_only_columns` for compute_metrics.
        """
        ...

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[Any]], Any]:
        """Pads a list of features to the longest in the batch (never to max_length)."""
        ...

    def compute_metrics(
        self,
        label_names: Sequence[str],
        *,
        options: BaseModel,
        eval_rows: datasets.Dataset,
        eval_features: datasets.Dataset,
    ) -> Callable[[Any], dict[str, Any]]:
        """A Trainer `compute_metrics` over the eval features built from eval_rows."""
        ...

    def baseline_metrics(
        self,
        train_rows: datasets.Dataset,
        validation_rows: datasets.Dataset,
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> dict[str, float]:
        """The task's trivial baseline, built from train_rows and scored on validation_rows with
        the task's own metric functions (the keys of eval_metrics)."""
        ...

    # Serving follows the pipeline shape: the task turns a request into feature rows
    # (encode_inputs) and each row's outputs into answers (postprocess); app/predict owns the
    # batching, padding and forward in between.

    def encode_inputs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        max_length: int,
        options: BaseModel,
    ) -> Encoded:
        """A validated predict request's inputs as model feature rows (not padded)."""
        ...

    def postprocess(
        self,
        request: BaseModel,
        encoded: Encoded,
        outputs: Sequence[Mapping[str, np.ndarray]],
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> list[Any]:
        """One answer per input of the request, in input order, from each feature row's model
        outputs (`outputs[i]` for `encoded.rows[i]`: e.g. `logits`, without padding)."""
        ...


class TaskDefaults:
    """Defaults for tasks that read only the generic formats and have no options."""

    native_formats: tuple[str, ...] = ()
    options_model: type[BaseModel] = NoOptions
    eval_only_columns: tuple[str, ...] = ()
    unsupported_methods: Mapping[str, str] = MappingProxyType({})
    input_fields: tuple[str, ...] = ("text",)

    def default_hyperparameters(
        self, method: str, *, train_rows: int | None = None
    ) -> dict[str, Any]:
        return {}

    def sniff_format(self, head: str, *, filename: str | None) -> str | None:
        return None

    def read_native(self, path: Path, fmt: str, *, max_rows: int) -> ParsedTable:
        raise NotImplementedError(f"no native format '{fmt}'")

    def adapt_table(self, table: pa.Table) -> pa.Table:
        return table

    def absent_labels(
        self, labels: Sequence[str], validation: DatasetSummary
    ) -> AbsentLabels | None:
        return None


def predicted(item: Any, name: str) -> Any:
    """A field of one of postprocess's answers (a schema object, or its JSON form)."""
    return item[name] if isinstance(item, Mapping) else getattr(item, name)


def replace_column(rows: datasets.Dataset, name: str, values: list[Any]) -> datasets.Dataset:
    """`rows` with column `name` holding `values` instead, of the same type and in its place."""
    feature = rows.features[name]
    order = list(rows.column_names)
    replaced = rows.remove_columns(name).add_column(name, values, feature=feature)
    return replaced.select_columns(order)
