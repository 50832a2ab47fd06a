"""Extractive QA features: question + a window of the context, with a document stride.

A context longer than max_length is cut into overlapping windows; each window becomes one feature
`[CLS] question [SEP] context window [SEP]` (truncation="only_second" cuts the context only).
Consecutive windows share `stride` context tokens, so an answer near a cut is whole in one of
them. Training labels are the answer's first and last token in the feature, or the CLS token when
the feature does not hold the whole answer or the question has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# sequence_ids() of a question-first pair: 0 for question tokens, 1 for context tokens.
CONTEXT_SEQUENCE = 1


@dataclass
class Features:
    """Model inputs for some questions; several features may belong to one question."""

    inputs: dict[str, list[Any]]
    # The question (index into the encoded batch) each feature belongs to.
    example_index: list[int]
    # Per feature and token: (start, end) characters in the context, None outside the context.
    offsets: list[list[tuple[int, int] | None]]
    cls_index: list[int]


def effective_stride(
    doc_stride: int, *, max_length: int, question_tokens: int, specials: int
) -> int:
    """doc_stride, capped at half of the room a feature leaves for context tokens.

    Windows then always advance by at least half their length (the tokenizer refuses a stride
    that leaves no room to advance, and a stride near the room would make many tiny steps).
    """
    room = max_length - question_tokens - specials
    return max(0, min(doc_stride, room // 2))


def _clip_questions(
    tokenizer: PreTrainedTokenizerBase, questions: Sequence[str], limit: int
) -> tuple[list[str], int]:
    """Questions cut to at most `limit` tokens (at a token's end), and the longest's length."""
    # Leading whitespace only wastes room (a few SQuAD questions have lots of it).
    stripped = [q.lstrip() for q in questions]
    enc = tokenizer(stripped, add_special_tokens=False, return_offsets_mapping=True)
    clipped, longest = [], 0
    for text, offsets in zip(stripped, enc["offset_mapping"], strict=True):
        if len(offsets) > limit:
            # Keep the characters up to the end of the last token that fits.
            text = text[: offsets[limit - 1][1]]
        clipped.append(text)
        longest = max(longest, min(len(offsets), limit))
    return clipped, longest


def encode(
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    contexts: Sequence[str],
    *,
    max_length: int,
    doc_stride: int,
) -> Features:
    """Tokenize question/context pairs into (possibly several) features each, unpadded."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("question answering needs a fast tokenizer (for offset mappings)")
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    # A question may take at most half of a feature, so the context always has room.
    questions, longest = _clip_questions(tokenizer, questions, max(1, max_length // 2 - specials))
    stride = effective_stride(
        doc_stride, max_length=max_length, question_tokens=longest, specials=specials
    )
    enc = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    example_index = list(enc.pop("overflow_to_sample_mapping"))
    raw_offsets = enc.pop("offset_mapping")
    offsets: list[list[tuple[int, int] | None]] = []
    cls_index: list[int] = []
    for i, feature_offsets in enumerate(raw_offsets):
        sequence_ids = enc.sequence_ids(i)
        # Only context tokens keep their offsets; the question's offsets point into the
        # question, not the context, and special tokens have none.
        offsets.append(
            [
                (int(o[0]), int(o[1])) if sid == CONTEXT_SEQUENCE else None
                for o, sid in zip(feature_offsets, sequence_ids, strict=True)
            ]
        )
        cls_index.append(_cls_position(enc["input_ids"][i], tokenizer.cls_token_id))
    return Features(dict(enc), example_index, offsets, cls_index)


def _cls_position(input_ids: Sequence[int], cls_token_id: int | None) -> int:
    if cls_token_id is not None and cls_token_id in input_ids:
        return list(input_ids).index(cls_token_id)
    return 0


def answer_positions(
    offsets: Sequence[tuple[int, int] | None], char_start: int, char_end: int, cls: int
) -> tuple[int, int]:
    """First and last token of context[char_start:char_end] in a feature, or (cls, cls).

    `offsets` are the feature's context offsets (None elsewhere), as `encode` returns them.
    """
    context = [i for i, off in enumerate(offsets) if off is not None]
    if not context:
        return cls, cls
    first, last = context[0], context[-1]
    first_off, last_off = offsets[first], offsets[last]
    assert first_off is not None and last_off is not None
    # The window must hold the whole answer: it starts at or before the answer's first
    # character and ends at or after its last one. Otherwise the feature is labelled "no answer".
    if first_off[0] > char_start or last_off[1] < char_end:
        return cls, cls
    # Start token: the last context token that begins at or before the answer's first character.
    start = first
    while start < last and _begin(offsets, start + 1) <= char_start:
        start += 1
    # End token: the first context token (from the start token on) that ends at or after the
    # answer's end, so a partly covered last token still counts.
    end = start
    while end < last and _finish(offsets, end) < char_end:
        end += 1
    return start, end


def _begin(offsets: Sequence[tuple[int, int] | None], i: int) -> int:
    off = offsets[i]
    assert off is not None
    return off[0]


def _finish(offsets: Sequence[tuple[int, int] | None], i: int) -> int:
    off = offsets[i]
    assert off is not None
    return off[1]


def label_features(features: Features, answers: Sequence[dict[str, list[Any]]]) -> None:
    """Add start_positions/end_positions: the first gold answer's tokens, or CLS for none."""
    starts, ends = [], []
    for i, example in enumerate(features.example_index):
        gold = answers[example]
        cls = features.cls_index[i]
        if not gold["text"]:
            starts.append(cls)
            ends.append(cls)
            continue
        char_start = int(gold["answer_start"][0])
        char_end = char_start + len(gold["text"][0])
        s, e = answer_positions(features.offsets[i], char_start, char_end, cls)
        starts.append(s)
        ends.append(e)
    features.inputs["start_positions"] = starts
    features.inputs["end_positions"] = ends
