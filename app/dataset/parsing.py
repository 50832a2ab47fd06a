"""Read an uploaded file into an Arrow table; every error names the line or item at fault."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyarrow as pa

from app.core.config import Settings
from app.core.errors import InvalidInput
from app.core.jsondepth import nesting_exceeds
from app.dataset.formulas import check_formulas
from app.dataset.parquet import read_parquet
from app.dataset.schemas import DatasetFormat
from app.ml.tables import ParsedTable

SNIFF_BYTES = 64 * 1024
FORMATS = ", ".join(f.value for f in DatasetFormat)
EXTENSIONS: dict[str, DatasetFormat] = {
    ".csv": DatasetFormat.CSV,
    ".tsv": DatasetFormat.TSV,
    ".tab": DatasetFormat.TSV,
    ".jsonl": DatasetFormat.JSONL,
    ".ndjson": DatasetFormat.JSONL,
    ".json": DatasetFormat.JSON,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
}


@dataclass(frozen=True)
class ParseLimits:
    """What one upload may hold; see Settings for each."""

    max_rows: int
    max_line_bytes: int
    max_json_depth: int
    max_decoded_bytes: int
    max_columns: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ParseLimits:
        return cls(
            max_rows=settings.max_dataset_rows,
            max_line_bytes=settings.max_line_bytes,
            max_json_depth=settings.max_json_depth,
            max_decoded_bytes=settings.max_decoded_bytes,
            max_columns=settings.max_columns,
        )


def _parse_error(message: str, *, line: int | None = None, **details: Any) -> InvalidInput:
    if line is not None:
        return InvalidInput(f"line {line}: {message}", code="parse_error", line=line, **details)
    return InvalidInput(message, code="parse_error", **details)


def extension_hint(filename: str | None) -> DatasetFormat | None:
    """The format a client's file name suggests. The name is only looked at, never opened."""
    if not filename:
        return None
    suffix = PurePosixPath(filename.replace("\\", "/")).suffix.lower()
    return EXTENSIONS.get(suffix)


def detect_format(path: Path, *, filename: str | None) -> DatasetFormat:
    """Guess the format from the content, with the file name's extension as a hint."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    if head.startswith(b"PAR1"):
        return DatasetFormat.PARQUET
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidInput(
            "the file looks like UTF-16 text; save it as UTF-8", code="invalid_encoding", line=1
        )
    if b"\x00" in head:
        raise InvalidInput(
            f"could not detect the format: the content is binary and not Parquet; "
            f"supported formats: {FORMATS}",
            code="unknown_format",
            field="format",
        )
    hint = extension_hint(filename)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if hint in (DatasetFormat.CSV, DatasetFormat.TSV, DatasetFormat.JSONL, DatasetFormat.PARQUET):
        return hint
    if hint is DatasetFormat.JSON or text[:1] in ("[", "{"):
        return _json_or_jsonl(text)
    first_line = text.split("\n", 1)[0]
    if "\t" in first_line:
        return DatasetFormat.TSV
    if "," in first_line:
        return DatasetFormat.CSV
    raise InvalidInput(
        f"could not detect the format from the file name or its first line; "
        f"pass format as one of: {FORMATS}",
        code="unknown_format",
        field="format",
    )


def _json_or_jsonl(text: str) -> DatasetFormat:
    # One object on the first line with more after it is JSON Lines (what datasets' to_json
    # writes, often under a .json name); anything else is one JSON document.
    if not text.startswith("{"):
        return DatasetFormat.JSON
    first, _, rest = text.partition("\n")
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):
        return DatasetFormat.JSON  # its reader names the line at fault
    return DatasetFormat.JSONL if isinstance(obj, dict) and rest.strip() else DatasetFormat.JSON


def read_table(
    path: Path, fmt: DatasetFormat, *, limits: ParseLimits, header: bool = True
) -> ParsedTable:
    """Parse the whole file in format `fmt`; raise InvalidInput naming the line at fault.

    Without a `header`, a CSV or TSV file's columns are named by position: "0", "1", ...
    (other formats name their fields themselves; the caller refuses header=false for them).
    """
    if path.stat().st_size == 0:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    if fmt is DatasetFormat.PARQUET:
        width = _parquet_width(path)
        if width is not None and width > limits.max_columns:
            raise _too_many_columns(width, limits.max_columns)
        return read_parquet(
            path, max_rows=limits.max_rows, max_decoded_bytes=limits.max_decoded_bytes
        )
    with path.open("rb") as f:
        if fmt is DatasetFormat.CSV:
            return _read_delimited(f, delimiter=",", limits=limits, header=header)
        if fmt is DatasetFormat.TSV:
            return _read_delimited(f, delimiter="\t", limits=limits, header=header)
        if fmt is DatasetFormat.JSONL:
            return _read_jsonl(f, limits=limits)
        return _read_json(f, limits=limits)


def _parquet_width(path: Path) -> int | None:
    """The top-level fields in a Parquet footer; None when unreadable (read_parquet says why)."""
    import pyarrow.parquet as pq

    try:
        return len(pq.read_schema(path))
    except (pa.ArrowException, OSError):
        return None


def _raw_lines(f: IO[bytes], max_line_bytes: int | None) -> Iterator[bytes]:
    """The file's lines; one longer than `max_line_bytes` is refused before it is read whole."""
    if max_line_bytes is None:
        yield from f
        return
    lineno = 0
    # Room for the line break ("\r\n") beyond the cap, so that a line of exactly the cap passes.
    while raw := f.readline(max_line_bytes + 2):
        lineno += 1
        if len(raw) > max_line_bytes and len(raw.rstrip(b"\r\n")) > max_line_bytes:
            raise InvalidInput(
                f"line {lineno}: the line is longer than {max_line_bytes} bytes "
                f"(max_line_bytes); split the text, or close the quote opened on this line",
                code="line_too_long",
                line=lineno,
                limit=max_line_bytes,
            )
        yield raw


