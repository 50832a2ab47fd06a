"""A parsed upload: rows as an Arrow table plus where each row sat in the file."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass
class ParsedTable:
    """The file's rows as read, before any renaming or validation."""

    table: pa.Table
    # The 1-based line of the file where each data row starts; None where lines mean nothing.
    lines: list[int] | None = None
    # True when the first line was a header (an empty table then still had a header).
    had_header: bool = False

    def line_of(self, row: int) -> int | None:
        """The file line of 1-based data row `row`, when known."""
        if self.lines is None or not 1 <= row <= len(self.lines):
            return None
        return self.lines[row - 1]
