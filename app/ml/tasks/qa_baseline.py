"""The QA task's trivial baseline: a span picked by word overlap, with no model.

The answer comes from the context sentence that shares the most distinct words with the question
(words are runs of letters and digits, lowercased; STOP_WORDS left out; ties: the first such
sentence). It is that sentence's first run of consecutive words that are neither in the question
nor stop words, cut to its first MAX_WORDS words, as the context writes it. A context sentence
ends after '.', '!' or '?' followed by whitespace. No such word: the empty answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MAX_WORDS = 4
# Words too common to tell sentences apart (and never an answer by themselves).
_STOP_WORDS_TEXT = (
    "a an the of in on at to for by with from and or but not no is are was were be been being "
    "has have had do does did what which who whom whose when where why how that this these those "
    "it its as than then there their they he she his her him we you i"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences(context: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(context):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(context)))
    return spans


def baseline_answer(question: str, context: str) -> str:
    """The baseline's answer to one question (see the module's docstring)."""
    asked = {w.lower() for w in _WORD.findall(question)}
    content = asked - STOP_WORDS
    best: list[re.Match[str]] = []
    best_shared = -1
    for start, end in _sentences(context):
        words = list(_WORD.finditer(context, start, end))
        shared = len(content & {w.group().lower() for w in words})
        if shared > best_shared:
            best, best_shared = words, shared
    run: list[re.Match[str]] = []
    for word in best:
        lowered = word.group().lower()
        if lowered in asked or lowered in STOP_WORDS:
            if run:
                break
            continue
        run.append(word)
        if len(run) == MAX_WORDS:
            break
    return context[run[0].start() : run[-1].end()] if run else ""


def baseline_answers(questions: Sequence[str], contexts: Sequence[str]) -> list[str]:
    return [baseline_answer(q, c) for q, c in zip(questions, contexts, strict=True)]
