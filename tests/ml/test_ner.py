"""The ner task on hand-made cases with known answers: tags, IOB1/IOB2, CoNLL and span parsing,
validation, label alignment, metrics, evaluation order, entity grouping with character offsets."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pyarrow as pa
import pytest

from app.core.errors import InvalidInput
from app.ml.tasks import get_task
from app.ml.tasks.base import DatasetSummary
from app.ml.tasks.ner import NerOptions, match_features, word_tags
from app.ml.tasks.ner_data import read_conll, sniff_conll, spans_table
from app.ml.tasks.ner_serving import group_entities
from app.ml.tasks.ner_tags import (
    IGNORE,
    align_labels,
    complete_tag_set,
    entity_spans,
    first_subtokens,
    ner_metrics,
    sorted_tags,
    split_words,
    to_iob2,
    word_windows,
)

TASK = get_task("ner")
I = IGNORE  # noqa: E741  (short, for label rows)


def rows(tokens: list[list[str]], tags: list[list[str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"tokens": tokens, "tags": tags})


def row_error(exc: pytest.ExceptionInfo[InvalidInput]) -> tuple[int | None, str]:
    return exc.value.details.get("row"), exc.value.message


# --- tags ------------------------------------------------------------------------------------


def test_tag_order_and_complete_set() -> None:
    assert sorted_tags(["I-PER", "O", "B-LOC", "B-PER", "I-LOC", "B-MISC"]) == [
        "O",
        "B-LOC",
        "I-LOC",
        "B-MISC",
        "B-PER",
        "I-PER",
    ]
    assert complete_tag_set({"O", "B-PER", "I-LOC"}) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_iob1_to_iob2() -> None:
    # IOB1: I- opens, B- only splits two adjacent entities of one type.
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG"]
    assert to_iob2(iob1) == (["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG"], [0, 4, 5])
    assert to_iob2(["B-PER", "I-PER"]) == (["B-PER", "I-PER"], [])


def test_entity_spans() -> None:
    tags = ["B-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "B-ORG", "I-ORG"]
    assert entity_spans(tags) == [
        ("PER", 0, 2),
        ("PER", 2, 3),
        ("LOC", 4, 5),  # a stray I- opens an entity
        ("ORG", 5, 6),  # I- of another type opens a new one
        ("ORG", 6, 8),
    ]
    assert entity_spans(["O", "O"]) == [] and entity_spans(["B-X"]) == [("X", 0, 1)]


def test_metrics_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-LOC"]]
    m = ner_metrics(gold, pred)
    # gold: PER(0,2) LOC(3,4) ORG(0,1); pred: PER(0,2) ORG(3,4) ORG(0,1) LOC(1,2); 2 right.
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))  # 4/7
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    org = m["per_type"]["ORG"]
    assert (org["precision"], org["recall"], org["support"]) == (0.5, 1.0, 1)
    assert org["f1"] == pytest.approx(2 / 3)


def test_metrics_need_exact_spans() -> None:
    # A partial span or the wrong type is simply wrong; nothing predicted gives zeros, not NaN.
    m = ner_metrics([["B-PER", "I-PER", "B-LOC"]], [["B-PER", "O", "B-ORG"]])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    m = ner_metrics([["O"]], [["O"]])
    assert (m["f1"], m["accuracy"], m["per_type"]) == (0.0, 1.0, {})


# --- alignment --------------------------------------------------------------------------------

LABEL2ID = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}


def test_align_first_subtoken_and_all_tokens() -> None:
    # [CLS] new york ##ers said [SEP]: words 0 and 1 (in two pieces), word 2.
    word_ids = [None, 0, 1, 1, 2, None]
    tags = ["B-LOC", "I-LOC", "O"]
    assert align_labels(word_ids, tags, LABEL2ID, label_all_tokens=False) == [I, 1, 2, I, 0, I]
    assert align_labels(word_ids, tags, LABEL2ID, label_all_tokens=True) == [I, 1, 2, 2, 0, I]
    # A B- word's later pieces continue the entity as I-.
    pieces = [None, 0, 0, 0, None]
    assert align_labels(pieces, ["B-PER"], LABEL2ID, label_all_tokens=True) == [I, 3, 4, 4, I]
    assert first_subtokens(word_ids) == [-1, 0, 1, -1, 2, -1]


def test_preprocess_with_a_real_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from tests.tinymodel import build_tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(build_tiny_model_dir(tmp_path / "m")))
    batch = {"tokens": [["Good", "xyz", "film"]], "tags": [["B-PER", "I-PER", "O"]]}
    kwargs = {"label2id": LABEL2ID, "max_length": 64}
    first = TASK.preprocess(tokenizer, options=NerOptions(), for_eval=False, **kwargs)(batch)
    every = TASK.preprocess(
        tokenizer, options=NerOptions(label_all_tokens=True), for_eval=False, **kwargs
    )(batch)
    # "xyz" is x ##y ##z in the tiny vocab.
    assert tokenizer.convert_ids_to_tokens(first["input_ids"][0]) == [
        "[CLS]", "good", "x", "##y", "##z", "film", "[SEP]",
    ]  # fmt: skip
    assert first["labels"][0] == [I, 3, 4, I, I, 0, I]
    assert every["labels"][0] == [I, 3, 4, 4, 4, 0, I]
    assert "word_index" not in first
    # Evaluation always labels first sub-tokens, and says which word each one starts.
    ev = TASK.preprocess(
        tokenizer, options=NerOptions(label_all_tokens=True), for_eval=True, **kwargs
    )(batch)
    assert ev["labels"][0] == [I, 3, 4, I, I, 0, I]
    assert ev["word_index"][0] == [-1, 0, 1, -1, -1, 2, -1]
    truncated = TASK.preprocess(
        tokenizer, options=NerOptions(), for_eval=True, label2id=LABEL2ID, max_length=4
    )(batch)
    assert truncated["labels"][0] == [I, 3, 4, I]


# --- evaluation -------------------------------------------------------------------------------


def test_compute_metrics_matches_shuffled_rows_and_counts_truncated_words() -> None:
    names = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    eval_rows = rows(
        [["a", "b"], ["c", "d", "e"], ["f"]],
        [["B-PER", "O"], ["B-LOC", "I-LOC", "B-PER"], ["O"]],
    )
    # Row 1 was truncated after its second word: its B-PER is never seen (a missed entity).
    features = datasets.Dataset.from_dict(
        {
            "labels": [[I, 3, 0, I], [I, 1, 2, I], [I, 0, I]],
            "word_index": [[-1, 0, 1, -1], [-1, 0, 1, -1], [-1, 0, -1]],
        }
    )
    compute = TASK.compute_metrics(
        names, options=NerOptions(), eval_rows=eval_rows, eval_features=features
    )
    # The Trainer's (shuffled) order: rows 2, 0, 1, labels padded with -100 to one length.
    label_ids = np.array([[I, 0, I, I], [I, 3, 0, I], [I, 1, 2, I]])
    perfect = np.zeros((3, 4, 5))
    for r, labels in enumerate(label_ids):
        for p, label in enumerate(labels):
            perfect[r, p, max(label, 0)] = 1.0
    m = compute(SimpleNamespace(predictions=perfect, label_ids=label_ids))
    assert (m["precision"], m["recall"]) == (1.0, pytest.approx(2 / 3))
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_type"]["PER"]["recall"] == 0.5 and m["per_type"]["LOC"]["f1"] == 1.0


def test_match_features_and_word_tags() -> None:
    features = [[I, 1, I], [I, 0, I], [I, 1, I]]
    assert match_features(np.array([[I, 0, I, I], [I, 1, I, I], [I, 1, I, I]]), features) == [
        1,
        0,
        2,
    ]
    with pytest.raises(RuntimeError):
        match_features(np.array([[I, 2, I]]), features)
    names = ["O", "B-X", "I-X"]
    # Word 1 has no sub-token here (a zero-width character): it stays O.
    assert word_tags(np.array([0, 1, 2, 2]), [-1, 0, 2, -1], 3, names) == ["B-X", "O", "I-X"]


# --- words and entities -----------------------------------------------------------------------


def words(text: str) -> list[str]:
    return [text[a:b] for a, b in split_words(text)]


def test_split_words_keeps_punctuation_apart() -> None:
    assert words("Mr.  O'Neill met the U.S. team in Saint-Denis, (Zoë's café)!") == [
        "Mr", ".", "O'Neill", "met", "the", "U.S.", "team", "in", "Saint-Denis", ",", "(",
        "Zoë", "'s", "café", ")", "!",
    ]  # fmt: skip
    # As CoNLL-2003 tokenizes: numbers, dates, initials and runs of one mark stay whole.
    assert words("J. Smith paid 3,000 -- 5.25 each on 1996-08-22 ... Iowa-S") == [
        "J.", "Smith", "paid", "3,000", "--", "5.25", "each", "on", "1996-08-22", "...", "Iowa-S",
    ]  # fmt: skip
    assert words("  \n ") == [] and words("a\tb\u00a0c") == ["a", "b", "c"]
    assert words("東京 is 🚀") == ["東京", "is", "🚀"]


def test_word_windows() -> None:
    assert word_windows([2, 3, 1, 5, 1], 5) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert word_windows([7, 1], 5) == [(0, 1), (1, 2)]  # a long word alone, never split
    assert word_windows([0, 1, 0], 1) == [(0, 3)] and word_windows([], 5) == []


def test_group_entities_exact_offsets() -> None:
    text = "  Angela   Merkel visited São Paulo,Brazil (again)."
    offsets = split_words(text)
    assert [text[a:b] for a, b in offsets] == [
        "Angela", "Merkel", "visited", "São", "Paulo", ",", "Brazil", "(", "again", ")", ".",
    ]  # fmt: skip
    tags = ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "I-LOC", "O", "O", "O", "O"]
    scores = [0.9, 0.7, 0.99, 0.8, 0.6, 0.9, 0.5, 1, 1, 1, 1]
    preds: list[tuple[str, float] | None] = list(zip(tags, scores, strict=True))
    entities = group_entities(text, offsets, preds)
    assert [(e.label, e.text, e.start, e.end) for e in entities] == [
        ("PER", "Angela   Merkel", 2, 17),
        ("LOC", "São Paulo", 26, 35),
        ("LOC", "Brazil", 36, 42),  # a stray I- after O opens an entity
    ]
    for e in entities:
        assert text[e.start : e.end] == e.text
    assert [e.score for e in entities] == pytest.approx([0.8, 0.7, 0.5])
    # A word with no prediction (no sub-token) is O: it ends an entity.
    (only,) = group_entities("a b", split_words("a b"), [("B-X", 1.0), None])
    assert (only.text, only.start, only.end) == ("a", 0, 1)


# --- CoNLL files ------------------------------------------------------------------------------

CONLL_IOB1 = """-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
Smith NNP I-NP B-PER


