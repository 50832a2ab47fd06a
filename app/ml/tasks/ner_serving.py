"""NER serving: tag the words of raw texts or token lists, group words into entities with
exact character offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, Field

from app.ml.tasks.ner_tags import OUTSIDE, entity_spans, first_subtokens, word_windows
from app.ml.tasks.serving import feature_rows, softmax

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


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


def require_fast(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise RuntimeError(
            "NER needs a fast (Rust) tokenizer, whose word_ids map sub-tokens back to words"
        )


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


@dataclass
class Windows:
    """NER feature rows: which input and words each row holds, and its tokens' word ids."""

    words: list[list[str]]
    # Per row: (input index, first word, end word) and the row's word id per token.
    spans: list[tuple[int, int, int]]
    word_ids: list[list[int | None]]


def encode_windows(
    tokenizer: PreTrainedTokenizerBase, words: list[list[str]], *, max_length: int
) -> tuple[list[dict[str, list[int]]], Windows]:
    """Feature rows for the words of every input: long inputs are cut into windows of whole
    words that fit max_length, one row each."""
    require_fast(tokenizer)
    counts = _subtoken_counts(tokenizer, words)
    budget = max(1, max_length - tokenizer.num_special_tokens_to_add(pair=False))
    spans = [(i, a, b) for i, c in enumerate(counts) for a, b in word_windows(c, budget)]
    if not spans:
        return [], Windows(words, [], [])
    enc = tokenizer(
        [words[i][a:b] for i, a, b in spans],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    word_ids = [enc.word_ids(r) for r in range(len(spans))]
    return feature_rows(enc), Windows(words, spans, word_ids)


def tag_words(
    windows: Windows,
    outputs: Sequence[Mapping[str, np.ndarray]],
    *,
    label_names: Sequence[str],
) -> list[list[WordTag | None]]:
    """The predicted tag and its probability for every word of every input (None for a word that
    has no sub-token), each word tagged at its first sub-token."""
    results: list[list[WordTag | None]] = [[None] * len(w) for w in windows.words]
    for r, (i, a, _) in enumerate(windows.spans):
        probabilities = softmax(outputs[r]["logits"])
        best = probabilities.argmax(axis=-1)
        for position, word in enumerate(first_subtokens(windows.word_ids[r])):
            if word >= 0:
                # Window-relative word index + the window's first word = index in the input.
                tag = int(best[position])
                results[i][a + word] = (label_names[tag], float(probabilities[position, tag]))
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
