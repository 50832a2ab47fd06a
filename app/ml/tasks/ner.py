"""Named-entity recognition (token classification): CoNLL and span uploads, word/sub-token label
alignment, seqeval-style metrics, and entities with exact character offsets at serving.

Data reading and IOB repair live in ner_data.py, tag arithmetic in ner_tags.py, the serving
steps in ner_serving.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import InvalidInput
from app.core.text import UnicodeText
from app.ml.tasks import ner_data
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
from app.ml.tasks.ner_serving import (
    TokenTag,
    encode_windows,
    group_entities,
    require_fast,
    tag_words,
)
from app.ml.tasks.ner_tags import (
    IGNORE,
    OUTSIDE,
    align_labels,
    complete_tag_set,
    entity_type,
    entity_word_lookup,
    first_subtokens,
    lookup_tags,
    ner_metrics,
    sorted_tags,
    split_words,
)

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

    from app.ml.tables import ParsedTable

# Eval-only feature column: for each sub-token, the index of the word it starts, else -1.
WORD_INDEX = "word_index"


# See NerTask.default_hyperparameters for the sweep behind each rate.
NER_LEARNING_RATE = {
    "full": 2e-4,
    "lora": 2e-3,
    "ia3": 1e-2,
    "adalora": 1e-2,
    "prefix_tuning": 1e-2,
    "head_only": 3e-2,
}


class NerOptions(BaseModel):
    """task_options of an NER job."""

    model_config = ConfigDict(extra="forbid")

    label_all_tokens: bool = Field(
        default=False,
        description="Train on every sub-token of a word (B- words continue as I-), not only the "
        "first. Evaluation and serving always read the first sub-token of each word.",
    )


class TokensInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[Annotated[UnicodeText, Field(min_length=1)]] = Field(
        min_length=1, description="A pre-tokenized sentence: one tag comes back per token."
    )


class NerPredictRequest(BaseModel):
    """Body of POST /v1/predict/ner."""

    model_config = ConfigDict(extra="forbid")

    model: UnicodeText = Field(description="Model id from /v1/models, or an alias (/v1/aliases).")
    # A raw text with no word in it (empty, blank, punctuation only) has no entities.
    inputs: list[UnicodeText | TokensInput] = Field(
        min_length=1,
        description='Raw texts (entities come back with character offsets), or {"tokens": [...]}'
        " objects (one tag per token comes back).",
    )


def entity_types(tags: Sequence[str]) -> set[str]:
    """The entity types that tags name: {"PER"} for B-PER and I-PER."""
    return {entity_type(tag) for tag in tags if tag != OUTSIDE}


class NerTask(TaskDefaults):
    name: str = "ner"
    required_columns: tuple[str, ...] = ("tokens", "tags")
    optional_columns: tuple[str, ...] = ()
    column_aliases: Mapping[str, tuple[str, ...]] = {
        "tokens": ("words", "token"),
        "tags": ("ner_tags", "labels", "label", "tag", "ner"),
    }
    native_formats: tuple[str, ...] = (ner_data.CONLL,)
    auto_model_class_name: str = "AutoModelForTokenClassification"
    peft_task_type: str | None = "TOKEN_CLS"
    per_token_outputs: bool = True
    primary_metric: str = "f1"
    eval_metrics: tuple[str, ...] = ("f1", "precision", "recall", "accuracy")
    supports_label_smoothing: bool = True
    options_model: type[BaseModel] = NerOptions
    predict_request: type[BaseModel] = NerPredictRequest
    eval_only_columns: tuple[str, ...] = (WORD_INDEX,)

    def default_hyperparameters(
        self, method: str, *, train_rows: int | None = None
    ) -> dict[str, Any]:
        # Measured on CoNLL-2003 (3,000 sentences, 2 epochs, all-MiniLM-L6-v2, eng.testa F1):
        # full: batch 32 / lr 1e-4 (the service defaults) 0.75; batch 16 / 3e-4 0.82; batch 8 /
        # 1e-4 0.835, 2e-4 0.846, 3e-4 0.837. LoRA r=16, batch 8: lr 1e-3 0.765, 2e-3 0.787.
        # Token tagging wants more, smaller steps than sentence classification. Per method, swept
        # with benchmarks/method_defaults.py (1,000 CoNLL sentences, 3 epochs, batch 8, testa F1,
        # seed 0, the head training with nothing else above the blocks): IA3 2e-3 0.576, 1e-2
        # 0.712; AdaLoRA 2e-3 0.625, 1e-2 0.708; prefix tuning 2e-3 0.506, 1e-2 0.632; head_only
        # 2e-3 0.380, 1e-2 0.482, 3e-2 0.509 (full 2e-4 0.772, LoRA 2e-3 0.717).
        return {"batch_size": 8, "learning_rate": NER_LEARNING_RATE.get(method, 2e-3)}

    # --- uploads -------------------------------------------------------------------------------

    def sniff_format(self, head: str, *, filename: str | None) -> str | None:
        return ner_data.CONLL if ner_data.sniff_conll(head, filename=filename) else None

    def read_native(self, path: Path, fmt: str, *, max_rows: int) -> ParsedTable:
        if fmt != ner_data.CONLL:
            raise NotImplementedError(f"no native format '{fmt}'")
        return ner_data.read_conll(path, max_rows=max_rows)

    def adapt_table(self, table: pa.Table) -> pa.Table:
        return ner_data.spans_table(table) if ner_data.is_span_table(table) else table

    def normalize(self, ds: datasets.Dataset, *, strict: bool = False) -> Normalized:
        """Check every row; convert IOB1 to IOB2 and repair stray I- tags (refused if strict).

        IOB1 (I- opens entities, B- only splits two adjacent ones of a type, as in CoNLL-2003) is
        a scheme, converted without loss even under strict. An I- that opens an entity in data
        that otherwise opens entities with B- is a mistake: made B- and counted, or refused
        under strict.
        """
        import datasets as hf

        scan = ner_data.TagScan()
        rows = [
            ner_data.check_row(tokens, tags, i + 1, scan)
            for i, (tokens, tags) in enumerate(
                zip(column_values(ds, "tokens"), column_values(ds, "tags"), strict=True)
            )
        ]
        tokens = [words for words, _ in rows]
        tags = [row_tags for _, row_tags in rows]
        if strict and scan.scheme == "IOB2" and scan.stray:
            raise ner_data.strict_refusal(tags, scan)
        notes = ner_data.repair(tags, scan)
        return Normalized(hf.Dataset.from_dict({"tokens": tokens, "tags": tags}), notes)

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        rows_tags = column_values(ds, "tags")
        counts = Counter(tag for tags in rows_tags for tag in tags)
        names = sorted_tags(set(counts))
        return DatasetSummary(
            num_rows=ds.num_rows,
            columns=list(ds.column_names),
            label_names=names,
            label_counts={tag: counts[tag] for tag in names},
            stats={"tokens": counts.total(), "entities": ner_data.entity_counts(rows_tags)},
        )

    # --- jobs ----------------------------------------------------------------------------------

    def label_names(
        self, train: datasets.Dataset, validation: datasets.Dataset | None
    ) -> list[str]:
        # B- and I- of every entity type, even one whose entities are all one word long, so that
        # label_all_tokens has an I- for a B- word's later sub-tokens.
        return complete_tag_set({tag for tags in column_values(train, "tags") for tag in tags})

    def check_compatible(self, train: DatasetSummary, validation: DatasetSummary) -> None:
        train_tags = set(train.label_names or [])
        if train_tags <= {OUTSIDE}:
            raise InvalidInput(
                "train_dataset has no entities (every tag is O)", field="train_dataset"
            )
        known = set(complete_tag_set(train_tags))
        extra = sorted_tags(set(validation.label_names or []) - known)
        if extra:
            raise InvalidInput(
                f"validation_dataset has tags of entity types train_dataset lacks: {extra[:20]}",
                field="validation_dataset",
                tags=extra,
            )

    def absent_labels(
        self, labels: Sequence[str], validation: DatasetSummary
    ) -> AbsentLabels | None:
        if validation.label_names is None:
            return None
        absent = sorted(entity_types(labels) - entity_types(validation.label_names))
        if not absent:
            return None
        return AbsentLabels(
            absent,
            "entities of type(s)",
            "precision, recall and F1 cover only the types it has",
        )

    def stratify_column(self) -> str | None:
        return None

    def transfer_inputs(self, rows: datasets.Dataset) -> list[Any]:
        # Pre-tokenized: one tag comes back per word of the row.
        return [{"tokens": list(words)} for words in column_values(rows, "tokens")]

    def with_predicted_labels(
        self, rows: datasets.Dataset, predictions: Sequence[Any]
    ) -> datasets.Dataset:
        tags = [[str(predicted(word, "tag")) for word in p] for p in predictions]
        return replace_column(rows, "tags", tags)

    def preprocess(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label2id: Mapping[str, int],
        max_length: int,
        options: BaseModel,
        for_eval: bool,
    ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
        assert isinstance(options, NerOptions)
        require_fast(tokenizer)
        # Evaluation labels first sub-tokens only: metrics and the eval loss are per word.
        all_tokens = options.label_all_tokens and not for_eval

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            enc = tokenizer(
                batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length
            )
            out: dict[str, list[Any]] = dict(enc)
            word_ids = [enc.word_ids(i) for i in range(len(batch["tokens"]))]
            out["labels"] = [
                align_labels(ids, tags, label2id, label_all_tokens=all_tokens)
                for ids, tags in zip(word_ids, batch["tags"], strict=True)
            ]
            if for_eval:
                out[WORD_INDEX] = [first_subtokens(ids) for ids in word_ids]
            return out

        return encode

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[Any]], Any]:
        from transformers import DataCollatorForTokenClassification

        # Pads input ids with the pad token and labels with -100.
        return DataCollatorForTokenClassification(tokenizer)

    def compute_metrics(
        self,
        label_names: Sequence[str],
        *,
        options: BaseModel,
        eval_rows: datasets.Dataset,
        eval_features: datasets.Dataset,
    ) -> Callable[[Any], dict[str, Any]]:
        gold = column_values(eval_rows, "tags")
        feature_labels = column_values(eval_features, "labels")
        word_index = column_values(eval_features, WORD_INDEX)

        def compute(pred: Any) -> dict[str, Any]:
            logits = (
                pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
            )
            predicted = np.asarray(logits).argmax(-1)
            order = match_features(np.asarray(pred.label_ids), feature_labels)
            pred_tags = [
                word_tags(predicted[r], word_index[f], len(gold[f]), label_names)
                for r, f in enumerate(order)
            ]
            metrics = ner_metrics([gold[f] for f in order], pred_tags)
            per_type = metrics["per_type"]
            metrics["absent_labels"] = [
                kind
                for kind in sorted(entity_types(label_names))
                if not per_type.get(kind, {}).get("support")
            ]
            return metrics

        return compute

    def baseline_metrics(
        self,
        train_rows: datasets.Dataset,
        validation_rows: datasets.Dataset,
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> dict[str, float]:
        """A lookup of the train set's entity words (ner_tags.entity_word_lookup) tags each
        validation sentence; scored with ner_metrics as the model is."""
        lookup = entity_word_lookup(
            column_values(train_rows, "tokens"), column_values(train_rows, "tags")
        )
        sentences = column_values(validation_rows, "tokens")
        predicted = [lookup_tags(words, lookup) for words in sentences]
        metrics = ner_metrics(column_values(validation_rows, "tags"), predicted)
        return {k: float(metrics[k]) for k in self.eval_metrics}

    # --- serving -------------------------------------------------------------------------------

    def encode_inputs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        max_length: int,
        options: BaseModel,
    ) -> Encoded:
        assert isinstance(request, NerPredictRequest)
        split = [_words(item) for item in request.inputs]
        rows, windows = encode_windows(
            tokenizer, [words for words, _ in split], max_length=max_length
        )
        return Encoded(rows, state=(split, windows))

    def postprocess(
        self,
        request: BaseModel,
        encoded: Encoded,
        outputs: Sequence[Mapping[str, np.ndarray]],
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> list[Any]:
        assert isinstance(request, NerPredictRequest)
        split, windows = encoded.state
        tagged = tag_words(windows, outputs, label_names=label_names)
        results: list[Any] = []
        for item, (words, offsets), preds in zip(request.inputs, split, tagged, strict=True):
            if isinstance(item, str) and offsets is not None:
                results.append(group_entities(item, offsets, preds))
            else:
                results.append(
                    [
                        TokenTag(token=w, tag=p[0] if p else OUTSIDE, score=p[1] if p else None)
                        for w, p in zip(words, preds, strict=True)
                    ]
                )
        return results


def _words(item: str | TokensInput) -> tuple[list[str], list[tuple[int, int]] | None]:
    """The words of an input, and for a raw text their character offsets in it."""
    if isinstance(item, str):
        offsets = split_words(item)
        return [item[a:b] for a, b in offsets], offsets
    return list(item.tokens), None


def _label_key(labels: Any) -> tuple[int, ...]:
    # Labels without the trailing -100s: the Trainer pads label rows to the longest with -100.
    arr = np.asarray(labels)
    kept = np.nonzero(arr != IGNORE)[0]
    return tuple(int(x) for x in arr[: kept[-1] + 1]) if len(kept) else ()


def match_features(label_ids: np.ndarray, feature_labels: Sequence[Sequence[int]]) -> list[int]:
    """For each evaluated row, the index of the eval feature it came from.

    The runner evaluates in dataset order, but transformers 5 would group eval batches by length
    (a shuffled order) when training does, so the metrics do not rely on the order: rows are
    matched to features by their labels. Features with equal labels hold equal gold tags where the
    model sees them, so which of them a row is paired with does not change the metrics.
    """
    waiting: dict[tuple[int, ...], deque[int]] = defaultdict(deque)
    for f, labels in enumerate(feature_labels):
        waiting[_label_key(labels)].append(f)
    order: list[int] = []
    for row in label_ids:
        queue = waiting.get(_label_key(row))
        if not queue:
            raise RuntimeError("evaluation predictions do not match the evaluation features")
        order.append(queue.popleft())
    return order


def word_tags(
    predicted: np.ndarray, word_index: Sequence[int], num_words: int, label_names: Sequence[str]
) -> list[str]:
    """Word-level tags from one row of sub-token predictions: each word takes the prediction at
    its first sub-token; words the model never saw (truncated, or no sub-token) are O."""
    tags = [OUTSIDE] * num_words
    for position, word in enumerate(word_index):
        if word >= 0 and position < len(predicted):
            tags[word] = label_names[int(predicted[position])]
    return tags
