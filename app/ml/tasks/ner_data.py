"""NER uploads: CoNLL files, character-span annotations, and IOB validation with repairs.

Every error names the file line (CoNLL) or the data row (the dataset service adds the row's line).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from app.core.errors import InvalidInput
from app.ml.tables import ParsedTable
from app.ml.tasks.ner_tags import (
    OUTSIDE,
    entity_spans,
    is_b_opener,
    is_stray_inside,
    split_words,
    to_iob2,
)

CONLL = "conll"
DOCSTART = "-DOCSTART-"
CONLL_EXTENSIONS = (".conll", ".conll03", ".iob", ".iob2", ".bio", ".ner")
# A tag as the last column of a CoNLL line; IOBES/BILOU prefixes are sniffed too, so that such a
# file is read and refused with a message about its tags rather than "unknown format".
_SNIFF_TAG = re.compile(r"O|[BIESLU]-\S+")
_TAG = re.compile(r"([BI])-(\S.*)")
_OTHER_SCHEME = re.compile(r"([ESLU])-\S.*")
_SNIFF_LINES = 200


def _row_error(row: int, message: str, column: str, **details: Any) -> InvalidInput:
    return InvalidInput(
        f"row {row}: {message}", code="invalid_rows", row=row, field=column, **details
    )


# --- CoNLL files -------------------------------------------------------------------------------


def _columns(line: str) -> list[str]:
    # WNUT-style files separate with tabs (a token might hold a space); CoNLL-2003 with spaces.
    if "\t" in line:
        return [c.strip() for c in line.rstrip("\r\n").split("\t")]
    return line.split()


def sniff_conll(head: str, *, filename: str | None) -> bool:
    """True when the first lines look like `token ... tag` lines, or the name says CoNLL."""
    text = head.lstrip("\ufeff")
    if text.lstrip()[:1] in ("{", "["):
        return False
    if filename and filename.lower().endswith(CONLL_EXTENSIONS):
        return True
    # The head may end mid-line: judge complete lines only.
    lines = [ln for ln in text.split("\n")[:-1] if ln.strip()][:_SNIFF_LINES]
    if not lines:
        return False
    if _columns(lines[0])[0] == DOCSTART:
        return True
    for line in lines:
        cols = _columns(line)
        if len(cols) < 2 or not _SNIFF_TAG.fullmatch(cols[-1]):
            return False
    return True


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"line {lineno}: invalid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file "
                    "as UTF-8",
                    code="invalid_encoding",
                    line=lineno,
                ) from None
            yield lineno, text.lstrip("\ufeff") if lineno == 1 else text


def _conll_error(lineno: int, message: str) -> InvalidInput:
    return InvalidInput(f"line {lineno}: {message}", code="parse_error", line=lineno)


def read_conll(path: Path, *, max_rows: int) -> ParsedTable:
    """One row per sentence: blank lines separate sentences, -DOCSTART- lines are skipped, the
    token is the first column and the tag the last. lines[i] is the first line of sentence i."""
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[int] = []
    in_sentence = False
    for lineno, text in _decoded_lines(path):
        cols = _columns(text) if text.strip() else []
        if not cols or cols[0] == DOCSTART:
            in_sentence = False
            continue
        if len(cols) < 2:
            raise _conll_error(
                lineno,
                f"expected a token and its tag (tag in the last column), found {text.strip()!r}",
            )
        if not cols[0]:
            raise _conll_error(lineno, "the token (first column) is empty")
        if not cols[-1]:
            raise _conll_error(lineno, "the tag (last column) is empty")
        if not in_sentence:
            if len(tokens) >= max_rows:
                raise InvalidInput(
                    f"line {lineno}: the file has more than {max_rows} sentences, the most a "
                    "dataset may have",
                    code="too_many_rows",
                    limit=max_rows,
                )
            tokens.append([])
            tags.append([])
            lines.append(lineno)
            in_sentence = True
        tokens[-1].append(cols[0])
        tags[-1].append(cols[-1])
    words = pa.list_(pa.string())
    table = pa.table({"tokens": pa.array(tokens, type=words), "tags": pa.array(tags, type=words)})
    return ParsedTable(table=table, lines=lines)


# --- Character-span annotations ----------------------------------------------------------------


@dataclass
class Span:
    start: int
    end: int
    label: str
    number: int  # 1-based position in the row's list, for messages


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _span(entity: Any, number: int, row: int) -> Span:
    # {"start": 0, "end": 5, "label": "PER"}, or a [start, end, label] triple (spaCy, doccano).
    if isinstance(entity, list | tuple) and len(entity) == 3:
        entity = dict(zip(("start", "end", "label"), entity, strict=True))
    if not isinstance(entity, dict):
        raise _row_error(row, f'entity {number} must be {{"start", "end", "label"}}', "entities")
    start, end, label = (
        _as_int(entity.get("start")),
        _as_int(entity.get("end")),
        entity.get("label"),
    )
    if start is None or end is None:
        raise _row_error(row, f"entity {number}: start and end must be integers", "entities")
    if not isinstance(label, str) or not label.strip():
        raise _row_error(row, f"entity {number}: label must be a non-empty string", "entities")
    return Span(start, end, label.strip(), number)


def _checked_spans(value: Any, text: str, row: int) -> list[Span]:
    if isinstance(value, str):  # mixed types in the column made Arrow keep it as JSON text
        value = json.loads(value)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _row_error(row, "column 'entities' must be a list", "entities")
    spans = [_span(e, i + 1, row) for i, e in enumerate(value)]
    for s in spans:
        if s.start >= s.end:
            raise _row_error(
                row, f"entity {s.number} has start {s.start} >= end {s.end}", "entities"
            )
        if s.start < 0 or s.end > len(text):
            raise _row_error(
                row,
                f"entity {s.number} [{s.start}, {s.end}) falls outside the text "
                f"({len(text)} characters)",
                "entities",
            )
    spans.sort(key=lambda s: (s.start, s.end))
    for a, b in zip(spans, spans[1:], strict=False):
        if b.start < a.end:
            raise _row_error(
                row,
                f"entities {a.number} [{a.start}, {a.end}) {text[a.start : a.end]!r} and "
                f"{b.number} [{b.start}, {b.end}) {text[b.start : b.end]!r} overlap",
                "entities",
            )
    return spans


def spans_to_tags(text: str, spans: Sequence[Span], row: int) -> tuple[list[str], list[str]]:
    """Words of the text and their IOB2 tags: words a span overlaps get B-X, then I-X.

    A word cut by a span boundary counts as overlapped; a word two spans overlap goes to the
    first. A span left with no word (only spaces, or a word the previous span took) is an error.
    """
    offsets = split_words(text)
    tags = [OUTSIDE] * len(offsets)
    w = 0
    for s in spans:
        # Words ending at or before the span's start cannot overlap it, nor any later span.
        while w < len(offsets) and offsets[w][1] <= s.start:
            w += 1
        first = w
        while w < len(offsets) and offsets[w][0] < s.end:
            tags[w] = ("B-" if w == first else "I-") + s.label
            w += 1
        if w == first:
            raise _row_error(
                row,
                f"entity {s.number} [{s.start}, {s.end}) {text[s.start : s.end]!r} covers no word "
                "of its own",
                "entities",
            )
    return [text[a:b] for a, b in offsets], tags


def is_span_table(table: pa.Table) -> bool:
    names = set(table.column_names)
    return {"text", "entities"} <= names and "tokens" not in names


def spans_table(table: pa.Table) -> pa.Table:
    """`text` + character-span `entities` rows -> `tokens` + `tags` rows (same order)."""
    texts = table.column("text").to_pylist()
    entities = table.column("entities").to_pylist()
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for i, (text, value) in enumerate(zip(texts, entities, strict=True)):
        row = i + 1
        if not isinstance(text, str):
            raise _row_error(row, "column 'text' must be a string", "text")
        try:
            spans = _checked_spans(value, text, row)
        except ValueError:
            raise _row_error(row, "column 'entities' is not a JSON list", "entities") from None
        words, word_tags = spans_to_tags(text, spans, row)
        tokens.append(words)
        tags.append(word_tags)
    words_type = pa.list_(pa.string())
    return pa.table(
        {"tokens": pa.array(tokens, type=words_type), "tags": pa.array(tags, type=words_type)}
    )


# --- Validation and IOB repair ------------------------------------------------------------------


@dataclass
class TagScan:
    """What the rows' tags say about their scheme."""

    # (row, token) of every I- tag that opens an entity, 1-based.
    stray: list[tuple[int, int]] = field(default_factory=list)
    # B- tags that open an entity after O or another type (IOB2 usage; IOB1 never does).
    b_openers: int = 0

    @property
    def scheme(self) -> str:
        # I- opening entities and B- never doing so is IOB1, as CoNLL-2003 writes it. Any
        # B- opener means IOB2, and its I- openers are mistakes to repair.
        return "IOB1" if self.stray and not self.b_openers else "IOB2"


