"""Extractive QA post-processing shared by evaluation and /predict, and SQuAD's EM/F1.

A question's context may be split into several features (document stride). Each feature gives a
start and an end logit per token; an answer is a (start token, end token) pair inside the context
part of one feature, scored by the sum of its two logits. The n-best pairs of every feature of a
question compete together; the "null" answer (start = end = the CLS token) competes too when the
model was trained for unanswerable questions (SQuAD v2).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Offsets of one feature's tokens into the context: (start char, end char), or None for the
# question's tokens, special tokens and padding, which can never be part of an answer.
Offsets = Sequence[Sequence[int] | None]


@dataclass(frozen=True)
class FeatureLogits:
    """The model's output for one feature, with what is needed to map tokens back to the text."""

    start_logits: np.ndarray
    end_logits: np.ndarray
    offsets: Offsets
    cls_index: int = 0


@dataclass(frozen=True)
class Span:
    """An answer candidate: context[start:end], scored by start logit + end logit."""

    start: int
    end: int
    logit: float


@dataclass(frozen=True)
class Answer:
    """One answer to return: `text == context[start:end]`; the null answer is ("", 0, 0)."""

    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class PostprocessOptions:
    n_best_size: int = 20
    max_answer_length: int = 30
    allow_null: bool = False
    null_score_diff_threshold: float = 0.0


def feature_spans(
    feature: FeatureLogits, *, n_best_size: int, max_answer_length: int
) -> list[Span]:
    """Valid answer spans of one feature among its n_best start and n_best end tokens."""
    # Logit arrays may be longer than the feature (the Trainer pads batches with -100), so only
    # positions the offsets cover count, and of those only the context's tokens.
    context = np.array([i for i, off in enumerate(feature.offsets) if off is not None], dtype=int)
    if context.size == 0:
        return []
    starts = _top(feature.start_logits, context, n_best_size)
    ends = _top(feature.end_logits, context, n_best_size)
    spans: list[Span] = []
    for s in starts:
        for e in ends:
            # Token e must not precede token s, and the span is at most max_answer_length tokens.
            if e < s or e - s + 1 > max_answer_length:
                continue
            start_off, end_off = feature.offsets[s], feature.offsets[e]
            assert start_off is not None and end_off is not None
            # Characters from the first token's start to the last token's end.
            char_start, char_end = int(start_off[0]), int(end_off[1])
            if char_end <= char_start:
                continue  # a token that covers no character
            logit = float(feature.start_logits[s] + feature.end_logits[e])
            spans.append(Span(char_start, char_end, logit))
    return spans


def _top(logits: np.ndarray, positions: np.ndarray, k: int) -> list[int]:
    values = logits[positions]
    order = np.argsort(-values, kind="stable")[:k]
    return [int(p) for p in positions[order]]


def null_logit(feature: FeatureLogits) -> float:
    """The score of "no answer" in this feature: start and end both on the CLS token."""
    return float(feature.start_logits[feature.cls_index] + feature.end_logits[feature.cls_index])


def best_answers(
    context: str, features: Sequence[FeatureLogits], options: PostprocessOptions, *, top_k: int
) -> list[Answer]:
    """The top_k answers to one question from all its features, best first.

    Scores are a softmax over the n-best distinct spans (and the null answer when allowed). With
    `allow_null`, the null answer comes first when its logit beats the best span's by more than
    null_score_diff_threshold; it is otherwise ranked after the best span.
    """
    best: dict[tuple[int, int], float] = {}
    for feature in features:
        spans = feature_spans(
            feature, n_best_size=options.n_best_size, max_answer_length=options.max_answer_length
        )
        for span in spans:
            # The same characters can be found in two overlapping features: keep the best.
            key = (span.start, span.end)
            best[key] = max(span.logit, best.get(key, -np.inf))
    ranked = sorted(best.items(), key=lambda kv: -kv[1])[: max(options.n_best_size, top_k)]
    logits = [logit for _, logit in ranked]
    null = min((null_logit(f) for f in features), default=0.0) if options.allow_null else None
    if null is not None:
        # The feature most confident that the answer is in it decides the null score.
        logits.append(null)
    if not logits:
        return [Answer("", 0, 0, 0.0)]
    probs = _softmax(np.asarray(logits, dtype=np.float64))
    answers = [
        Answer(context[s:e], s, e, float(p)) for ((s, e), _), p in zip(ranked, probs, strict=False)
    ]
    if null is not None:
        empty = Answer("", 0, 0, float(probs[-1]))
        if not ranked or null > ranked[0][1] + options.null_score_diff_threshold:
            answers.insert(0, empty)
        else:
            at = 1 + sum(1 for _, logit in ranked[1:] if logit >= null)
            answers.insert(at, empty)
    return answers[:top_k]


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    result: np.ndarray = z / z.sum()
    return result


# SQuAD's answer normalisation: lowercase, drop punctuation, drop articles, squeeze whitespace.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD evaluation's normalisation, in its order."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the prediction equals one gold answer after normalisation ("" for no answer)."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(g) for g in (golds or [""])))


def token_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of two normalised answers; two empty answers agree fully."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_f1(prediction: str, golds: Sequence[str]) -> float:
    """F1 against the closest gold answer; an unanswerable question's gold answer is ""."""
    return max(token_f1(prediction, g) for g in (golds or [""]))


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and F1 (fractions, 0 to 1), split by answerable/unanswerable if both."""
    em = [exact_match(p, g) for p, g in zip(predictions, golds, strict=True)]
    f1 = [best_f1(p, g) for p, g in zip(predictions, golds, strict=True)]
    scores = {
        "exact_match": _mean(em),
        "f1": _mean(f1),
        "examples": float(len(em)),
    }
    has = [bool(g) for g in golds]
    if any(has) and not all(has):
        scores["has_answer_f1"] = _mean([x for x, h in zip(f1, has, strict=True) if h])
        scores["no_answer_exact_match"] = _mean([x for x, h in zip(em, has, strict=True) if not h])
    return scores


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0