-DOCSTART- -X- O O
BRUSSELS NNP I-NP I-LOC
"""


def write(tmp_path: Path, content: str | bytes, name: str = "data.conll") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_read_conll_sentences_lines_and_docstart(tmp_path: Path) -> None:
    parsed = read_conll(write(tmp_path, CONLL_IOB1), max_rows=100)
    assert parsed.table.column("tokens").to_pylist() == [
        ["EU", "rejects", "German"],
        ["Peter", "Blackburn", "Smith"],
        ["BRUSSELS"],
    ]
    assert parsed.table.column("tags").to_pylist()[1] == ["I-PER", "I-PER", "B-PER"]
    assert parsed.lines == [3, 7, 13]
    assert parsed.line_of(2) == 7


def test_read_conll_tabs_crlf_and_no_final_newline(tmp_path: Path) -> None:
    content = b"New York\tB-LOC\r\nis\tO\r\n\t\r\n@user\tO"
    parsed = read_conll(write(tmp_path, content), max_rows=10)
    assert parsed.table.column("tokens").to_pylist() == [["New York", "is"], ["@user"]]
    assert parsed.table.column("tags").to_pylist() == [["B-LOC", "O"], ["O"]]


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        ("EU B-ORG\nrejects\n", 2, "expected a token and its tag"),
        ("EU\tB-ORG\n\tO\n", 2, "token (first column) is empty"),
        ("EU\tB-ORG\nx\t\n", 2, "tag (last column) is empty"),
        (b"EU B-ORG\n\nna\xefve O\n", 3, "invalid UTF-8"),
    ],
)
def test_read_conll_errors_name_the_line(tmp_path: Path, content, line, needle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput) as exc:
        read_conll(write(tmp_path, content), max_rows=10)
    assert exc.value.details["line"] == line
    assert exc.value.message.startswith(f"line {line}: ") and needle in exc.value.message


def test_read_conll_row_limit(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        read_conll(write(tmp_path, "a O\n\nb O\n\nc O\n"), max_rows=2)
    assert exc.value.code == "too_many_rows" and "line 5" in exc.value.message


def test_sniff() -> None:
    assert sniff_conll(CONLL_IOB1, filename=None)
    assert sniff_conll("EU NNP I-NP I-ORG\nrejects VBZ I-VP O\n", filename="eng.train")
    assert sniff_conll("@paulwalk\tO\nEmpire\tB-location\n\t\n", filename=None)
    assert sniff_conll("x\tS-PER\ny\tO\n", filename=None)  # read, then refused for its tags
    assert sniff_conll("anything", filename="train.conll")
    assert not sniff_conll('{"tokens": ["a"], "tags": ["O"]}\n', filename="x.conll")
    assert not sniff_conll("text\tlabel\nthe film\t1\n", filename=None)
    assert not sniff_conll("text,label\nfine,pos\n", filename=None)
    assert TASK.sniff_format(CONLL_IOB1, filename=None) == "conll"


# --- character spans --------------------------------------------------------------------------


def span_table(*items: tuple[str, object]) -> pa.Table:
    return pa.table({"text": [t for t, _ in items], "entities": [e for _, e in items]})


def test_spans_to_tokens_and_tags() -> None:
    text = "Angela Merkel  visited New York's zoo."
    table = span_table(
        (text, [{"start": 23, "end": 31, "label": "LOC"}, {"start": 0, "end": 13, "label": "PER"}]),
        ("no entities here", []),
    )
    out = spans_table(table)
    assert out.column_names == ["tokens", "tags"]
    assert out.column("tokens").to_pylist() == [
        ["Angela", "Merkel", "visited", "New", "York", "'s", "zoo", "."],
        ["no", "entities", "here"],
    ]
    assert out.column("tags").to_pylist() == [
        ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "O"],
        ["O", "O", "O"],
    ]
    assert TASK.adapt_table(table).column_names == ["tokens", "tags"]
    # [start, end, label] triples; a span that cuts a word tags the whole word. Mixed cell types
    # reach the task as JSON text (the JSONL reader keeps such a column as strings).
    triples = spans_table(span_table(("Apple Inc", '[[0, 3, "ORG"]]'), ("x", None)))
    assert triples.column("tokens").to_pylist() == [["Apple", "Inc"], ["x"]]
    assert triples.column("tags").to_pylist() == [["B-ORG", "O"], ["O"]]
    plain = pa.table({"tokens": [["a"]], "tags": [["O"]]})
    assert TASK.adapt_table(plain) is plain


@pytest.mark.parametrize(
    ("entities", "needle"),
    [
        (
            [{"start": 0, "end": 5, "label": "PER"}, {"start": 3, "end": 9, "label": "ORG"}],
            "overlap",
        ),
        ([{"start": 6, "end": 40, "label": "PER"}], "falls outside the text (13 characters)"),
        ([{"start": -1, "end": 2, "label": "PER"}], "falls outside"),
        ([{"start": 5, "end": 5, "label": "PER"}], "start 5 >= end 5"),
        ([{"start": 6, "end": 7, "label": "PER"}], "covers no word"),  # the space
        ([{"start": 0, "end": 2, "label": "A"}, {"start": 2, "end": 5, "label": "B"}], "no word"),
        ([{"start": "0", "end": 5, "label": "PER"}], "must be integers"),
        ([{"start": 0, "end": 5}], "label must be a non-empty string"),
        (["Angela"], "must be"),
    ],
)
def test_span_errors_name_the_row(entities, needle) -> None:  # type: ignore[no-untyped-def]
    table = span_table(("fine", []), ("Angela Merkel", entities))
    with pytest.raises(InvalidInput) as exc:
        spans_table(table)
    row, message = row_error(exc)
    assert row == 2 and message.startswith("row 2: ") and needle in message


# --- validation -------------------------------------------------------------------------------


def test_normalize_clean_iob2() -> None:
    result = TASK.normalize(rows([["EU", "rejects"]], [["B-ORG", "O"]]), strict=True)
    assert result.rows["tags"][:] == [["B-ORG", "O"]]
    assert result.notes == {"tagging": "IOB2", "repaired_tags": 0}


def test_normalize_converts_iob1_even_when_strict() -> None:
    ds = rows([["a", "b", "c"], ["d"]], [["I-PER", "I-PER", "B-PER"], ["I-LOC"]])
    for strict in (False, True):
        result = TASK.normalize(ds, strict=strict)
        assert result.rows["tags"][:] == [["B-PER", "I-PER", "B-PER"], ["B-LOC"]]
        assert result.notes == {"tagging": "IOB1", "converted_to": "IOB2", "repaired_tags": 2}


def test_normalize_repairs_stray_inside_or_refuses_when_strict() -> None:
    # B- opens entities here, so this is IOB2 and the I- after O is a mistake.
    ds = rows([["a", "b"], ["c", "d", "e"]], [["B-PER", "O"], ["O", "I-LOC", "I-LOC"]])
    result = TASK.normalize(ds, strict=False)
    assert result.rows["tags"][:] == [["B-PER", "O"], ["O", "B-LOC", "I-LOC"]]
    assert result.notes == {
        "tagging": "IOB2",
        "repaired_tags": 1,
        "repaired_rows": 1,
        "first_repaired_row": 2,
    }
    with pytest.raises(InvalidInput) as exc:
        TASK.normalize(ds, strict=True)
    row, message = row_error(exc)
    assert row == 2 and "tag 2 'I-LOC' follows 'O'" in message and "without strict" in message


@pytest.mark.parametrize(
    ("tokens", "tags", "needle"),
    [
        (["a", "b"], ["O"], "2 tokens but 1 tags"),
        (["a"], ["S-PER"], "IOBES/BILOU tags are not accepted"),
        (["a"], ["E-PER"], "IOBES/BILOU"),
        (["a"], ["PER"], "tags are O, B-<type> or I-<type>"),
        (["a"], ["B-"], "tags are O"),
        (["a"], ["o"], "tags are O"),
        (["a", " "], ["O", "O"], "token 2 is empty"),
        ([], [], "no tokens"),
    ],
)
def test_normalize_errors_name_the_row(tokens, tags, needle) -> None:  # type: ignore[no-untyped-def]
    ds = rows([["fine"], tokens], [["O"], tags])
    with pytest.raises(InvalidInput) as exc:
        TASK.normalize(ds, strict=False)
    row, message = row_error(exc)
    assert row == 2 and needle in message, message


def test_normalize_refuses_class_ids_and_strings() -> None:
    with pytest.raises(InvalidInput, match="class ids need their label names"):
        TASK.normalize(datasets.Dataset.from_dict({"tokens": [["a"]], "tags": [[3]]}), strict=False)
    with pytest.raises(InvalidInput, match="must be a list of strings"):
        TASK.normalize(
            datasets.Dataset.from_dict({"tokens": ["a b"], "tags": [["O"]]}), strict=False
        )


def test_summarize_and_labels() -> None:
    ds = rows([["a", "b", "c"], ["d", "e"]], [["B-PER", "I-PER", "O"], ["B-LOC", "B-PER"]])
    summary = TASK.summarize(ds)
    assert summary.num_rows == 2 and summary.columns == ["tokens", "tags"]
    assert summary.label_names == ["O", "B-LOC", "B-PER", "I-PER"]
    assert summary.label_counts == {"O": 1, "B-LOC": 1, "B-PER": 2, "I-PER": 1}
    assert summary.stats == {"tokens": 5, "entities": {"LOC": 1, "PER": 2}}
    # The model's labels: B- and I- of every type in train.
    assert TASK.label_names(ds, None) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def summary(*tags: str) -> DatasetSummary:
    return DatasetSummary(num_rows=1, columns=["tokens", "tags"], label_names=list(tags))


def test_check_compatible() -> None:
    TASK.check_compatible(summary("O", "B-PER"), summary("O", "B-PER", "I-PER"))
    with pytest.raises(InvalidInput) as exc:
        TASK.check_compatible(summary("O", "B-PER"), summary("O", "B-LOC", "I-LOC", "B-PER"))
    assert exc.value.details["tags"] == ["B-LOC", "I-LOC"] and "'B-LOC'" in exc.value.message
    with pytest.raises(InvalidInput, match="no entities"):
        TASK.check_compatible(summary("O"), summary("O"))
    assert TASK.stratify_column() is None