def _token_text(value: Any, row: int, k: int) -> str:
    if not isinstance(value, str):
        raise _row_error(row, f"token {k} is {json.dumps(value)}, not a string", "tokens")
    if not value.strip():
        raise _row_error(row, f"token {k} is empty", "tokens")
    return value


def _tag_text(value: Any, row: int, k: int) -> str:
    if not isinstance(value, str):
        raise _row_error(
            row,
            f"tag {k} is {json.dumps(value)}; tags must be strings such as 'B-PER' "
            "(class ids need their label names)",
            "tags",
        )
    if value == OUTSIDE or _TAG.fullmatch(value):
        return value
    if _OTHER_SCHEME.fullmatch(value):
        raise _row_error(
            row,
            f"tag {k} is {value!r}: IOBES/BILOU tags are not accepted; use IOB tags "
            "(O, B-<type>, I-<type>)",
            "tags",
        )
    raise _row_error(row, f"tag {k} is {value!r}; tags are O, B-<type> or I-<type>", "tags")


def _as_list(value: Any, row: int, column: str) -> list[Any]:
    if not isinstance(value, list):
        raise _row_error(row, f"column '{column}' must be a list of strings", column)
    return value


def check_row(tokens: Any, tags: Any, row: int, scan: TagScan) -> tuple[list[str], list[str]]:
    """The row's tokens and tags, checked; stray I- and B- openers are counted in `scan`."""
    tokens, tags = _as_list(tokens, row, "tokens"), _as_list(tags, row, "tags")
    if not tokens:
        raise _row_error(row, "the sentence has no tokens", "tokens")
    if len(tokens) != len(tags):
        raise _row_error(row, f"{len(tokens)} tokens but {len(tags)} tags", "tags")
    words = [_token_text(v, row, k + 1) for k, v in enumerate(tokens)]
    checked = [_tag_text(v, row, k + 1) for k, v in enumerate(tags)]
    previous = OUTSIDE
    for k, tag in enumerate(checked):
        if is_stray_inside(previous, tag):
            scan.stray.append((row, k + 1))
        elif is_b_opener(previous, tag):
            scan.b_openers += 1
        previous = tag
    return words, checked


