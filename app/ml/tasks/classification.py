"""Text classification (single sentences or pairs): schema, preprocessing, metrics, serving."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import InvalidInput
from app.core.text import RealText, UnicodeText
from app.ml.tables import ParsedTable
from app.ml.tasks.base import (
    AbsentLabels,
    DatasetSummary,
    Encoded,
    Normalized,
    TaskDefaults,
    column_values,
    predicted,
    replace_column,
)
from app.ml.tasks.classification_chat import CHAT, read_chat, sniff_chat
from app.ml.tasks.serving import feature_rows, softmax

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase


class TextPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: RealText
    # May be empty or blank, as in training rows: then the second segment is empty.
    text_pair: UnicodeText | None = None


class ClassificationPredictRequest(BaseModel):
    """Body of POST /v1/predict/classification."""

    model_config = ConfigDict(extra="forbid")

    model: UnicodeText = Field(description="Model id from /v1/models, or an alias (/v1/aliases).")
    inputs: list[RealText | TextPair] = Field(
        min_length=1, description="Texts, or objects with `text` and optional `text_pair`."
    )
    top_k: int | None = Field(
        default=1, ge=1, description="Labels returned per input, best first; null for all."
    )


class LabelScore(BaseModel):
    label: str
    score: float


def _label_to_str(value: Any, row: int) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        raise InvalidInput(f"row {row}: column 'label' is empty", row=row, field="label")
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if not text:
        raise InvalidInput(f"row {row}: column 'label' is empty", row=row, field="label")
    return text


def _check_text(value: Any, row: int, column: str, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise InvalidInput(f"row {row}: column '{column}' is empty", row=row, field=column)
        return None
    text = value if isinstance(value, str) else str(value)
    if required and not text.strip():
        raise InvalidInput(f"row {row}: column '{column}' is empty", row=row, field=column)
    return text


class ClassificationTask(TaskDefaults):
    name: str = "classification"
    required_columns: tuple[str, ...] = ("text", "label")
    optional_columns: tuple[str, ...] = ("text_pair",)
    column_aliases: Mapping[str, tuple[str, ...]] = {
        "text": ("sentence", "sentence1", "content", "review", "document", "question"),
        "text_pair": ("sentence2", "text_b", "hypothesis"),
        "label": ("labels", "category", "class", "intent", "target", "sentiment", "label_text"),
    }
    auto_model_class_name: str = "AutoModelForSequenceClassification"
    peft_task_type: str | None = "SEQ_CLS"
    per_token_outputs: bool = False
    primary_metric: str = "accuracy"
    eval_metrics: tuple[str, ...] = ("accuracy", "macro_f1")
    supports_label_smoothing: bool = True
    predict_request: type[BaseModel] = ClassificationPredictRequest

    def default_hyperparameters(
        self, method: str, *, train_rows: int | None = None
    ) -> dict[str, Any]:
        # A prefix learns from more, smaller steps: with benchmarks/method_defaults.py (SST-2,
        # 1,500 rows, 2 epochs, 50 prefix tokens, seeds 0 / 1) batch 32 at lr 1e-2 0.737 / 0.733,
        # 2e-2 0.747 / 0.717; batch 16 at 1e-2 0.737 / 0.727; batch 8 at 3e-3 0.740 / 0.720, 5e-3
        # 0.750 / 0.753, 1e-2 0.767 / 0.763. The other methods keep the service's batch of 32.
        return {"batch_size": 8} if method == "prefix_tuning" else {}

    # OpenAI's chat fine-tuning JSONL: the user turn is the text, the assistant turn the label.
    native_formats: tuple[str, ...] = (CHAT,)

    def sniff_format(self, head: str, *, filename: str | None) -> str | None:
        return CHAT if sniff_chat(head) else None

    def read_native(self, path: Path, fmt: str, *, max_rows: int) -> ParsedTable:
        if fmt != CHAT:
            raise NotImplementedError(f"no native format '{fmt}'")
        return read_chat(path, max_rows=max_rows)

    def normalize(self, ds: datasets.Dataset, *, strict: bool = False) -> Normalized:
        import datasets as hf

        # Rows are reported 1-based, counting data rows only (not a header line).
        texts = [
            _check_text(v, i + 1, "text", required=True)
            for i, v in enumerate(column_values(ds, "text"))
        ]
        labels = [_label_to_str(v, i + 1) for i, v in enumerate(column_values(ds, "label"))]
        columns: dict[str, list[Any]] = {"text": texts, "label": labels}
        if "text_pair" in ds.column_names:
            columns["text_pair"] = [
                _check_text(v, i + 1, "text_pair", required=False)
                for i, v in enumerate(column_values(ds, "text_pair"))
            ]
        # A one-label set is fine as a validation set; training refuses it at job submission.
        return Normalized(hf.Dataset.from_dict(columns))

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        counts = Counter(column_values(ds, "label"))
        names = sorted(counts, key=_label_sort_key)
        return DatasetSummary(
            num_rows=ds.num_rows,
            columns=list(ds.column_names),
            label_names=names,
            label_counts={k: counts[k] for k in names},
        )

    def label_names(
        self, train: datasets.Dataset, validation: datasets.Dataset | None
    ) -> list[str]:
        return sorted(set(column_values(train, "label")), key=_label_sort_key)

    def check_compatible(self, train: DatasetSummary, validation: DatasetSummary) -> None:
        train_labels = set(train.label_names or [])
        if len(train_labels) < 2:
            raise InvalidInput(
                "train_dataset has fewer than 2 distinct labels; classification needs at least 2",
                field="train_dataset",
            )
        unknown = sorted(set(validation.label_names or []) - train_labels, key=_label_sort_key)
        if unknown:
            raise InvalidInput(
                f"validation_dataset has labels not in train_dataset: {unknown[:10]}",
                field="validation_dataset",
            )
        if ("text_pair" in train.columns) != ("text_pair" in validation.columns):
            raise InvalidInput(
                "train_dataset and validation_dataset disagree on the text_pair column",
                field="validation_dataset",
            )

    def absent_labels(
        self, labels: Sequence[str], validation: DatasetSummary
    ) -> AbsentLabels | None:
        present = set(validation.label_names or [])
        absent = [label for label in labels if label not in present]
        if not absent or validation.label_names is None:
            return None
        return AbsentLabels(
            absent, "rows of class(es)", "macro-F1 is computed over the classes it has"
        )

    def stratify_column(self) -> str | None:
        return "label"

    def transfer_inputs(self, rows: datasets.Dataset) -> list[Any]:
        texts = column_values(rows, "text")
        if "text_pair" not in rows.column_names:
            return list(texts)
        pairs = column_values(rows, "text_pair")
        return [{"text": t, "text_pair": p} for t, p in zip(texts, pairs, strict=True)]

    def with_predicted_labels(
        self, rows: datasets.Dataset, predictions: Sequence[Any]
    ) -> datasets.Dataset:
        # Each answer is the top_k (1) labels, best first.
        return replace_column(rows, "label", [str(predicted(p[0], "label")) for p in predictions])

    def preprocess(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label2id: Mapping[str, int],
        max_length: int,
        options: BaseModel,
        for_eval: bool,
    ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            pairs = batch.get("text_pair")
            enc = tokenizer(
                batch["text"],
                pairs if pairs is not None and any(p is not None for p in pairs) else None,
                truncation=True,
                max_length=max_length,
            )
            out: dict[str, list[Any]] = dict(enc)
            out["labels"] = [label2id[label] for label in batch["label"]]
            return out

        return encode

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[Any]], Any]:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(
        self,
        label_names: Sequence[str],
        *,
        options: BaseModel,
        eval_rows: datasets.Dataset,
        eval_features: datasets.Dataset,
    ) -> Callable[[Any], dict[str, Any]]:
        return lambda pred: classification_metrics(
            np.asarray(pred.predictions), np.asarray(pred.label_ids), label_names
        )

    def baseline_metrics(
        self,
        train_rows: datasets.Dataset,
        validation_rows: datasets.Dataset,
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> dict[str, float]:
        """The majority class of the train rows (ties: the first in label order) predicted for
        every validation row, scored by classification_metrics as the model is."""
        counts = Counter(column_values(train_rows, "label"))
        majority = max(range(len(label_names)), key=lambda i: (counts[label_names[i]], -i))
        label2id = {name: i for i, name in enumerate(label_names)}
        gold = np.asarray(
            [label2id[label] for label in column_values(validation_rows, "label")], dtype=int
        )
        logits = np.zeros((len(gold), len(label_names)))
        logits[:, majority] = 1.0
        metrics = classification_metrics(logits, gold, label_names)
        return {k: float(metrics[k]) for k in self.eval_metrics}

    def encode_inputs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        max_length: int,
        options: BaseModel,
    ) -> Encoded:
        assert isinstance(request, ClassificationPredictRequest)
        items = [x if isinstance(x, TextPair) else TextPair(text=x) for x in request.inputs]
        rows: list[dict[str, list[int]]] = [{} for _ in items]
        # Pairs and single texts are encoded in calls of their own (one row each either way).
        for pairs in (False, True):
            which = [i for i, x in enumerate(items) if (x.text_pair is not None) == pairs]
            if not which:
                continue
            encoding = tokenizer(
                [items[i].text for i in which],
                [items[i].text_pair or "" for i in which] if pairs else None,
                truncation=True,
                max_length=max_length,
            )
            for i, row in zip(which, feature_rows(encoding), strict=True):
                rows[i] = row
        return Encoded(rows)

    def postprocess(
        self,
        request: BaseModel,
        encoded: Encoded,
        outputs: Sequence[Mapping[str, np.ndarray]],
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> list[Any]:
        assert isinstance(request, ClassificationPredictRequest)
        top_k = len(label_names) if request.top_k is None else min(request.top_k, len(label_names))
        probabilities = softmax(np.stack([out["logits"] for out in outputs]))
        # Best first; equal scores keep the label order.
        best = np.argsort(-probabilities, axis=-1, kind="stable")[:, :top_k]
        return [
            [LabelScore(label=label_names[int(j)], score=float(p[j])) for j in order]
            for p, order in zip(probabilities, best, strict=True)
        ]


def _label_sort_key(label: str) -> tuple[int, float, str]:
    # Numeric labels sort numerically ("2" before "10"), the rest alphabetically.
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def classification_metrics(
    logits: np.ndarray, label_ids: np.ndarray, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    Macro-F1 averages the classes the evaluation rows have (`macro_f1_labels`); a class they lack
    (`absent_labels`) has no F1 to average, not an F1 of 0.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    preds = logits.argmax(axis=-1)
    labels = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        label_ids, preds, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    }
    present = [i for i in labels if support[i] > 0]
    return {
        "accuracy": float((preds == label_ids).mean()) if len(label_ids) else 0.0,
        "macro_f1": float(np.mean([f1[i] for i in present])) if present else 0.0,
        "macro_f1_labels": [label_names[i] for i in present],
        "absent_labels": [label_names[i] for i in labels if support[i] == 0],
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(label_ids, preds, labels=labels).tolist(),
    }
