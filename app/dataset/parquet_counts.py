"""Refuse a Parquet file whose contents disagree with its own footer, instead of losing rows.

A reader believes the footer: a file of 2,500,000 rows whose footer says 10 reads as 10 rows. So
the counts are checked against each other before the file is read (file rows against the row
groups', a row group's rows against each column's values, each column's values against what its
page headers say), and the table read against the footer after.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from app.core.errors import InvalidInput
from app.dataset.parquet_pages import PageCounts, PageError, TooManyPages, chunk_counts

# Page headers read per file. Writers start a page every 20,000 rows or 1 MiB (pyarrow, parquet-mr),
# so 2,000,000 rows of 4 GiB of text take about 4,000 pages a column; a page costs ~7 us to check.
MAX_PAGES = 200_000
DICT_HEADER_SLACK = 100  # pyarrow's kMaxDictHeaderSize


def check_footer(path: Path, meta: Any) -> None:
    """InvalidInput when the footer's row and value counts disagree with each other or the pages."""
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    in_groups = sum(g.num_rows for g in groups)
    if in_groups != meta.num_rows:
        raise mismatch(
            f"the file's footer says {_n(meta.num_rows, 'row')} in all but {in_groups:,} in its "
            f"row groups"
        )
    slack = DICT_HEADER_SLACK if _undercounts_chunks(meta.created_by or "") else 0
    pages = 0
    with path.open("rb") as f:
        for i, group in enumerate(groups, start=1):
            for j in range(group.num_columns):
                nested = meta.schema.column(j).max_repetition_level > 0
                pages += _check_chunk(f, group, i, j, nested, MAX_PAGES - pages, slack)


def _check_chunk(
    f: IO[bytes], group: Any, i: int, j: int, nested: bool, max_pages: int, slack: int
) -> int:
    """Check column `j` of row group `i` (1-based) against its rows and pages; its page count."""
    chunk, rows = group.column(j), group.num_rows
    name, values = chunk.path_in_schema, chunk.num_values
    # A list column has a value, a null or an empty list for every row, at least.
    if values < rows or (values > rows and not nested):
        raise mismatch(
            f"the file's footer says {_n(rows, 'row')} in row group {i} but its column "
            f"'{name}' holds {_n(values, 'value')} there"
        )
    counted = _pages(f, chunk, max_pages, slack)
    if counted.values != values or counted.rows not in (None, rows):
        if counted.values != values:
            held = _n(counted.values, "value")
        else:  # V2 pages: the values agree, the rows do not
            held = _n(counted.rows or 0, "row")
        raise mismatch(
            f"the file's footer says {_n(values, 'value')} in {_n(rows, 'row')} for column "
            f"'{name}' in row group {i} but its pages hold {held}"
        )
    return max(counted.pages, 1)  # a chunk without pages counts as one


def check_read(table: pa.Table, meta: Any) -> None:
    """InvalidInput when the table read holds fewer rows or values than the footer promised."""
    if table.num_rows != meta.num_rows:
        raise mismatch(
            f"the file's footer says {_n(meta.num_rows, 'row')} but {table.num_rows:,} were read"
        )
    # A list column's rows can be cut short while its values stay: compare what the table needs
    # the file to hold (a level per value, null and empty list) with what the footer says it does.
    needed = [n for column in table.columns for n in _levels(column)]
    if len(needed) != meta.num_columns or None in needed:
        return  # a layout this count does not follow (maps); the checks before still hold
    for j in range(meta.num_columns):
        declared = sum(meta.row_group(i).column(j).num_values for i in range(meta.num_row_groups))
        if needed[j] != declared:
            name = meta.row_group(0).column(j).path_in_schema if meta.num_row_groups else str(j)
            raise mismatch(
                f"the file's footer says its column '{name}' holds {_n(declared, 'value')} but the "
                f"{_n(table.num_rows, 'row')} read hold {needed[j]:,}"
            )


def _undercounts_chunks(created_by: str) -> bool:
    """parquet-mr before 1.2.9 left the dictionary page header out of a chunk's size (PARQUET-816);
    pyarrow reads up to 100 bytes further for its files, and so do the page counts."""
    found = re.match(r"parquet-mr(?: version (\d+)\.(\d+)\.(\d+))?", created_by)
    if found is None:
        return False
    return found[1] is None or tuple(int(n) for n in found.groups()) < (1, 2, 9)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def mismatch(what: str) -> InvalidInput:
    return InvalidInput(
        f"{what}; the file is damaged or was edited: write it again",
        code="metadata_mismatch",
        field="file",
    )


def _pages(f: IO[bytes], chunk: Any, max_pages: int, slack: int) -> PageCounts:
    # The first page: the dictionary's when there is one. An offset under 4 (the magic "PAR1") is
    # none: an empty chunk has no data page, and old writers left a dictionary's offset at 0.
    offsets = [chunk.data_page_offset]
    if chunk.has_dictionary_page:
        offsets.append(chunk.dictionary_page_offset)
    start = min((o for o in offsets if o >= 4), default=chunk.data_page_offset)
    try:
        return chunk_counts(
            f, start, start + chunk.total_compressed_size, max_pages=max_pages, slack=slack
        )
    except TooManyPages:
        raise InvalidInput(
            f"the file has more than {MAX_PAGES:,} pages (their headers are read to check the "
            f"file's row counts); write it with larger pages, such as pyarrow's default",
            code="too_many_pages",
            field="file",
            limit=MAX_PAGES,
        ) from None
    except PageError as exc:
        raise InvalidInput(
            f"not a valid Parquet file: column '{chunk.path_in_schema}': {exc}", code="parse_error"
        ) from None


def _levels(column: pa.Array | pa.ChunkedArray) -> list[int | None]:
    """Per Parquet leaf column under `column`, in order: the values it must hold to encode it.

    A leaf holds one value per slot, null or not; a null or empty list, or a null struct, takes
    one value in each leaf under it. None where this arithmetic does not apply.
    """
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        per_chunk = [_levels(chunk) for chunk in column.chunks] or [
            _levels(pa.array([], type=column.type))
        ]
        return [None if None in c else sum(c) for c in zip(*per_chunk, strict=True)]
    t = column.type
    if pa.types.is_struct(t):
        valid = column.is_valid()
        nulls = len(column) - pc.sum(valid).as_py() if len(column) else 0
        children = column.flatten()
        if nulls:
            children = [child.filter(valid) for child in children]
        return [None if n is None else n + nulls for child in children for n in _levels(child)]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        lengths = pc.list_value_length(column)
        no_value = pc.sum(pc.or_kleene(pc.is_null(lengths), pc.equal(lengths, 0))).as_py() or 0
        return [None if n is None else n + no_value for n in _levels(column.flatten())]
    if pa.types.is_nested(t):  # maps, unions, list views
        return [None]
    return [len(column)]
