"""NER serving: tag the words of raw texts or token lists, group words into entities with
exact character offsets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field

from app.ml.batching import sorted_batches
from app.ml.tasks.ner_tags import OUTSIDE, entity_spans, first_subtokens, word_windows

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

    require_fast(tokenizer)
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