def _text_lines(f: IO[bytes], max_line_bytes: int | None = None) -> Iterator[str]:
    """Decode the file line by line, so that invalid UTF-8 is reported with its line number."""
    for lineno, raw in enumerate(_raw_lines(f, max_line_bytes), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            column = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
            raise InvalidInput(
                f"line {lineno}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} at column {column}); "
                f"save the file as UTF-8",
                code="invalid_encoding",
                line=lineno,
                column=column,
            ) from None
        if lineno == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield text


def _too_many_rows(max_rows: int, line: int | None = None) -> InvalidInput:
    where = f"line {line}: " if line is not None else ""
    return InvalidInput(
        f"{where}the file has more than {max_rows} rows, the most a dataset may have",
        code="too_many_rows",
        limit=max_rows,
    )


def _too_many_columns(
    count: int | None, limit: int, *, what: str = "the file has", line: int | None = None
) -> InvalidInput:
    """`count` None: more than `limit`, without counting further."""
    where = f"line {line}: " if line is not None else ""
    many = f"{count} columns" if count is not None else f"more than {limit} columns"
    details: dict[str, Any] = {"limit": limit}
    if count is not None:
        details["columns"] = count
    if line is not None:
        details["line"] = line
    return InvalidInput(
        f"{where}{what} {many}; a dataset may have at most {limit} (max_columns)",
        code="too_many_columns",
        **details,
    )


def _header_names(record: list[str], line: int) -> list[str]:
    names = [name.strip() or f"column_{i + 1}" for i, name in enumerate(record)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _parse_error(
                f"the header names column '{name}' twice ({NO_HEADER_HINT})", line=line
            )
        seen.add(name)
    return names


# Said wherever a first line read as column names may have been data.
NO_HEADER_HINT = (
    "if the first line is data and the file has no header line, upload it with header=false "
    'and give column_mapping 0-based column positions, like {"text": 2}'
)


def _read_delimited(
    f: IO[bytes], *, delimiter: str, limits: ParseLimits, header: bool = True
) -> ParsedTable:
    max_rows = limits.max_rows
    lines_of_text = _text_lines(f, limits.max_line_bytes)
    if delimiter == "\t":
        # TSV as GLUE writes it: tabs separate, quotes are ordinary characters.
        reader = csv.reader(lines_of_text, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        hint = "a tab inside a text?"
    else:
        reader = csv.reader(lines_of_text, delimiter=",", quotechar='"', strict=True)
        hint = 'quote fields that contain commas: "like, this"'
    names: list[str] | None = None
    like = ""  # what a row's field count must match, for the error
    rows: list[list[str]] = []
    lines: list[int] = []
    previous = 0
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if names is None:
                # The first record sets the width; one of a million fields is refused before
                # any table is built.
                if len(record) > limits.max_columns:
                    raise _too_many_columns(
                        len(record),
                        limits.max_columns,
                        what="the header has" if header else "the first row has",
                        line=start,
                    )
                if header:
                    names = _header_names(record, start)
                    like = f"the header ({', '.join(names)})"
                    continue
                # No header line: columns are named by their 0-based position.
                names = [str(i) for i in range(len(record))]
                like = f"line {start}, the first row"
            if len(record) != len(names):
                raise _parse_error(
                    f"expected {len(names)} fields like {like}, found {len(record)} ({hint})",
                    line=start,
                )
            if len(rows) >= max_rows:
                raise _too_many_rows(max_rows, start)
            rows.append(record)
            lines.append(start)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise _parse_error(
                "a quoted field is never closed (a '\"' without its pair)", line=previous + 1
            ) from None
        message = str(exc)
        if "field larger than field limit" in message:
            message += "; a text that long, or a quote opened on an earlier line and never closed"
        raise _parse_error(message, line=reader.line_num) from None
    if names is None:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    table = pa.table(
        {name: pa.array(col, type=pa.string()) for name, col in zip(names, columns, strict=True)}
    )
    check_formulas(table, lines)
    return ParsedTable(table=table, lines=lines, had_header=header)


def _too_deep(limit: int, line: int) -> InvalidInput:
    return InvalidInput(
        f"line {line}: JSON nested deeper than {limit} levels (arrays/objects inside each other)",
        code="json_too_deep",
        line=line,
        limit=limit,
    )


def _read_jsonl(f: IO[bytes], *, limits: ParseLimits) -> ParsedTable:
    max_rows, depth = limits.max_rows, limits.max_json_depth
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    keys: dict[str, None] = {}  # every key seen so far, in order: the table's columns
    for lineno, text in enumerate(_text_lines(f, limits.max_line_bytes), start=1):
        if not text.strip():
            continue
        # Counting openers first keeps the scan off ordinary lines.
        if text.count("[") + text.count("{") > depth and nesting_exceeds(text.encode(), depth):
            raise _too_deep(depth, lineno)
        try:
            obj = json.loads(text)
        except RecursionError:
            raise _parse_error("JSON nested too deeply", line=lineno) from None
        except json.JSONDecodeError as exc:
            message = f"invalid JSON at column {exc.colno}: {exc.msg}"
            raise _parse_error(message, line=lineno) from None
        if not isinstance(obj, dict):
            raise _parse_error(
                f"expected one JSON object per line, found {_kind(obj)}", line=lineno
            )
        if len(rows) >= max_rows:
            raise _too_many_rows(max_rows, lineno)
        if len(obj) > limits.max_columns:
            raise _too_many_columns(
                len(obj), limits.max_columns, what="the object has", line=lineno
            )
        keys.update(dict.fromkeys(obj))
        if len(keys) > limits.max_columns:
            raise _too_many_columns(
                None, limits.max_columns, what=f"lines 1 to {lineno} have together", line=lineno
            )
        rows.append(obj)
        lines.append(lineno)
    if not rows:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    return ParsedTable(table=_rows_to_table(rows), lines=lines)


def _read_json(f: IO[bytes], *, limits: ParseLimits) -> ParsedTable:
    max_rows = limits.max_rows
    raw = f.read()
    too_deep = nesting_exceeds(raw, limits.max_json_depth)
    if too_deep is not None:
        raise _too_deep(limits.max_json_depth, too_deep)
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        # Decode again line by line, to name the line and column at fault.
        text = "".join(_text_lines(io.BytesIO(raw)))
    del raw  # the text is a second copy; one is enough while json.loads builds the rows
    try:
        doc = json.loads(text)
    except RecursionError:
        raise _parse_error("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _parse_error(
            f"invalid JSON at column {exc.colno}: {exc.msg}", line=exc.lineno
        ) from None
    rows = _json_rows(doc, max_columns=limits.max_columns)
    if len(rows) > max_rows:
        raise _too_many_rows(max_rows)
    return ParsedTable(table=_rows_to_table(rows, max_columns=limits.max_columns))


_JSON_SHAPES = (
    'expected a list of objects, one per row (e.g. [{"text": "...", "label": "..."}]), '
    'an object with such a list under "data", or an object of equal-length column lists'
)


def _json_rows(doc: Any, *, max_columns: int) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        if isinstance(doc.get("data"), list):
            doc = doc["data"]
        elif doc and all(isinstance(v, list) for v in doc.values()):
            if len(doc) > max_columns:
                raise _too_many_columns(len(doc), max_columns, what="the object of columns has")
            lengths = {len(v) for v in doc.values()}
            if len(lengths) != 1:
                raise _parse_error(f"the column lists have different lengths {sorted(lengths)}")
            names = list(doc)
            rows = zip(*doc.values(), strict=True)
            return [dict(zip(names, values, strict=True)) for values in rows]
        else:
            raise _parse_error(f"{_JSON_SHAPES}; found an object with keys {list(doc)[:10]}")
    if not isinstance(doc, list):
        raise _parse_error(f"{_JSON_SHAPES}; found {_kind(doc)}")
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise _parse_error(
                f"{_JSON_SHAPES}; item {i + 1} is {_kind(item)} ({json.dumps(item)[:60]})",
                item=i + 1,
            )
    return doc


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _rows_to_table(rows: list[dict[str, Any]], *, max_columns: int | None = None) -> pa.Table:
    names: dict[str, None] = {}
    for i, row in enumerate(rows):
        names.update(dict.fromkeys(row))
        if max_columns is not None and len(names) > max_columns:
            if len(row) > max_columns:
                raise _too_many_columns(len(row), max_columns, what=f"item {i + 1} has")
            raise _too_many_columns(None, max_columns, what=f"items 1 to {i + 1} have together")
    return pa.table({name: _to_array([row.get(name) for row in rows]) for name in names})


def _to_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        # Mixed types in one column (a label that is 1 here and "pos" there): keep them as text.
        return pa.array(
            [v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
            type=pa.string(),
        )
