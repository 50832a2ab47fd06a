"""CSV and TSV files without a header line: header=false, positional column_mapping, and a hint
that suggests it when a first line of data was read as column names."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from app.core.config import Settings
from tests.conftest import shared_data
from tests.dataset.util import created, dataset_dir, error, leftovers, upload

# Like ag_news: class, title, description; no header line.
NEWS = (
    b'3,"Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, '
    b"Wall Street's dwindling band of ultra-cynics, are seeing green again.\"\n"
    b'4,"Ky. Company Wins Grant to Study Peptides (AP)","AP - A company founded by a chemistry '
    b'researcher at the University of Louisville won a grant to develop a method."\n'
    b'2,"Phelps wins again","Michael Phelps won his fifth gold medal, in the relay."\n'
)


def stored(settings: Settings, dataset_id: str) -> dict[str, list[str]]:
    table = pq.read_table(dataset_dir(settings, dataset_id) / "data.parquet")
    return {name: table[name].to_pylist() for name in table.column_names}


def test_positional_mapping_reads_every_line_as_data(client, settings):  # type: ignore[no-untyped-def]
    body = created(
        upload(client, NEWS, "news.csv", header="false", column_mapping='{"label": 0, "text": 2}')
    )
    assert body["num_rows"] == 3  # the first line is a row, not a header
    assert body["label_counts"] == {"2": 1, "3": 1, "4": 1}
    assert body["column_mapping"] == {"0": "label", "2": "text"}
    rows = stored(settings, body["id"])
    assert rows["label"] == ["3", "4", "2"]
    assert rows["text"][0].startswith("Reuters - Short-sellers, Wall Street's")


def test_mapping_by_position_names_as_source_columns(client, settings):  # type: ignore[no-untyped-def]
    # The same mapping written as column_mapping's usual source -> canonical, the source being
    # the position; a TSV file, with a text pair from the title.
    tsv = b"pos\tgreat fun\tthe film\nneg\tdull\tthe plot\n"
    body = created(
        upload(
            client,
            tsv,
            "pairs.tsv",
            header="false",
            column_mapping='{"0": "label", "1": "text", "2": "text_pair"}',
        )
    )
    rows = stored(settings, body["id"])
    assert rows == {
        "text": ["great fun", "dull"],
        "label": ["pos", "neg"],
        "text_pair": ["the film", "the plot"],
    }


def test_headerless_file_read_with_a_header_suggests_header_false(client, settings):  # type: ignore[no-untyped-def]
    err = error(upload(client, NEWS, "news.csv"), 422)
    assert err["code"] == "missing_column"
    message = err["message"]
    assert "looks like a row of data" in message
    assert "'3' is a number" in message and "reads like a text" in message
    assert "header=false" in message
    assert "0: '3', 1: 'Wall St. Bears" in message  # the positions to map
    assert err["details"]["suggest"] == {"header": False}
    assert leftovers(settings) == []
    # A header of names that lacks a column gets the usual advice, without the hint.
    err = error(upload(client, b"utterance,intent name\nhi,a\n"), 422)
    assert "header=false" not in err["message"] and "suggest" not in err["details"]


def test_duplicate_names_in_the_first_line_suggest_header_false(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"pos,good,good\nneg,bad,dull\n", "rows.csv"), 422)
    assert "line 1" in err["message"] and "'good' twice" in err["message"]
    assert "header=false" in err["message"]


def test_header_false_without_a_mapping_lists_the_positions(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, NEWS, "news.csv", header="false"), 422)
    assert err["code"] == "missing_column"
    message = err["message"]
    assert "no header line (header=false)" in message
    assert "numbered 0 to 2" in message and "0: '3'" in message
    assert 'e.g. {"text": 0, "label": 1}' in message


@pytest.mark.parametrize(
    ("fields", "field", "needle"),
    [
        # An index past the last column.
        (
            {"header": "false", "column_mapping": '{"label": 0, "text": 5}'},
            "column_mapping",
            "has no header line and 3 columns, numbered 0 to 2",
        ),
        # Indexes only name columns of a file without a header.
        ({"column_mapping": '{"label": 0, "text": 2}'}, "column_mapping", "header=false"),
        (
            {"header": "false", "column_mapping": '{"label": -1, "text": 2}'},
            "column_mapping",
            "start at 0",
        ),
        (
            {"header": "false", "column_mapping": '{"label": 2, "text": 2}'},
            "column_mapping",
            "to column 2",
        ),
        ({"header": "maybe"}, "header", "true or false"),
    ],
)
def test_bad_positional_uploads_name_the_field(client, settings, fields, field, needle):  # type: ignore[no-untyped-def]
    err = error(upload(client, NEWS, "news.csv", **fields), 422)
    assert err["details"]["field"] == field
    assert needle in err["message"]
    assert leftovers(settings) == []


def test_header_false_is_refused_for_formats_that_name_their_fields(client):  # type: ignore[no-untyped-def]
    rows = b'{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
    err = error(upload(client, rows, "rows.jsonl", header="false"), 422)
    assert err["details"]["field"] == "header"
    assert "jsonl" in err["message"]


def test_rows_of_a_headerless_file_are_named_by_their_line(client):  # type: ignore[no-untyped-def]
    mapping = '{"label": 0, "text": 1}'
    err = error(
        upload(client, b"pos,good\nneg,bad,extra\n", header="false", column_mapping=mapping), 422
    )
    assert "line 2" in err["message"] and "like line 1, the first row" in err["message"]
    err = error(upload(client, b"pos,good\n,bad\n", header="false", column_mapping=mapping), 422)
    assert "row 2" in err["message"] and "line 2 of the file" in err["message"]


def test_ag_news_uploads_with_header_false(client, settings):  # type: ignore[no-untyped-def]
    path = shared_data("ag_news", "test.csv")
    content = path.read_bytes()
    err = error(upload(client, content, "test.csv"), 422)
    assert "header=false" in err["message"]

    mapping = json.dumps({"label": 0, "text": 2})
    body = created(upload(client, content, "test.csv", header="false", column_mapping=mapping))
    assert body["num_rows"] == 7600
    assert body["label_counts"] == {"1": 1900, "2": 1900, "3": 1900, "4": 1900}
    with path.open(newline="", encoding="utf-8") as f:
        reference = [(r[2], r[0]) for r in csv.reader(f)]
    rows = stored(settings, body["id"])
    assert list(zip(rows["text"], rows["label"], strict=True)) == reference