def strict_refusal(rows_tags: Sequence[Sequence[str]], scan: TagScan) -> InvalidInput:
    row, k = scan.stray[0]
    tags = rows_tags[row - 1]
    before = f"follows {tags[k - 2]!r}" if k > 1 else "starts the sentence"
    return _row_error(
        row,
        f"tag {k} {tags[k - 1]!r} {before}: in IOB2 an entity opens with B-; "
        f"{len(scan.stray)} such tag(s) in the file. Upload without strict to have them "
        "repaired to B-",
        "tags",
        repairs=len(scan.stray),
    )


def repair(rows_tags: list[list[str]], scan: TagScan) -> dict[str, Any]:
    """Make every stray I- a B- in place; the notes that say what was done."""
    repaired = 0
    for i, tags in enumerate(rows_tags):
        rows_tags[i], changed = to_iob2(tags)
        repaired += len(changed)
    if scan.scheme == "IOB1":
        return {"tagging": "IOB1", "converted_to": "IOB2", "repaired_tags": repaired}
    notes: dict[str, Any] = {"tagging": "IOB2", "repaired_tags": repaired}
    if repaired:
        notes["repaired_rows"] = len({row for row, _ in scan.stray})
        notes["first_repaired_row"] = scan.stray[0][0]
    return notes


def entity_counts(rows_tags: Sequence[Sequence[str]]) -> dict[str, int]:
    counts: Counter[str] = Counter(kind for tags in rows_tags for kind, _, _ in entity_spans(tags))
    return dict(sorted(counts.items()))
