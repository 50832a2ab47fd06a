"""What the pages of a Parquet column chunk hold, read from the page headers themselves.

A reader trusts the footer's counts: told 10 rows, pyarrow decodes 10 values and never looks at the
other 2,499,990 in the same pages. Each page starts with a Thrift compact-protocol PageHeader: type
(1), compressed_page_size (3), data_page_header (5) and data_page_header_v2 (8), both with
num_values as field 1, V2 with num_rows as field 3. Only those are kept; the rest is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

DATA_PAGE, DATA_PAGE_V2 = 0, 3
HEADER_READ = 256  # bytes read ahead for a page header; more when it has long statistics
MAX_HEADER = 1024 * 1024  # a header longer than this (min/max statistics of 1 MiB) is damage
MAX_DEPTH = 8  # PageHeader nests three deep (statistics); deeper is not a page header


class PageError(Exception):
    """A page header that cannot be read where the footer says pages are."""


class TooManyPages(Exception):
    """More pages than the caller will read the headers of."""


@dataclass
class PageCounts:
    values: int = 0  # over the data pages, nulls included: the column's num_values
    rows: int | None = 0  # over the data pages, when every one is V2 (V1 pages do not say)
    pages: int = 0


def chunk_counts(
    f: IO[bytes], start: int, end: int, *, max_pages: int, slack: int = 0
) -> PageCounts:
    """The counts of the pages from byte `start` to `end`, refusing more than `max_pages`.

    The last page may run `slack` bytes past `end` (old writers undercounted chunk sizes).
    """
    counts = PageCounts()
    if start < 0 or end < start:
        raise PageError(f"the footer places it at bytes {start} to {end}, outside the file")
    pos = start
    while pos < end:
        if counts.pages >= max_pages:
            raise TooManyPages()
        header, size = _read_header(f, pos)
        body = _int(header.get(3))
        if body < 0 or pos + size + body > end + slack:
            raise PageError(f"the page at byte {pos} runs past its column chunk")
        kind = _int(header.get(1))
        if kind == DATA_PAGE:
            counts.values += _int(_struct_field(header, 5).get(1))
            counts.rows = None
        elif kind == DATA_PAGE_V2:
            v2 = _struct_field(header, 8)
            counts.values += _int(v2.get(1))
            if counts.rows is not None:
                counts.rows += _int(v2.get(3))
        counts.pages += 1
        pos += size + body
    return counts


def _read_header(f: IO[bytes], pos: int) -> tuple[dict[int, Any], int]:
    length = HEADER_READ
    while True:
        f.seek(pos)
        data = f.read(length)
        try:
            return _Reader(data).struct(0)
        except IndexError:  # ran out of bytes: the header is longer than what was read
            if len(data) < length or length >= MAX_HEADER:
                raise PageError(f"the page header at byte {pos} is cut off") from None
            length *= 16


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise PageError("a page header lacks a count")
    return value


def _struct_field(header: dict[int, Any], field: int) -> dict[int, Any]:
    value = header.get(field)
    if not isinstance(value, dict):
        raise PageError("a data page header lacks its counts")
    return value


class _Reader:
    """Thrift compact protocol, the subset a PageHeader uses; skipped values are not kept."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def struct(self, depth: int) -> tuple[dict[int, Any], int]:
        fields: dict[int, Any] = {}
        last = 0
        while True:
            header = self._byte()
            if header == 0:
                return fields, self.pos
            delta, kind = header >> 4, header & 0x0F
            last = last + delta if delta else self._zigzag()
            fields[last] = self._value(kind, depth)

    def _value(self, kind: int, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise PageError("a page header nests too deep")
        if kind in (1, 2):  # a bool field carries its value in its type
            return kind == 1
        if kind == 3:
            return self._byte()
        if kind in (4, 5, 6):
            return self._zigzag()
        if kind == 7:
            self._skip(8)
        elif kind == 8:
            self._skip(self._varint())
        elif kind in (9, 10):
            header = self._byte()
            size = header >> 4 if header >> 4 != 15 else self._varint()
            element = 3 if header & 0x0F in (1, 2) else header & 0x0F  # a listed bool: a byte
            for _ in range(size):
                self._value(element, depth + 1)
        elif kind == 11:
            size = self._varint()
            types = self._byte() if size else 0
            key, value = (3 if t in (1, 2) else t for t in (types >> 4, types & 0x0F))
            for _ in range(size):
                self._value(key, depth + 1)
                self._value(value, depth + 1)
        elif kind == 12:
            return self.struct(depth + 1)[0]
        else:
            raise PageError(f"not a page header (Thrift type {kind})")
        return None

    def _byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def _skip(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise IndexError("past the end")
        self.pos += n

    def _varint(self) -> int:
        shift = result = 0
        while shift < 70:
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise PageError("a page header holds an overlong number")

    def _zigzag(self) -> int:
        n = self._varint()
        return (n >> 1) ^ -(n & 1)
