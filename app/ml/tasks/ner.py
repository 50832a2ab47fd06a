"""Named-entity recognition (token classification): CoNLL and span uploads, word/sub-token label
alignment, seqeval-style metrics, and entities with exact character offsets at serving.

Data reading and IOB repair live in ner_data.py, tag arithmetic in ner_tags.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import InvalidInput
from app.ml.batching import sorted_batches
from app.ml.tasks import ner_data
from app.ml.tasks.base import DatasetSummary, Normalized, TaskDefaults
from app.ml.tasks.ner_tags import (
    IGNORE,
    OUTSIDE,
    align_labels,
    complete_tag_set,
    entity_spans,
    first_subtokens,
    ner_metrics,
    sorted_tags,
    split_words,
    word_windows,
)

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

    from app.ml.tables import ParsedTable

# Eval-only feature column: for each sub-token, the index of the word it starts, else -1.
WORD_INDEX = "word_index"


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

    tokens: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="A pre-tokenized sentence: one tag comes back per token."
    )


class NerPredictRequest(BaseModel):
    """Body of POST /v1/predict/ner."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model id from /v1/models.")
    inputs: list[str | TokensInput] = Field(
        min_length=1,
        description='Raw texts (entities come back with character offsets), or {"tokens": [...]}'
        " objects (one tag per token comes back).",
    )


class Entity(BaseModel):
    label: str = Field(description="Entity type, e.g. PER.")
    text: str = Field(description="input[start:end], exactly.")
    start: int
    end: int
    score: float = Field(description="Mean of the words' tag probabilities.")


class TokenTag(BaseModel):
    token: str
    tag: str
    # None for a token the tokenizer turns into nothing (e.g. a zero-width space): tagged O.
    score: float | None


def _column(ds: datasets.Dataset, name: str) -> list[Any]:
    return list(ds[name][:])


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
    peft_task_type: str = "TOKEN_CLS"
    primary_metric: str = "f1"
    options_model: type[BaseModel] = NerOptions
    predict_request: type[BaseModel] = NerPredictRequest
    eval_only_columns: tuple[str, ...] = (WORD_INDEX,)

    def default_hyperparameters(self, method: str) -> dict[str, Any]:
        return {}

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
                zip(_column(ds, "tokens"), _column(ds, "tags"), strict=True)
            )
        ]
        tokens = [words for words, _ in rows]
        tags = [row_tags for _, row_tags in rows]
        if strict and scan.scheme == "IOB2" and scan.stray:
            raise ner_data.strict_refusal(tags, scan)
        notes = ner_data.repair(tags, scan)
        return Normalized(hf.Dataset.from_dict({"tokens": tokens, "tags": tags}), notes)

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        rows_tags = _column(ds, "tags")
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
        return complete_tag_set({tag for tags in _column(train, "tags") for tag in tags})

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

    def stratify_column(self) -> str | None:
        return None

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
        _require_fast(tokenizer)
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
        gold = _column(eval_rows, "tags")
        feature_labels = _column(eval_features, "labels")
        word_index = _column(eval_features, WORD_INDEX)

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
            return ner_metrics([gold[f] for f in order], pred_tags)

        return compute

    # --- serving -------------------------------------------------------------------------------

    def predict(
        self,
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        label_names: Sequence[str],
        max_length: int,
        batch_size: int,
        options: BaseModel,
    ) -> list[Any]:
        assert isinstance(request, NerPredictRequest)
        split = [_words(item) for item in request.inputs]
        tagged = tag_words(
            model,
            tokenizer,
            [words for words, _ in split],
            label_names=label_names,
            max_length=max_length,
            batch_size=batch_size,
        )
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


def _require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise RuntimeError(
            "NER needs a fast (Rust) tokenizer, whose word_ids map sub-tokens back to words"
        )


def _label_key(labels: Any) -> tuple[int, ...]:
    # Labels without the trailing -100s: the Trainer pads label rows to the longest with -100.
    arr = np.asarray(labels)
    kept = np.nonzero(arr != IGNORE)[0]
    return tuple(int(x) for x in arr[: kept[-1] + 1]) if len(kept) else ()


def match_features(label_ids: np.ndarray, feature_labels: Sequence[Sequence[int]]) -> list[int]:
    """For each evaluated row, the index of the eval feature it came from.

    Prediction rows need not come in feature order (transformers 5 groups eval batches by length,
    a shuffled order, when training does), so they are matched to features by their labels.
    Features with equal labels hold equal gold tags where the model sees them, so which of them
    a row is paired with does not change the metrics.
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


WordTag = tuple[str, float]


def _subtoken_counts(tokenizer: PreTrainedTokenizerBase, words: list[list[str]]) -> list[list[int]]:
    counts = [[0] * len(w) for w in words]
    present = [i for i, w in enumerate(words) if w]
    if not present:
        return counts
    enc = tokenizer([words[i] for i in present], is_split_into_words=True, add_special_tokens=False)
    for row, i in enumerate(present):
        for word in enc.word_ids(row):
            if word is not None:
                counts[i][word] += 1
    return counts


def tag_words(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    words: list[list[str]],
    *,
    label_names: Sequence[str],
    max_length: int,
    batch_size: int,
) -> list[list[WordTag | None]]:
    """The predicted tag and its probability for every word of every input (None for a word that
    has no sub-token). Long inputs are cut into windows of whole words that fit max_length."""
    import torch

    _require_fast(tokenizer)
    counts = _subtoken_counts(tokenizer, words)
    budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False))
    windows = [(i, a, b) for i, c in enumerate(counts) for a, b in word_windows(c, budget)]
    results: list[list[WordTag | None]] = [[None] * len(w) for w in words]
    for idx in sorted_batches(
        windows, batch_size=batch_size, length=lambda w: sum(counts[w[0]][w[1] : w[2]])
    ):
        batch = [windows[j] for j in idx]
        enc = tokenizer(
            [words[i][a:b] for i, a, b in batch],
            is_split_into_words=True,
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        word_ids = [enc.word_ids(r) for r in range(len(batch))]
        with torch.inference_mode():
            logits = model(**enc.to(model.device)).logits.float()
        scores, best = torch.softmax(logits, dim=-1).max(dim=-1)
        scores_rows, best_rows = scores.tolist(), best.tolist()
        for r, (i, a, _) in enumerate(batch):
            for position, word in enumerate(first_subtokens(word_ids[r])):
                if word >= 0:
                    # Window-relative word index + the window's first word = index in the input.
                    results[i][a + word] = (
                        label_names[best_rows[r][position]],
                        scores_rows[r][position],
                    )
    return results


def group_entities(
    text: str, offsets: Sequence[tuple[int, int]], word_preds: Sequence[WordTag | None]
) -> list[Entity]:
    """Whole entities from word tags (B-X opens, I-X continues X); offsets index into `text`.

    An entity runs from its first word's start to its last word's end, so text[start:end] keeps
    whatever spaces or punctuation sat between its words; its score is the mean word score.
    """
    tags = [p[0] if p else OUTSIDE for p in word_preds]
    entities: list[Entity] = []
    for kind, first, stop in entity_spans(tags):
        start, end = offsets[first][0], offsets[stop - 1][1]
        scores = [p[1] for p in word_preds[first:stop] if p]
        entities.append(
            Entity(
                label=kind,
                text=text[start:end],
                start=start,
                end=end,
                score=float(np.mean(scores)) if scores else 0.0,
            )
        )
    return entities
