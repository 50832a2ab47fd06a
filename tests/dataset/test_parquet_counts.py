"""A Parquet file whose contents disagree with its own footer is refused (422 metadata_mismatch),
wherever the footer lies: the file's row count, a row group's, a column's value count, or all.

The files are real ones written by pyarrow, with their footer's counts edited in place (see
tests/dataset/parquet_footer.py): told 10 rows, a reader decodes 10 and drops the rest.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.dataset import parquet_counts
from tests.dataset.parquet_footer import (
    COLUMN_NUM_VALUES,
    COLUMN_SIZE,
    DATA_PAGE_OFFSET,
    FILE_NUM_ROWS,
    GROUP_NUM_ROWS,
    footer_counts,
    patched,
    with_number,
    with_writer,
)
from tests.dataset.util import created, dataset_dir, error, leftovers, upload

ROWS = 200_000
ALL = (FILE_NUM_ROWS, GROUP_NUM_ROWS, COLUMN_NUM_VALUES)
LIES = {
    "file rows": (FILE_NUM_ROWS,),
    "row group rows": (GROUP_NUM_ROWS,),
    "column values": (COLUMN_NUM_VALUES,),
    "file and row group rows": (FILE_NUM_ROWS, GROUP_NUM_ROWS),
    "row group rows and column values": (GROUP_NUM_ROWS, COLUMN_NUM_VALUES),
    "file rows and column values": (FILE_NUM_ROWS, COLUMN_NUM_VALUES),
    "every count": ALL,
}


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


@pytest.fixture(scope="module")
def rows_file() -> bytes:
    """200,000 classification rows: a dictionary-encoded text column and a label column."""
    text = pa.array([f"review {i}" for i in range(ROWS)])
    label = pa.array(["pos", "neg"] * (ROWS // 2))
    return parquet_bytes(pa.table({"text": text, "label": label}))


def refused(client, settings, content: bytes) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    err = error(upload(client, content, "rows.parquet"), 422)
    assert err["code"] == "metadata_mismatch", err
    assert err["message"].endswith("; the file is damaged or was edited: write it again")
    assert err["details"] == {"field": "file"}
    assert leftovers(settings) == []
    return err


def test_the_honest_file_is_stored_whole(client, settings, rows_file):  # type: ignore[no-untyped-def]
    body = created(upload(client, rows_file, "rows.parquet"))
    assert body["num_rows"] == ROWS
    table = pq.read_table(dataset_dir(settings, body["id"]) / "data.parquet")
    assert table["text"].to_pylist()[-1] == f"review {ROWS - 1}"


@pytest.mark.parametrize("lie", LIES)
def test_a_footer_that_undercounts_is_refused(client, settings, rows_file, lie):  # type: ignore[no-untyped-def]
    refused(client, settings, patched(rows_file, 10, *LIES[lie]))


def test_the_message_names_the_counts_and_the_column(client, settings, rows_file):  # type: ignore[no-untyped-def]
    err = refused(client, settings, patched(rows_file, 10, FILE_NUM_ROWS, GROUP_NUM_ROWS))
    assert err["message"].startswith(
        "the file's footer says 10 rows in row group 1 but its column 'text' holds 200,000 values"
    )
    err = refused(client, settings, patched(rows_file, 10, FILE_NUM_ROWS))
    assert err["message"].startswith(
        "the file's footer says 10 rows in all but 200,000 in its row groups"
    )


def test_a_footer_that_lies_everywhere_is_caught_by_the_pages(client, settings, rows_file):  # type: ignore[no-untyped-def]
    # The footer is consistent with itself; only the page headers still count 200,000 values.
    err = refused(client, settings, patched(rows_file, 10, *ALL))
    assert "column 'text' in row group 1 but its pages hold 200,000 values" in err["message"]


def test_one_row_group_of_several(client, settings):  # type: ignore[no-untyped-def]
    table = pa.table({"text": [f"t{i}" for i in range(30_000)], "label": ["a", "b"] * 15_000})
    content = parquet_bytes(table, row_group_size=10_000)
    assert len(footer_counts(content).found[GROUP_NUM_ROWS]) == 3
    err = refused(client, settings, patched(content, 5, GROUP_NUM_ROWS, group=1))
    assert "30,000 rows in all but 20,005 in its row groups" in err["message"]
    err = refused(client, settings, patched(content, 5, GROUP_NUM_ROWS, COLUMN_NUM_VALUES, group=2))
    assert "30,000 rows in all but 20,005" in err["message"]
    # Row group 3 says 5 rows and 5 values, the file 20,005 rows: the footer agrees with itself.
    lie = patched(content, 5, GROUP_NUM_ROWS, COLUMN_NUM_VALUES, group=2)
    err = refused(client, settings, patched(lie, 20_005, FILE_NUM_ROWS))
    assert "in row group 3 but its pages hold 10,000 values" in err["message"]


def ner_file(rows: int, **kwargs: Any) -> bytes:
    tokens = [["Peter", "lives", "in", "Paris"][: 1 + i % 4] for i in range(rows)]
    tags = [["B-PER", "O", "O", "B-LOC"][: 1 + i % 4] for i in range(rows)]
    return parquet_bytes(pa.table({"tokens": tokens, "tags": tags}), **kwargs)


def test_version_2_pages_count_rows_too(client, settings):  # type: ignore[no-untyped-def]
    table = pa.table({"text": [f"t{i}" for i in range(50_000)], "label": ["a", "b"] * 25_000})
    content = parquet_bytes(table, data_page_version="2.0")
    err = refused(client, settings, patched(content, 10, *ALL))
    assert "but its pages hold 50,000 values" in err["message"]
    # A list column's values may outnumber its rows; V2 page headers count the rows as well.
    content = ner_file(20_000, data_page_version="2.0")
    err = refused(client, settings, patched(content, 10, FILE_NUM_ROWS, GROUP_NUM_ROWS))
    assert err["message"].startswith(
        "the file's footer says 50,000 values in 10 rows for column 'tokens.list.element' in row "
        "group 1 but its pages hold 20,000 rows"
    )


@pytest.mark.parametrize("lie", LIES)
def test_list_columns_that_lose_rows_are_refused(client, settings, lie):  # type: ignore[no-untyped-def]
    # A list column holds at least a value per row, so a row count cut to 10 with the values left
    # as they are passes the footer's own checks; the rows read then hold fewer values than that.
    content = patched(ner_file(20_000), 10, *LIES[lie])
    err = error(upload(client, content, "rows.parquet", task="ner"), 422)
    assert err["code"] == "metadata_mismatch", err
    assert leftovers(settings) == []


def test_list_rows_read_short_name_the_column(client, settings):  # type: ignore[no-untyped-def]
    content = patched(ner_file(20_000), 10, FILE_NUM_ROWS, GROUP_NUM_ROWS)
    err = error(upload(client, content, "rows.parquet", task="ner"), 422)
    assert err["message"].startswith(
        "the file's footer says its column 'tokens.list.element' holds 50,000 values but the 10 "
        "rows read hold 23"
    )


def test_honest_list_columns_are_stored_whole(client):  # type: ignore[no-untyped-def]
    body = created(upload(client, ner_file(20_000), "rows.parquet", task="ner"))
    assert body["num_rows"] == 20_000


def test_an_unreadable_page_header_is_a_parse_error(client, settings, rows_file):  # type: ignore[no-untyped-def]
    damaged = rows_file[:4] + b"\xff" * 64 + rows_file[68:]
    err = error(upload(client, damaged, "rows.parquet"), 422)
    assert err["code"] == "parse_error"
    assert err["message"].startswith("not a valid Parquet file: column 'text': ")
    assert leftovers(settings) == []


@pytest.mark.parametrize(
    ("name", "number", "reason"),
    [
        (DATA_PAGE_OFFSET, -1, "the footer places it at bytes -1 to "),
        (COLUMN_SIZE, -1, "the footer places it at bytes 4 to 3, outside the file"),
        (DATA_PAGE_OFFSET, 3, "a page header lacks a count"),
    ],
)
def test_a_footer_that_points_outside_the_pages_is_a_parse_error(
    client, settings, name, number, reason
):  # type: ignore[no-untyped-def]
    content = parquet_bytes(
        pa.table({"text": ["a", "b"], "label": ["x", "y"]}), use_dictionary=False
    )
    err = error(upload(client, patched(content, number, name), "rows.parquet"), 422)
    assert err["code"] == "parse_error"
    assert err["message"].startswith(f"not a valid Parquet file: column 'text': {reason}")
    assert leftovers(settings) == []


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"\x19" * 100 + b"\x00" * 10, "a page header nests too deep"),
        (
            b"\x19\xf8\xff\xff\xff\xff\x0f" + b"\x00" * 100_000,
            "the page header at byte 0 is cut off",
        ),
        (b"\x16" + b"\xff" * 20, "a page header holds an overlong number"),
        (b"\x1d\x00", "not a page header (Thrift type 13)"),
    ],
)
def test_hostile_page_headers_are_page_errors(header: bytes, reason: str) -> None:
    from app.dataset.parquet_pages import PageError, chunk_counts

    with pytest.raises(PageError, match=re.escape(reason)):
        chunk_counts(io.BytesIO(header), 0, 10**9, max_pages=10)


def test_page_headers_read_are_capped(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    # Called directly: uploads are parsed in another process, out of monkeypatch's reach.
    from app.core.errors import InvalidInput
    from app.dataset.parquet import read_parquet

    table = pa.table({"text": [f"t{i}" for i in range(1_000)], "label": ["a", "b"] * 500})
    path = tmp_path / "rows.parquet"
    path.write_bytes(parquet_bytes(table, max_rows_per_page=100))
    limits = {"max_rows": 10_000, "max_decoded_bytes": 1 << 30}
    # Each column: a dictionary page and 10 data pages.
    monkeypatch.setattr(parquet_counts, "MAX_PAGES", 21)
    with pytest.raises(InvalidInput) as refused:
        read_parquet(path, **limits)
    assert refused.value.code == "too_many_pages"
    assert refused.value.details == {"field": "file", "limit": 21}
    monkeypatch.setattr(parquet_counts, "MAX_PAGES", 22)
    assert read_parquet(path, **limits).table.num_rows == 1_000


SHAPES = {
    "list": pa.array([[1, 2], [], None, [None, 3]]),
    "list of lists": pa.array([[[1], []], [], None, [None, [2, 3]], [[None]]]),
    "struct": pa.array([{"a": 1, "b": [1, 2]}, None, {"a": None, "b": []}, {"a": 2, "b": None}]),
    "list of structs": pa.array([[{"a": 1, "b": [1]}], [], None, [None, {"a": None, "b": [2]}]]),
    "squad answers": pa.array(
        [{"text": ["a", "b"], "answer_start": [1, 2]}, {"text": [], "answer_start": []}, None]
    ),
    "fixed-size list": pa.array([[1, 2], None, [3, None]], pa.list_(pa.int64(), 2)),
    "large list": pa.array([["x"], [], None], pa.large_list(pa.string())),
    "map": pa.array([[("k", 1)], [], None], pa.map_(pa.string(), pa.int64())),
    "no rows": pa.array([], pa.string()),
    "no rows of lists": pa.array([], pa.list_(pa.string())),
}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("row_group_size", [None, 2])
def test_honest_files_of_every_shape_pass_the_count_checks(tmp_path, shape, row_group_size):  # type: ignore[no-untyped-def]
    from app.dataset.parquet import read_parquet

    column = SHAPES[shape]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"c": column}), path, row_group_size=row_group_size)
    parsed = read_parquet(path, max_rows=100, max_decoded_bytes=1 << 20)
    assert parsed.table["c"].to_pylist() == column.to_pylist()


@pytest.mark.parametrize(
    ("writer", "accepted"),
    [
        ("parquet-mr version 1.2.8 (build)", True),
        ("parquet-mr", True),
        ("parquet-mr version 1.8.1 (build)", False),
        ("parquet-cpp-arrow version 26.0.1", False),
    ],
)
def test_chunk_sizes_of_old_parquet_mr_files(client, settings, rows_file, writer, accepted):  # type: ignore[no-untyped-def]
    # parquet-mr before 1.2.9 left the dictionary page header out of a chunk's size (PARQUET-816);
    # pyarrow reads 100 bytes further in their files. Such a file: the text column 10 bytes short.
    [(_, _, size), *_] = footer_counts(rows_file).found[COLUMN_SIZE]
    content = with_writer(with_number(rows_file, COLUMN_SIZE, 0, size - 10), writer)
    resp = upload(client, content, "rows.parquet")
    if accepted:
        assert created(resp)["num_rows"] == ROWS
    else:
        assert error(resp, 422)["code"] == "parse_error"
        assert leftovers(settings) == []
