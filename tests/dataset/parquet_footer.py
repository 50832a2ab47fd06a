"""Edit the row and value counts of a Parquet footer in place, as in a damaged or doctored file.

The footer is a Thrift compact-protocol FileMetaData: num_rows is field 3, row_groups field 4,
created_by field 6; a RowGroup has columns (1) and num_rows (3); a ColumnChunk has meta_data (3),
whose num_values is field 5 and total_compressed_size field 7. An i64 is a zigzag varint, so a
smaller number is written in the same number of bytes by padding it with 0x80 continuation bytes,
and nothing else in the file moves.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FILE_NUM_ROWS = "file.num_rows"
GROUP_NUM_ROWS = "row_group.num_rows"
COLUMN_NUM_VALUES = "column.num_values"
COLUMN_SIZE = "column.total_compressed_size"
DATA_PAGE_OFFSET = "column.data_page_offset"
CREATED_BY = "file.created_by"
# Field ids from the root of FileMetaData: row_groups (4), columns (1), meta_data (3).
I64_FIELDS = {
    (3,): FILE_NUM_ROWS,
    (4, 3): GROUP_NUM_ROWS,
    (4, 1, 3, 5): COLUMN_NUM_VALUES,
    (4, 1, 3, 7): COLUMN_SIZE,
    (4, 1, 3, 9): DATA_PAGE_OFFSET,
}


@dataclass
class Counts:
    """Where each count sits in the file: (offset, length in bytes, value)."""

    found: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)

    def add(self, name: str, at: int, end: int, value: int) -> None:
        self.found.setdefault(name, []).append((at, end - at, value))


class _Reader:
    def __init__(self, data: bytes, start: int) -> None:
        self.data, self.pos = data, start

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        shift = result = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int, path: tuple[int, ...], counts: Counts) -> None:
        if kind in (1, 2):  # a bool field: its value is in the field header
            return
        if kind == 3:
            self.pos += 1
        elif kind in (4, 5):
            self.zigzag()
        elif kind == 6:
            at = self.pos
            value = self.zigzag()
            if path in I64_FIELDS:
                counts.add(I64_FIELDS[path], at, self.pos, value)
        elif kind == 7:
            self.pos += 8
        elif kind == 8:
            length = self.varint()
            if path == (6,):  # created_by
                counts.add(CREATED_BY, self.pos, self.pos + length, 0)
            self.pos += length
        elif kind in (9, 10):
            header = self.byte()
            size = header >> 4 if header >> 4 != 15 else self.varint()
            for _ in range(size):
                # A bool in a list takes a byte of its own (type 1 there).
                self.value(3 if header & 0x0F in (1, 2) else header & 0x0F, path, counts)
        elif kind == 11:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self.value(types >> 4, path, counts)
                    self.value(types & 0x0F, path, counts)
        elif kind == 12:
            self.struct(path, counts)
        else:
            raise ValueError(f"unknown Thrift compact type {kind} at byte {self.pos}")

    def struct(self, path: tuple[int, ...], counts: Counts) -> None:
        last = 0
        while True:
            header = self.byte()
            if header == 0:
                return
            delta, kind = header >> 4, header & 0x0F
            last = last + delta if delta else self.zigzag()
            self.value(kind, (*path, last), counts)


def footer_counts(data: bytes) -> Counts:
    """The row and value counts of a whole Parquet file's footer, with where each one sits."""
    assert data[-4:] == b"PAR1"
    (length,) = struct.unpack("<i", data[-8:-4])
    counts = Counts()
    _Reader(data, len(data) - 8 - length).struct((), counts)
    return counts


def _padded_varint(number: int, length: int) -> bytes:
    zigzag = (number << 1) ^ (number >> 63)
    out = []
    for _ in range(length - 1):
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    assert zigzag < 0x80, f"{number} does not fit in {length} bytes"
    out.append(zigzag)
    return bytes(out)


def patched(data: bytes, number: int, *names: str, group: int | None = None) -> bytes:
    """`data` with the numbers of the kinds named set to `number`, each in its own bytes: all of
    them, or those of row group `group` (0-based) and the file's own."""
    out = bytearray(data)
    counts = footer_counts(data)
    for name in names:
        found = counts.found[name]
        if group is not None and name != FILE_NUM_ROWS:
            per_group = len(found) // len(counts.found[GROUP_NUM_ROWS])
            found = found[group * per_group : (group + 1) * per_group]
        for at, length, _ in found:
            out[at : at + length] = _padded_varint(number, length)
    return bytes(out)


def with_number(data: bytes, name: str, index: int, number: int) -> bytes:
    """`data` with the `index`-th number of kind `name` (in footer order) set to `number`."""
    at, length, _ = footer_counts(data).found[name][index]
    return data[:at] + _padded_varint(number, length) + data[at + length :]


def with_writer(data: bytes, created_by: str) -> bytes:
    """`data` with the footer's created_by replaced by `created_by`, padded to the same length."""
    [(at, length, _)] = footer_counts(data).found[CREATED_BY]
    assert len(created_by) <= length
    return data[:at] + created_by.ljust(length).encode() + data[at + length :]
