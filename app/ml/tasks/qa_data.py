"""Extractive QA datasets: SQuAD JSON (v1.1, v2.0) flattened to rows, and row validation.

Canonical rows: id, question, context, answers {"text": [...], "answer_start": [...]} and an
optional title. A row without answers is an unanswerable question (SQuAD v2).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from app.core.errors import InvalidInput
from app.ml.tables import ParsedTable

if TYPE_CHECKING:
    import datasets

ANSWERS_TYPE = pa.struct(
    [pa.field("text", pa.list_(pa.string())), pa.field("answer_start", pa.list_(pa.int64()))]
)
SQUAD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("title", pa.string()),
        pa.field("question", pa.string()),
        pa.field("context", pa.string()),
        pa.field("answers", ANSWERS_TYPE),
    ]
)
# The start of an official SQuAD file: an object whose "data" is a list of articles, each with
# "paragraphs" ("version" may come before or after "data").
_SQUAD_DATA = re.compile(r'"data"\s*:\s*\[\s*\{')
_SQUAD_PARAGRAPHS = re.compile(r'"paragraphs"\s*:\s*\[')
# Answer-position errors listed in one message; the rest are counted.
MAX_LISTED_ERRORS = 10


def looks_like_squad(head: str) -> bool:
    """True when the file's first characters are an object with data -> articles -> paragraphs."""
    text = head.lstrip("\ufeff \t\r\n")
    return (
        text.startswith("{")
        and _SQUAD_DATA.search(text) is not None
        and _SQUAD_PARAGRAPHS.search(text) is not None
    )


def _squad_error(where: str, message: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}", code="parse_error", path=where)


def _load_json(path: Path) -> Any:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"line {line}: invalid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
            code="invalid_encoding",
            line=line,
        ) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise InvalidInput("JSON nested too deeply", code="parse_error") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"line {exc.lineno}: invalid JSON at column {exc.colno}: {exc.msg}",
            code="parse_error",
            line=exc.lineno,
        ) from None


