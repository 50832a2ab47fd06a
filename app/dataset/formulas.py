"""CSV injection (OWASP): refuse CSV/TSV cells that a spreadsheet would run as a formula."""

from __future__ import annotations

import pyarrow as pa

from app.core.errors import InvalidInput

# RE2 syntax (pyarrow.compute), matched against the cell in NFKC form, so that a full-width or
# small "＝", "＋", "－", "＠" (and full-width letters, digits and brackets) read as their ASCII
# selves, as a spreadsheet's input method would enter them.
#
# What a spreadsheet skips or that a reader does not see may stand before the formula: whitespace
# (tab, CR, vertical tab), Unicode spaces (no-break, en/em, ideographic), control characters and
# format characters (zero-width space, byte-order mark, direction marks).
_SKIP = r"[\s\p{Z}\p{Cc}\p{Cf}]"
# Numbers, operators, strings and spaces that may come between a sign and the part that acts:
# "-2+3+", "= 1+", '="a"&'.
_PREFIX = r"(?:[\pN.,;:+\-*/^&%(<>=@]|" + _SKIP + r'|"[^"]*")*'
# A function call ("SUM(", "HYPERLINK(", "_xlfn.WEBSERVICE(", localised names such as "SUMME("),
# another workbook ("[evil.xlsx]Sheet1!", "'[x.xlsx]Sheet 1'!") or a sheet ("Sheet1!A1", "!A1").
_ACTS = (
    r"(?:[\pL_\\][\pL\pN_.]*\("
    r"|\[[^\]]+\][^!\s]*!|'\[[^\]]+\][^']*'!"
    r"|(?:'[^']+'|[\pL_][\pL\pN_.]*)?!\$?[A-Za-z]{1,3}\$?\d)"
)
# '=' then, at once, something an expression starts with: "=1+1", "=A1", "=SUM(", "=@SUM(",
# "={1,2}", "=[x.xlsx]Sheet1!A1", "=!A1"; or a quote, after spaces too: '="x"', '= "x"'. Not
# "=====" or "==> see below" (rules, arrows), nor the emoticons "=)", "=/", "=[" and "=\".
_EXPRESSION = r"=(?:" + _SKIP + r"*[\"']|[\pL\pN_$(+\-.@{]|\[[^\]]*\]|![\pL\pN$_])"
# '=', '+', '-' or '@' and, after numbers, operators and spaces, a call or a reference:
# "= SUM(A1)", "+SUM(", "-2+3+HYPERLINK(", "@cmd(", "+[x.xlsx]Sheet1!A1". Plain text such as
# "= great", "- great film", "+1", "-5 stars" or "@user thanks" has neither.
_SIGN_THEN_ACTS = r"[=+\-@]" + _PREFIX + _ACTS
# ... or a DDE link anywhere after the sign: "-2+3+cmd|' /C calc'!A0".
_DDE = r"[=+\-@][^|]*\w\|[^!]*!"
FORMULA = "^" + _SKIP + "*(?:" + "|".join((_EXPRESSION, _SIGN_THEN_ACTS, _DDE)) + ")"
# The characters whose NFKC form starts with '=', '+', '-' or '@' (superscript, subscript, small,
# full-width, U+2A75/U+2A76 "==" and "===", U+FB29 Hebrew alternative plus): only cells that start
# with one of these are normalised and matched against FORMULA.
_SIGNS = (
    "=\u207c\u208c\u2a75\u2a76\ufe66\uff1d"
    "+\u207a\u208a\ufb29\ufe62\uff0b"
    "\\-\ufe63\uff0d"
    "@\ufe6b\uff20"
)
CANDIDATE = "^" + _SKIP + "*[" + _SIGNS + "]"
PREVIEW_CHARS = 40


def formula_rows(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The 0-based positions of the cells of a text column that read as formulas, in order."""
    import pyarrow.compute as pc

    candidates = pc.indices_nonzero(pc.match_substring_regex(array, CANDIDATE))
    if len(candidates) == 0:
        return candidates
    cells = pc.utf8_normalize(pc.take(array, candidates), "NFKC")
    return pc.filter(candidates, pc.match_substring_regex(cells, FORMULA))


def check_formulas(table: pa.Table, lines: list[int]) -> None:
    """InvalidInput naming the line and column of the first cell that reads as a formula."""
    first: tuple[int, int] | None = None  # (row, column), both 0-based
    for column, array in enumerate(table.columns):
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            continue
        rows = formula_rows(array)
        if len(rows) and (first is None or rows[0].as_py() < first[0]):
            first = (rows[0].as_py(), column)
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
