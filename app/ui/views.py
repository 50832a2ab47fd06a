"""Shapes for the templates, read off the data itself (never off a task's name): metric tables,
per-class or per-type breakdowns, a confusion matrix as heat-map cells, bar charts, and answers
with their spans marked in the text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cell:
    value: int
    opacity: float  # 0..1 of the darkest colour: the share of its row (the true class)
    diagonal: bool


@dataclass(frozen=True)
class Heatmap:
    labels: list[str]
    rows: list[list[Cell]]


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    width: float  # 0..100, of the longest bar


@dataclass(frozen=True)
class Span:
    """A piece of text; `tag` set when it is marked (an entity's type, "answer")."""

    text: str
    tag: str | None = None
    score: float | None = None


def scalar_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The metrics that are single numbers, in their order."""
    return {
        k: float(v)
        for k, v in (metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def breakdown(metrics: dict[str, Any] | None) -> tuple[str, dict[str, dict[str, Any]]] | None:
    """A per-class or per-entity-type table (name, {row: {precision, recall, f1, support}})."""
    for name, value in (metrics or {}).items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, dict) and "f1" in v for v in value.values())
        ):
            return name, value
    return None


def heatmap(metrics: dict[str, Any] | None, labels: list[str]) -> Heatmap | None:
    """The confusion matrix (rows: true label, columns: predicted) as shaded cells."""
    matrix = (metrics or {}).get("confusion_matrix")
    if not isinstance(matrix, list) or len(matrix) != len(labels) or not labels:
        return None
    rows = []
    for i, row in enumerate(matrix):
        if not isinstance(row, list) or len(row) != len(labels):
            return None
        total = sum(int(v) for v in row) or 1
        rows.append([Cell(int(v), round(int(v) / total, 3), i == j) for j, v in enumerate(row)])
    return Heatmap(labels, rows)


def bars(counts: dict[str, int] | None) -> list[Bar]:
    """A bar per label, largest first."""
    if not counts:
        return []
    top = max(counts.values()) or 1
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [Bar(str(k), int(v), round(100 * v / top, 1)) for k, v in ordered]


def marked(text: str, found: list[dict[str, Any]]) -> list[Span]:
    """`text` cut into plain and marked pieces at the predictions' character offsets."""
    spans = sorted(
        (
            f
            for f in found
            if isinstance(f.get("start"), int)
            and isinstance(f.get("end"), int)
            and 0 <= f["start"] < f["end"] <= len(text)
        ),
        key=lambda f: f["start"],
    )
    pieces: list[Span] = []
    at = 0
    for f in spans:
        if f["start"] < at:  # overlapping answers: the first one wins
            continue
        if f["start"] > at:
            pieces.append(Span(text[at : f["start"]]))
        tag = str(f.get("label") or "answer")
        pieces.append(Span(text[f["start"] : f["end"]], tag, f.get("score")))
        at = f["end"]
    if at < len(text):
        pieces.append(Span(text[at:]))
    return pieces


@dataclass(frozen=True)
class Answer:
    """What the try box shows for one input: scored labels, or the text with spans marked."""

    labels: list[dict[str, Any]]
    text: list[Span]


def answer_view(given: Any, prediction: Any, fields: tuple[str, ...]) -> Answer:
    """Labels with scores for a list of {label, score}; otherwise the last input field's text
    (a NER text, a QA context) with each predicted span marked."""
    items = prediction if isinstance(prediction, list) else [prediction]
    items = [p for p in items if isinstance(p, dict)]
    if items and all("start" not in p for p in items):
        return Answer(items, [])
    text = given if isinstance(given, str) else str(given.get(fields[-1], ""))
    return Answer([], marked(text, items[:1] if "answer" in (items or [{}])[0] else items))
