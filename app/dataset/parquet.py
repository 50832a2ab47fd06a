"""Read a Parquet upload without trusting it: corrupt files, decompression bombs, binary text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from app.core.errors import InvalidInput, PayloadTooLarge
from app.dataset.parquet_counts import check_footer, check_read
from app.ml.tables import ParsedTable


def read_parquet(path: Path, *, max_rows: int, max_decoded_bytes: int) -> ParsedTable:
    """The file's table; refused when corrupt, unlike its own footer, or over a row or byte cap."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path)
        if meta.num_rows > max_rows:
            raise InvalidInput(
                f"the file has more than {max_rows} rows, the most a dataset may have",
                code="too_many_rows",
                limit=max_rows,
            )
        declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        _check_decoded(declared, max_decoded_bytes)
        check_footer(path, meta)
        # Text columns are read as dictionaries, so that a value repeated a million times (tiny
        # in the file) is measured before it is copied a million times.
        flat = [f.name for f in pq.read_schema(path) if _is_text_or_binary(f.type)]
        table = pq.read_table(path, read_dictionary=flat or None)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"not a valid Parquet file: {exc}", code="parse_error") from None
    check_read(table, meta)
    _check_decoded(_decoded_bytes(table), max_decoded_bytes)
    return ParsedTable(table=_decode_columns(table))


def _is_text_or_binary(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def _check_decoded(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"the Parquet data decodes to more than {limit} bytes (max_decoded_bytes); "
            f"split it into smaller datasets",
            code="decoded_too_large",
            field="file",
            limit=limit,
        )


def _decoded_bytes(table: pa.Table) -> int:
    """What the table will take once dictionaries are expanded, without expanding them."""
    import pyarrow.compute as pc

    total = 0
    for column in table.columns:
        if not pa.types.is_dictionary(column.type):
            total += column.nbytes
            continue
        for chunk in column.chunks:
            if _is_text_or_binary(chunk.dictionary.type):
                # The values as they will be once expanded, plus the dictionary page itself.
                lengths = pc.binary_length(chunk.dictionary)
                total += (pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0) + 8 * len(chunk)
                total += chunk.dictionary.nbytes
            else:
                total += chunk.nbytes
    return total


def _decode_columns(table: pa.Table) -> pa.Table:
    """Plain columns for the rest of the pipeline; binary must be UTF-8 text to be kept."""
    for i, field in enumerate(table.schema):
        column = table.column(i)
        if pa.types.is_dictionary(field.type):
            column = column.cast(field.type.value_type)
        if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            column = _binary_as_text(field.name, column)
        table = table.set_column(i, field.name, column)
    return table


def _binary_as_text(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    # Some writers store strings as plain BINARY; keep them as text when they are UTF-8.
    try:
        large = pa.types.is_large_binary(column.type)
        return column.cast(pa.large_string() if large else pa.string())
    except pa.ArrowInvalid:
        row = next(i for i, v in enumerate(column.to_pylist()) if not _is_utf8(v)) + 1
        raise InvalidInput(
            f"row {row}: column '{name}' holds binary data that is not UTF-8 text",
            code="invalid_encoding",
            row=row,
            field=name,
        ) from None


def _is_utf8(value: Any) -> bool:
    if value is None:
        return True
    try:
        bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
