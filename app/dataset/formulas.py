"""CSV injection (OWASP): refuse CSV/TSV cells that a spreadsheet would run as a formula."""

from __future__ import annotations

import pyarrow as pa

from app.core.errors import InvalidInput

# RE2 syntax (pyarrow.compute). After optional whitespace, a cell is a formula when it starts with
# '=' and an expression, or with '+', '-' or '@' followed by something only a formula looks like:
# a function call (`+SUM(`, `-2+3+HYPERLINK(`, `@cmd(`) or a DDE link (`-2+3+cmd|' /C calc'!A0`).
# Plain text such as "- great film", "+1", "-5 stars" or "@user thanks" is not.
FORMULA = (
    # '=' then something an expression can start with: "=1+1", "=A1", "=SUM(", '="x"'. Runs of
    # '=' used as rules ("=====", common in scraped news text) are not formulas.
    r"^\s*(?:=\s*[\w$(+\-\"'.]"
    r"|[+\-@]\s*(?:[\d\s.,+\-*/^&%]*[A-Za-z_][\w.]*\("
    r"|[^|]*\w\|[^!]*!))"
)
PREVIEW_CHARS = 40


def check_formulas(table: pa.Table, lines: list[int]) -> None:
    """InvalidInput naming the line and column of the first cell that reads as a formula."""
    import pyarrow.compute as pc

    first: tuple[int, int] | None = None  # (row, column), both 0-based
    for column, array in enumerate(table.columns):
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        hits = pc.match_substring_regex(array, FORMULA)
        row = pc.index(hits, True).as_py()
        if row >= 0 and (first is None or row < first[0]):
            first = (row, column)
    if first is None:
        return
    row, column = first
    name = table.column_names[column]
    cell = table.column(column)[row].as_py()
    preview = cell if len(cell) <= PREVIEW_CHARS else cell[:PREVIEW_CHARS] + "..."
    line = lines[row]
    raise InvalidInput(
        f"line {line}, column {column + 1} ('{name}'): the cell {preview!r} starts like a "
        f"spreadsheet formula, which a spreadsheet opening this file would run (CSV injection); "
        f"to keep it as text, start the cell with an apostrophe ('), or upload JSONL or Parquet",
        code="formula_cell",
        line=line,
        column=column + 1,
        field=name,
    )
