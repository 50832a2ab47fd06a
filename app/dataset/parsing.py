"""Read an uploaded file into an Arrow table; every error names the line or item at fault."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pyarrow as pa

from app.core.errors import InvalidInput
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
    except ValueError:
        return DatasetFormat.JSON
    return DatasetFormat.JSONL if isinstance(obj, dict) and rest.strip() else DatasetFormat.JSON


def read_table(path: Path, fmt: DatasetFormat, *, max_rows: int) -> ParsedTable:
    """Parse the whole file in format `fmt`; raise InvalidInput naming the line at fault."""
    if path.stat().st_size == 0:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    if fmt is DatasetFormat.PARQUET:
        return _read_parquet(path, max_rows=max_rows)
    with path.open("rb") as f:
        if fmt is DatasetFormat.CSV:
            return _read_delimited(f, delimiter=",", max_rows=max_rows)
        if fmt is DatasetFormat.TSV:
            return _read_delimited(f, delimiter="\t", max_rows=max_rows)
        if fmt is DatasetFormat.JSONL:
            return _read_jsonl(f, max_rows=max_rows)
        return _read_json(f, max_rows=max_rows)


def _text_lines(f: IO[bytes]) -> Iterator[str]:
    """Decode the file line by line, so that invalid UTF-8 is reported with its line number."""
    for lineno, raw in enumerate(f, start=1):
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


def _header_names(record: list[str], line: int) -> list[str]:
    names = [name.strip() or f"column_{i + 1}" for i, name in enumerate(record)]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise _parse_error(f"the header names column '{name}' twice", line=line)
        seen.add(name)
    return names


def _read_delimited(f: IO[bytes], *, delimiter: str, max_rows: int) -> ParsedTable:
    if delimiter == "\t":
        # TSV as GLUE writes it: tabs separate, quotes are ordinary characters.
        reader = csv.reader(_text_lines(f), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        hint = "a tab inside a text?"
    else:
        reader = csv.reader(_text_lines(f), delimiter=",", quotechar='"', strict=True)
        hint = 'quote fields that contain commas: "like, this"'
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    previous = 0
    try:
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            if header is None:
                header = _header_names(record, start)
                continue
            if len(record) != len(header):
                raise _parse_error(
                    f"expected {len(header)} fields like the header ({', '.join(header)}), "
                    f"found {len(record)} ({hint})",
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
    if header is None:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(header)
    table = pa.table(
        {name: pa.array(col, type=pa.string()) for name, col in zip(header, columns, strict=True)}
    )
    return ParsedTable(table=table, lines=lines, had_header=True)


def _read_jsonl(f: IO[bytes], *, max_rows: int) -> ParsedTable:
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for lineno, text in enumerate(_text_lines(f), start=1):
        if not text.strip():
            continue
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
        rows.append(obj)
        lines.append(lineno)
    if not rows:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
    return ParsedTable(table=_rows_to_table(rows), lines=lines)


def _read_json(f: IO[bytes], *, max_rows: int) -> ParsedTable:
    text = "".join(_text_lines(f))
    try:
        doc = json.loads(text)
    except RecursionError:
        raise _parse_error("JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _parse_error(
            f"invalid JSON at column {exc.colno}: {exc.msg}", line=exc.lineno
        ) from None
    rows = _json_rows(doc)
    if len(rows) > max_rows:
        raise _too_many_rows(max_rows)
    return ParsedTable(table=_rows_to_table(rows))


_JSON_SHAPES = (
    'expected a list of objects, one per row (e.g. [{"text": "...", "label": "..."}]), '
    'an object with such a list under "data", or an object of equal-length column lists'
)


def _json_rows(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict):
        if isinstance(doc.get("data"), list):
            doc = doc["data"]
        elif doc and all(isinstance(v, list) for v in doc.values()):
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


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
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


def _read_parquet(path: Path, *, max_rows: int) -> ParsedTable:
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        if meta.num_rows > max_rows:
            raise _too_many_rows(max_rows)
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise _parse_error(f"not a valid Parquet file: {exc}") from None
    return ParsedTable(table=table)
