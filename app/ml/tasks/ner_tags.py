"""NER tag arithmetic: IOB2 tags, entity spans, seqeval-style metrics, words and sub-tokens.

Pure functions on lists, no torch: the NER task's data, training and serving code share them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

OUTSIDE = "O"
# Positions the loss skips (torch's CrossEntropyLoss ignore_index): special tokens, padding and,
# unless label_all_tokens, the sub-tokens after a word's first.
IGNORE = -100

# Words of a raw text, split as CoNLL-2003 splits its tokens: numbers with inner separators
# ("3,000", "5.25", "1/2"), abbreviations ("U.S.") and initials ("J. Smith"), words joined by
# hyphens or inner apostrophes ("Saint-Denis", "1996-08-22", "O'Neill"), a possessive "'s" on its
# own, runs of one punctuation mark ("--", "..."), any other non-space character on its own.
# Each match's span gives the word's exact character offsets.
WORD_RE = re.compile(
    r"\d+(?:[.,:/]\d+)+"
    r"|(?:\w\.){2,}"
    r"|(?<!\w)[A-Z]\.(?!\w)"
    r"|\w+(?:-\w+|['\u2019](?![sS]\b)\w+)*"
    r"|['\u2019][sS]\b"
    r"|([^\w\s])\1*"
)


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER", ("I", "PER") for "I-PER", ("O", "") for "O"."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    return tag[0], tag[2:]


def tag_sort_key(tag: str) -> tuple[int, str, int]:
    """ "O" first, then by entity type, B- before I- of the same type."""
    prefix, kind = split_tag(tag)
    if prefix == OUTSIDE:
        return (0, "", 0)
    return (1, kind, 0 if prefix == "B" else 1)


def sorted_tags(tags: set[str] | Sequence[str]) -> list[str]:
    return sorted(set(tags), key=tag_sort_key)


def entity_type(tag: str) -> str:
    return split_tag(tag)[1]


def is_stray_inside(previous: str, tag: str) -> bool:
    """An I-X that continues nothing: after O, at the start, or after a tag of another type.

    In IOB2 every entity opens with B-, so this is an error; in IOB1 it is how entities open.
    """
    return tag.startswith("I-") and entity_type(previous) != entity_type(tag)


def is_b_opener(previous: str, tag: str) -> bool:
    """A B-X that opens an entity after O or another type: IOB2 usage. IOB1 uses B- only to split
    two adjacent entities of one type, so a B-X there always follows a tag of type X."""
    return tag.startswith("B-") and entity_type(previous) != entity_type(tag)


def to_iob2(tags: Sequence[str]) -> tuple[list[str], list[int]]:
    """The tags with each stray I-X made B-X (IOB1 -> IOB2), and the positions changed."""
    out: list[str] = []
    changed: list[int] = []
    previous = OUTSIDE
    for i, tag in enumerate(tags):
        if is_stray_inside(previous, tag):
            tag = "B-" + entity_type(tag)
            changed.append(i)
        out.append(tag)
        previous = tag
    return out, changed


def complete_tag_set(tags: set[str] | Sequence[str]) -> list[str]:
    """O plus B- and I- of every entity type among `tags`, sorted (the model's label set)."""
    kinds = {entity_type(t) for t in tags if t != OUTSIDE}
    return sorted_tags({OUTSIDE, *(f"B-{k}" for k in kinds), *(f"I-{k}" for k in kinds)})


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities as (type, first word, last word + 1).

    B-X opens an entity; I-X continues an open entity of type X and otherwise opens one (the
    lenient reading conlleval and seqeval's default mode use); O closes.
    """
    spans: list[tuple[str, int, int]] = []
    open_type: str | None = None
    start = 0
    for i, tag in enumerate(tags):
        prefix, kind = split_tag(tag)
        if prefix == "I" and kind == open_type:
            continue
        if open_type is not None:
            spans.append((open_type, start, i))
            open_type = None
        if prefix != OUTSIDE:
            open_type, start = kind, i
    if open_type is not None:
        spans.append((open_type, start, len(tags)))
    return spans


def _prf(true_pos: int, predicted: int, gold: int) -> dict[str, float]:
    precision = true_pos / predicted if predicted else 0.0
    recall = true_pos / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def ner_metrics(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Entity-level precision/recall/F1 (exact span and type, micro over all entities, and per
    type) and word accuracy, over sentences of word-level tags."""
    true_pos: Counter[str] = Counter()
    n_gold: Counter[str] = Counter()
    n_pred: Counter[str] = Counter()
    correct = total = 0
    for gold_tags, pred_tags in zip(gold, predicted, strict=True):
        gold_spans = set(entity_spans(gold_tags))
        pred_spans = set(entity_spans(pred_tags))
        n_gold.update(kind for kind, _, _ in gold_spans)
        n_pred.update(kind for kind, _, _ in pred_spans)
        true_pos.update(kind for kind, _, _ in gold_spans & pred_spans)
        correct += sum(g == p for g, p in zip(gold_tags, pred_tags, strict=True))
        total += len(gold_tags)
    per_type = {
        kind: {**_prf(true_pos[kind], n_pred[kind], n_gold[kind]), "support": n_gold[kind]}
        for kind in sorted(n_gold.keys() | n_pred.keys())
    }
    overall = _prf(sum(true_pos.values()), sum(n_pred.values()), sum(n_gold.values()))
    return {**overall, "accuracy": correct / total if total else 0.0, "per_type": per_type}


def align_labels(
    word_ids: Sequence[int | None],
    tags: Sequence[str],
    label2id: Mapping[str, int],
    *,
    label_all_tokens: bool,
) -> list[int]:
    """One label per sub-token of a tokenized sentence of words.

    word_ids[p] is the word that sub-token p comes from (None for [CLS], [SEP], padding). The
    first sub-token of a word carries the word's tag. The others carry IGNORE, or with
    label_all_tokens the tag of a continuation: "New York" -> new/B-LOC york/I-LOC, and
    "Rotterdam" -> rot/B-LOC ##ter/I-LOC ##dam/I-LOC (a B- word goes on as I-).
    """
    labels: list[int] = []
    previous: int | None = None
    for word in word_ids:
        if word is None:
            labels.append(IGNORE)
        elif word != previous:
            labels.append(label2id[tags[word]])
        elif label_all_tokens:
            labels.append(label2id[continuation(tags[word])])
        else:
            labels.append(IGNORE)
        previous = word
    return labels


def continuation(tag: str) -> str:
    """The tag of a later sub-token of a word tagged `tag`: B-X -> I-X, others unchanged."""
    return "I-" + tag[2:] if tag.startswith("B-") else tag


def first_subtokens(word_ids: Sequence[int | None]) -> list[int]:
    """For each sub-token: its word's index if it is that word's first sub-token, else -1."""
    out: list[int] = []
    previous: int | None = None
    for word in word_ids:
        out.append(word if word is not None and word != previous else -1)
        previous = word
    return out


def split_words(text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of the words of `text`; text[start:end] is the word."""
    return [m.span() for m in WORD_RE.finditer(text)]


def word_windows(counts: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut words into consecutive [start, end) ranges of at most `budget` sub-tokens each.

    counts[w] is the number of sub-tokens of word w. A word is never split: a word longer than
    the budget gets a window of its own (truncated there, its first sub-token kept).
    """
    windows: list[tuple[int, int]] = []
    start = used = 0
    for w, count in enumerate(counts):
        if w > start and used + count > budget:
            windows.append((start, w))
            start, used = w, 0
        used += count
    if counts:
        windows.append((start, len(counts)))
    return windows


def entity_word_lookup(
    sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]
) -> dict[str, str]:
    """The NER baseline's lookup: each token (as written) that the sentences tag inside entities
    more often than outside them, with its most frequent entity type there (ties: the first type
    in alphabetical order)."""
    inside: dict[str, Counter[str]] = {}
    outside: Counter[str] = Counter()
    for words, word_tags in zip(sentences, tags, strict=True):
        for word, tag in zip(words, word_tags, strict=True):
            if tag == OUTSIDE:
                outside[word] += 1
            else:
                inside.setdefault(word, Counter())[entity_type(tag)] += 1
    lookup: dict[str, str] = {}
    for word, types in inside.items():
        if types.total() > outside[word]:
            lookup[word] = min(types, key=lambda kind: (-types[kind], kind))
    return lookup


def lookup_tags(words: Sequence[str], lookup: Mapping[str, str]) -> list[str]:
    """IOB2 tags from the lookup: a run of adjacent looked-up words of one type is one entity
    (B- then I-); every other word is O."""
    out: list[str] = []
    previous: str | None = None
    for word in words:
        kind = lookup.get(word)
        if kind is None:
            out.append(OUTSIDE)
        else:
            out.append(("I-" if kind == previous else "B-") + kind)
        previous = kind
    return out
