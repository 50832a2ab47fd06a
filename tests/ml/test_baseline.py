"""Each task's trivial baseline on hand-made rows with known numbers, and the quality verdict."""

from __future__ import annotations

from typing import Any

import datasets
import pytest

from app.ml.quality import (
    MIN_VALIDATION_ROWS,
    Quality,
    loss_trend,
    loss_warning,
    required,
    verdict,
    verdict_warning,
)
from app.ml.tasks import get_task
from app.ml.tasks.qa_baseline import baseline_answer


def _rows(**columns: list[Any]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(columns)


def _baseline(task: str, train: datasets.Dataset, val: datasets.Dataset, labels: list[str]) -> Any:
    spec = get_task(task)
    return spec.baseline_metrics(
        train, val, label_names=labels, options=spec.options_model.model_validate({})
    )


def test_classification_predicts_the_train_majority_for_every_row() -> None:
    train = _rows(text=["x"] * 5, label=["b", "c", "b", "a", "c"])  # b and c tie at 2
    val = _rows(text=["x"] * 4, label=["b", "b", "c", "a"])
    got = _baseline("classification", train, val, ["a", "b", "c"])
    # Ties go to the first label in label order: b. Accuracy 2/4; F1 of b = 2*0.5*1/1.5 = 2/3,
    # of a and c 0: macro over the three classes present = 2/9.
    assert got == pytest.approx({"accuracy": 0.5, "macro_f1": 2 / 9})
    # The validation rows' own majority does not matter: only the train rows'.
    train = _rows(text=["x"] * 3, label=["a", "a", "c"])
    assert _baseline("classification", train, val, ["a", "b", "c"])["accuracy"] == 0.25


def test_ner_tags_train_entity_words_and_joins_runs() -> None:
    train = _rows(
        tokens=[["John", "Smith", "lives", "in", "Paris"], ["Paris", "is", "big"], ["may", "go"]],
        tags=[["B-PER", "I-PER", "O", "O", "B-LOC"], ["B-LOC", "O", "O"], ["B-PER", "O"]],
    )
    # "may" is inside a PER entity once and never outside: tagged PER wherever it appears.
    val = _rows(
        tokens=[["Smith", "John", "in", "Paris"], ["big", "Paris", "John"], ["Rome", "may"]],
        tags=[["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "B-PER"], ["B-LOC", "O"]],
    )
    got = _baseline("ner", train, val, ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    # Predicted: [B-PER I-PER O B-LOC], [O B-LOC B-PER], [O B-PER].
    # Gold entities 5, predicted 5, correct 4 (Smith John, Paris, Paris, John).
    assert got == pytest.approx({"precision": 0.8, "recall": 0.8, "f1": 0.8, "accuracy": 7 / 9})


def test_ner_lookup_needs_more_inside_than_outside() -> None:
    from app.ml.tasks.ner_tags import entity_word_lookup, lookup_tags

    lookup = entity_word_lookup(
        [["May", "May", "may", "Apple", "Apple"], ["Apple", "May"]],
        [["B-PER", "O", "O", "B-ORG", "B-MISC"], ["B-MISC", "B-DATE"]],
    )
    # "May": 2 inside (PER, DATE: a tie, alphabetical first), 1 outside; "may": outside only;
    # "Apple": ORG once, MISC twice.
    assert lookup == {"May": "DATE", "Apple": "MISC"}
    assert lookup_tags(["Apple", "Apple", "May", "x", "May"], lookup) == [
        "B-MISC",
        "I-MISC",
        "B-DATE",
        "O",
        "B-DATE",
    ]


def test_qa_answers_from_the_closest_sentence() -> None:
    context = (
        "The weather was cold. The Broncos won Super Bowl 50 in Santa Clara, California! "
        "Fans cheered."
    )
    # The second sentence shares "won", "super", "bowl", "50"; its first run of words neither
    # in the question nor stop words is "Broncos"; then "Santa Clara California" follows later.
    assert baseline_answer("Who won Super Bowl 50?", context) == "Broncos"
    assert baseline_answer("Where did the Broncos win Super Bowl 50?", context) == "won"
    # At most 4 words, as the context writes them.
    assert baseline_answer("Which team?", "Big red fast old Denver team.") == "Big red fast old"
    assert baseline_answer("a", "the") == ""
    val = _rows(
        id=["q1", "q2"],
        question=["Who won Super Bowl 50?", "Where did the Broncos win Super Bowl 50?"],
        context=[context, context],
        answers=[
            {"text": ["Broncos"], "answer_start": [26]},
            {"text": ["Santa Clara, California"], "answer_start": [59]},
        ],
    )
    got = _baseline("qa", val, val, [])
    assert got == pytest.approx({"exact_match": 0.5, "f1": 0.5})


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [
        (0.55, 0.5, Quality.BETTER),  # a tenth of the gap: 0.5 + 0.05
        (0.5499, 0.5, Quality.NO_BETTER),
        (0.5, 0.5, Quality.NO_BETTER),
        (0.96, 0.95, Quality.BETTER),  # near perfect the margin is one point: 0.95 + 0.01
        (0.9599, 0.95, Quality.NO_BETTER),
        (0.1, 0.0, Quality.BETTER),
        (0.0999, 0.0, Quality.NO_BETTER),
        (1.0, 1.0, Quality.NO_BETTER),  # nothing beats a perfect baseline
    ],
)
def test_verdict_margin_edges(value: float, base: float, expected: Quality) -> None:
    got = verdict({"f1": value}, {"f1": base}, primary="f1", rows=MIN_VALIDATION_ROWS)
    assert got is expected


def test_verdict_too_few_rows_and_nothing_evaluated() -> None:
    metrics, base = {"accuracy": 0.99}, {"accuracy": 0.5}
    assert verdict(metrics, base, primary="accuracy", rows=49) is Quality.TOO_FEW_ROWS
    assert verdict(metrics, base, primary="accuracy", rows=50) is Quality.BETTER
    assert verdict(None, base, primary="accuracy", rows=100) is None
    assert verdict(metrics, None, primary="accuracy", rows=100) is None
    assert verdict(metrics, base, primary="f1", rows=100) is None
    assert required(0.8) == pytest.approx(0.82)
    text = verdict_warning(Quality.NO_BETTER, {"f1": 0.3}, {"f1": 0.3}, primary="f1", rows=60)
    assert text is not None and "f1 0.3000" in text and "baseline's 0.3000" in text
    assert "learning rate" in text and "epochs" in text
    few = verdict_warning(Quality.TOO_FEW_ROWS, metrics, base, primary="accuracy", rows=12)
    assert few is not None and "12 rows" in few and "too few" in few
    assert verdict_warning(Quality.BETTER, metrics, base, primary="accuracy", rows=50) is None


def test_loss_windows() -> None:
    assert loss_trend([1.0, 0.5, 0.2]) is None  # fewer than 2 + 2 values
    # 10 values: windows of 2 (a fifth).
    trend = loss_trend([1.0, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2])
    assert trend is not None and trend.window == 2
    assert (trend.first, trend.last) == pytest.approx((0.9, 0.2))
    assert loss_warning([1.0, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.3, 0.2, 0.2]) is None
    flat = [0.69, 0.70, 0.69, 0.68, 0.70, 0.69, 0.68, 0.69, 0.67, 0.66]
    text = loss_warning(flat)
    assert text is not None and "did not fall" in text and "learning rate" in text
    # Just below 0.95 x the first window falls enough; exactly at it does not.
    assert loss_warning([1.0, 1.0, 0.949, 0.949]) is None
    assert loss_warning([1.0, 1.0, 0.95, 0.95]) is not None
    # 20 values: windows of 4.
    t = loss_trend([1.0] * 4 + [0.0] * 12 + [0.5] * 4)
    assert t is not None and (t.window, t.first, t.last) == (4, 1.0, 0.5)