def _list_at(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        found = "missing" if value is None else f"a {type(value).__name__}, not a list"
        raise _squad_error(f"{where}.{key}", found)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _squad_error(where, f"expected an object, found {json.dumps(value)[:60]}")
    return value


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        found = "missing" if value is None else f"not a string ({json.dumps(value)[:40]})"
        raise _squad_error(f"{where}.{key}", found)
    return value


def _squad_answers(qa: dict[str, Any], where: str) -> dict[str, list[Any]]:
    # SQuAD v2 marks unanswerable questions with is_impossible (their answers list is empty;
    # "plausible_answers" are distractors, not answers).
    if qa.get("is_impossible") is True:
        return {"text": [], "answer_start": []}
    texts, starts = [], []
    for k, item in enumerate(_list_at(qa, "answers", where)):
        at = f"{where}.answers[{k}]"
        answer = _object(item, at)
        texts.append(_text(answer, "text", at))
        start = answer.get("answer_start")
        if not isinstance(start, int) or isinstance(start, bool):
            raise _squad_error(f"{at}.answer_start", f"not an integer ({json.dumps(start)})")
        starts.append(start)
    return {"text": texts, "answer_start": starts}


def _squad_rows(doc: Any) -> Iterator[dict[str, Any]]:
    top = _object(doc, "the file")
    for a, article_value in enumerate(_list_at(top, "data", "the file")):
        where_a = f"data[{a}]"
        article = _object(article_value, where_a)
        title = article.get("title")
        for p, paragraph_value in enumerate(_list_at(article, "paragraphs", where_a)):
            where_p = f"{where_a}.paragraphs[{p}]"
            paragraph = _object(paragraph_value, where_p)
            context = _text(paragraph, "context", where_p)
            for q, qa_value in enumerate(_list_at(paragraph, "qas", where_p)):
                where_q = f"{where_p}.qas[{q}]"
                qa = _object(qa_value, where_q)
                qid = qa.get("id")
                yield {
                    "id": None if qid is None else str(qid),
                    "title": title if isinstance(title, str) else None,
                    "question": _text(qa, "question", where_q),
                    "context": context,
                    "answers": _squad_answers(qa, where_q),
                }


def read_squad(path: Path, *, max_rows: int) -> ParsedTable:
    """Flatten an official SQuAD JSON file into one row per question."""
    rows: list[dict[str, Any]] = []
    for row in _squad_rows(_load_json(path)):
        if len(rows) >= max_rows:
            raise InvalidInput(
                f"the file has more than {max_rows} questions, the most a dataset may have",
                code="too_many_rows",
                limit=max_rows,
            )
        rows.append(row)
    return ParsedTable(table=pa.Table.from_pylist(rows, schema=SQUAD_SCHEMA))


# --- row validation (normalize) --------------------------------------------------------------


def _row_error(row: int, qid: str | None, column: str, message: str) -> InvalidInput:
    # Rows are 1-based data rows; the question id helps find the row in a SQuAD file.
    who = f"row {row}" + (f" (question id '{qid}')" if qid else "")
    return InvalidInput(f"{who}: {message}", row=row, field=column, id=qid)


def _required_text(value: Any, row: int, qid: str | None, column: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        raise _row_error(row, qid, column, f"column '{column}' is empty")
    text = value if isinstance(value, str) else str(value)
    if not text.strip():
        raise _row_error(row, qid, column, f"column '{column}' is empty")
    return text


def _optional_text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


_ANSWERS_SHAPE = (
    'write answers as {"text": ["..."], "answer_start": [0]} (or a list of '
    '{"text", "answer_start"} objects); {"text": [], "answer_start": []} for no answer'
)


def parse_answers(value: Any, row: int, qid: str | None) -> dict[str, list[Any]]:
    """An answers cell as {"text": [str], "answer_start": [int]}; a JSON string is parsed."""
    if isinstance(value, str):
        if not value.strip():
            raise _row_error(row, qid, "answers", f"column 'answers' is empty; {_ANSWERS_SHAPE}")
        try:
            value = json.loads(value)
        except ValueError:
            raise _row_error(
                row, qid, "answers", f"column 'answers' is not valid JSON; {_ANSWERS_SHAPE}"
            ) from None
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        # SQuAD's own shape: [{"text": ..., "answer_start": ...}, ...].
        value = {
            "text": [v.get("text") for v in value],
            "answer_start": [v.get("answer_start") for v in value],
        }
    if not isinstance(value, dict) or not {"text", "answer_start"} <= set(value):
        raise _row_error(row, qid, "answers", f"column 'answers' has no answers; {_ANSWERS_SHAPE}")
    texts, starts = value["text"], value["answer_start"]
    # One answer may be given without lists: {"text": "x", "answer_start": 3}.
    texts = [texts] if isinstance(texts, str) else texts
    starts = [starts] if isinstance(starts, int | float | str) else starts
    if not isinstance(texts, list | tuple) or not isinstance(starts, list | tuple):
        raise _row_error(row, qid, "answers", f"answers are not lists; {_ANSWERS_SHAPE}")
    if len(texts) != len(starts):
        raise _row_error(
            row,
            qid,
            "answers",
            f"answers has {len(texts)} texts but {len(starts)} answer_start values",
        )
    return {
        "text": [_answer_text(t, row, qid) for t in texts],
        "answer_start": [_answer_start(s, row, qid) for s in starts],
    }


def _answer_text(value: Any, row: int, qid: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _row_error(row, qid, "answers", f"answer text {json.dumps(value)} is empty")
    return value


def _answer_start(value: Any, row: int, qid: str | None) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _row_error(
            row, qid, "answers", f"answer_start {json.dumps(value)} is not a character offset"
        )
    return value


def misplaced_answer(context: str, text: str, start: int) -> str | None:
    """Why context[start:] does not begin with `text`, or None when it does."""
    found = context[start : start + len(text)]
    if found == text:
        return None
    message = f"answer {json.dumps(text)[:80]} is not at answer_start {start}"
    message += f" (the context there reads {json.dumps(found)[:80]})"
    elsewhere = context.find(text)
    if elsewhere >= 0:
        message += f"; it occurs at {elsewhere}"
    else:
        message += "; it does not occur in the context"
    return message


def generated_id(question: str, context: str) -> str:
    """A stable id for a row without one: the same question and context give the same id."""
    digest = hashlib.sha1(f"{question}\x00{context}".encode(), usedforsecurity=False)
    return digest.hexdigest()[:16]


@dataclass
class RowChecker:
    """Validates rows one by one and collects answer-position errors to report together."""

    ids: dict[str, int] = field(default_factory=dict)
    misplaced: list[tuple[int, str, str]] = field(default_factory=list)
    misplaced_count: int = 0
    generated: int = 0

    def row_id(self, value: Any, row: int, question: str, context: str) -> str:
        qid = _optional_text(value)
        if qid is None:
            self.generated += 1
            qid = base = generated_id(question, context)
            n = 1
            while qid in self.ids:  # the same question on the same context, asked twice
                n += 1
                qid = f"{base}-{n}"
        elif qid in self.ids:
            raise _row_error(
                row, qid, "id", f"id '{qid}' is used by row {self.ids[qid]} too; ids must be unique"
            )
        self.ids[qid] = row
        return qid

    def check_positions(self, row: int, qid: str, context: str, answers: dict[str, Any]) -> None:
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            problem = misplaced_answer(context, text, start)
            if problem is not None:
                self.misplaced_count += 1
                if len(self.misplaced) < MAX_LISTED_ERRORS:
                    self.misplaced.append((row, qid, problem))
                return

    def raise_misplaced(self) -> None:
        if not self.misplaced:
            return
        listed = "; ".join(f"row {r} (question id '{q}'): {p}" for r, q, p in self.misplaced)
        more = self.misplaced_count - len(self.misplaced)
        rows = f"{self.misplaced_count} row{'s' if self.misplaced_count > 1 else ''}"
        first_row, first_id, _ = self.misplaced[0]
        raise InvalidInput(
            f"answers do not sit at their answer_start in {rows}: {listed}"
            + (f"; and {more} more" if more else ""),
            code="answer_mismatch",
            row=first_row,
            field="answers",
            rows=[r for r, _, _ in self.misplaced],
            ids=[q for _, q, _ in self.misplaced],
        )


def validated_columns(ds: datasets.Dataset) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Canonical columns of valid rows, and notes on what was filled in; raise naming the row."""

    def column(name: str) -> list[Any]:
        # A slice reads the whole column at once (iterating a datasets Column formats each row).
        return list(ds[name][:]) if name in ds.column_names else [None] * ds.num_rows

    checker = RowChecker()
    out: dict[str, list[Any]] = {"id": [], "question": [], "context": [], "answers": []}
    given_ids, titles = column("id"), column("title")
    for i, (question_value, context_value, answers_value) in enumerate(
        zip(column("question"), column("context"), column("answers"), strict=True)
    ):
        row = i + 1
        hint = _optional_text(given_ids[i])
        question = _required_text(question_value, row, hint, "question")
        context = _required_text(context_value, row, hint, "context")
        qid = checker.row_id(given_ids[i], row, question, context)
        answers = parse_answers(answers_value, row, qid)
        checker.check_positions(row, qid, context, answers)
        out["id"].append(qid)
        out["question"].append(question)
        out["context"].append(context)
        out["answers"].append(answers)
    checker.raise_misplaced()
    if "title" in ds.column_names:
        out["title"] = [_optional_text(t) for t in titles]
    notes = {"ids_generated": checker.generated} if checker.generated else {}
    return out, notes


def dataset_stats(ds: datasets.Dataset) -> dict[str, Any]:
    """Contexts, answerable and unanswerable questions, mean context length in characters."""
    contexts = list(ds["context"][:])
    answered = sum(1 for a in ds["answers"][:] if a["text"])
    unique = set(contexts)
    return {
        "contexts": len(unique),
        "answerable": answered,
        "unanswerable": len(contexts) - answered,
        "mean_context_chars": round(sum(map(len, unique)) / len(unique), 1) if unique else 0.0,
    }
