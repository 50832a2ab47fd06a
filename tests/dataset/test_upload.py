"""Uploads that succeed: every format, detection, column mapping, aliases, stored files."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.dataset.service import load_rows
from app.db.models import Dataset
from tests.dataset.util import created, dataset_dir, leftovers, upload

ROWS = [
    ('he said "great", twice', "pos"),
    ("dull, slow and long", "neg"),
    ("fine", "pos"),
]
CSV = b'text,label\n"he said ""great"", twice",pos\n"dull, slow and long",neg\nfine,pos\n'
TSV = b'text\tlabel\nhe said "great", twice\tpos\ndull, slow and long\tneg\nfine\tpos\n'
JSONL = "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS).encode()
JSON = json.dumps([{"text": t, "label": lab} for t, lab in ROWS], indent=2).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


PARQUET = parquet_bytes(pa.table({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]}))


def stored_rows(settings: Settings, dataset_id: str) -> list[tuple[str, str]]:
    table = pq.read_table(dataset_dir(settings, dataset_id) / "data.parquet")
    return list(zip(table["text"].to_pylist(), table["label"].to_pylist(), strict=True))


@pytest.mark.parametrize(
    ("filename", "content", "fmt"),
    [
        ("rows.csv", CSV, "csv"),
        ("rows.tsv", TSV, "tsv"),
        ("rows.jsonl", JSONL, "jsonl"),
        ("rows.json", JSON, "json"),
        ("rows.parquet", PARQUET, "parquet"),
        # No extension to go by: the content decides.
        ("upload", CSV, "csv"),
        ("upload", TSV, "tsv"),
        ("upload", JSONL, "jsonl"),
        ("upload", JSON, "json"),
        ("upload", PARQUET, "parquet"),
        (None, TSV, "tsv"),
        # datasets' to_json writes JSON Lines under a .json name.
        ("rows.json", JSONL, "jsonl"),
        # A misleading extension does not fool the Parquet magic bytes.
        ("rows.csv", PARQUET, "parquet"),
    ],
)
def test_each_format_round_trips(client, settings, filename, content, fmt):  # type: ignore[no-untyped-def]
    body = created(upload(client, content, filename))
    assert body["format"] == fmt
    assert body["object"] == "dataset"
    assert body["num_rows"] == 3
    assert body["columns"] == ["text", "label"]
    assert body["label_names"] == ["neg", "pos"]
    assert body["label_counts"] == {"neg": 1, "pos": 2}
    assert body["status"] == "ready"
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["size_bytes"] == len(content)
    assert stored_rows(settings, body["id"]) == ROWS
    # The original upload is kept byte for byte, under a name we chose.
    assert (dataset_dir(settings, body["id"]) / "source").read_bytes() == content
    assert leftovers(settings) == [
        f"datasets/{body['id']}/data.parquet",
        f"datasets/{body['id']}/source",
    ]


def test_explicit_format_wins_over_extension(client, settings):  # type: ignore[no-untyped-def]
    body = created(upload(client, TSV, "rows.txt", format="tsv"))
    assert body["format"] == "tsv"
    assert stored_rows(settings, body["id"]) == ROWS


def test_tsv_quotes_are_ordinary_characters(client, settings):  # type: ignore[no-untyped-def]
    # GLUE-style TSV: a text may start with a quote, or hold just one.
    content = b'text\tlabel\n"the "best" film\t1\n 5 " screen\t0\n""\t1\n'
    body = created(upload(client, content, "glue.tsv"))
    assert stored_rows(settings, body["id"]) == [
        ('"the "best" film', "1"),
        (' 5 " screen', "0"),
        ('""', "1"),
    ]


def test_other_json_shapes(client, settings):  # type: ignore[no-untyped-def]
    wrapped = json.dumps({"data": [{"text": t, "label": lab} for t, lab in ROWS]}).encode()
    columnar = json.dumps({"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]})
    for content in (wrapped, columnar.encode()):
        body = created(upload(client, content, "rows.json"))
        assert stored_rows(settings, body["id"]) == ROWS


def test_bom_crlf_and_multiline_fields(client, settings):  # type: ignore[no-untyped-def]
    content = '\ufefftext,label\r\n"two\r\nlines",a\r\n\r\nnaïve café,b\r\n'.encode()
    body = created(upload(client, content, "rows.csv"))
    assert body["columns"] == ["text", "label"]
    assert stored_rows(settings, body["id"]) == [("two\r\nlines", "a"), ("naïve café", "b")]


def test_numeric_labels_and_text_pairs(client, settings):  # type: ignore[no-untyped-def]
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "label": i % 3} for i in range(12)]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()
    body = created(upload(client, content, "pairs.jsonl"))
    assert body["columns"] == ["text", "label", "text_pair"]
    assert body["column_mapping"] == {"sentence1": "text", "sentence2": "text_pair"}
    assert body["label_names"] == ["0", "1", "2"]
    assert body["label_counts"] == {"0": 4, "1": 4, "2": 4}


def test_column_mapping(client, settings):  # type: ignore[no-untyped-def]
    content = b"id,sentence,category,extra\n1,good,pos,x\n2,bad,neg,y\n"
    mapping = {"sentence": "text", "category": "label"}
    body = created(upload(client, content, "m.csv", column_mapping=json.dumps(mapping)))
    assert body["column_mapping"] == mapping
    assert body["columns"] == ["text", "label"]
    assert stored_rows(settings, body["id"]) == [("good", "pos"), ("bad", "neg")]


def test_column_mapping_beats_a_column_of_the_same_name(client, settings):  # type: ignore[no-untyped-def]
    content = b"text,clean_text,label\nRAW,clean,a\nRAW2,clean2,b\n"
    body = created(upload(client, content, column_mapping='{"clean_text": "text"}'))
    assert stored_rows(settings, body["id"]) == [("clean", "a"), ("clean2", "b")]


@pytest.mark.parametrize(
    ("header", "mapping"),
    [
        (b"sentence,sentiment", {"sentence": "text", "sentiment": "label"}),
        (b"review,class", {"review": "text", "class": "label"}),
        # Case and stray spaces in a header are forgiven, and reported.
        (b"Text, Label", {"Text": "text", "Label": "label"}),
    ],
)
def test_aliases_are_detected_and_reported(client, settings, header, mapping):  # type: ignore[no-untyped-def]
    body = created(upload(client, header + b"\ngood,1\nbad,0\n"))
    assert body["column_mapping"] == mapping
    assert body["columns"] == ["text", "label"]
    assert stored_rows(settings, body["id"]) == [("good", "1"), ("bad", "0")]


def test_name_is_a_sanitized_label_never_a_path(client, settings):  # type: ignore[no-untyped-def]
    body = created(upload(client, CSV, "../../etc/evil\u202ename\x1b.csv"))
    assert body["name"] == "evilname.csv"
    assert created(upload(client, CSV, "C:\\Users\\me\\rows.csv"))["name"] == "rows.csv"
    assert created(upload(client, CSV, "rows.csv", name="  My set  "))["name"] == "My set"
    assert created(upload(client, CSV, None))["name"] == "dataset"
    # Whatever the names said, files went only to datasets/<id>/.
    assert all(path.startswith("datasets/ds_") for path in leftovers(settings))
    assert not (settings.data_dir.parent / "etc").exists()


def test_upload_streams_to_a_random_name_under_data_dir(client, settings, monkeypatch):  # type: ignore[no-untyped-def]
    made: list[Path] = []
    real_mkstemp = tempfile.mkstemp

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(Path(name))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    created(upload(client, CSV, "../../../x.csv"))
    assert len(made) == 1
    assert made[0].parent == settings.data_dir / "tmp"
    assert "x.csv" not in made[0].name
    # Moved into the dataset's directory as `source`, not copied.
    assert not made[0].exists()


def test_row_and_load_rows(client, app, settings):  # type: ignore[no-untyped-def]
    body = created(upload(client, CSV, "rows.csv"))
    with app.state.sessionmaker() as session:
        row = session.get(Dataset, body["id"])
        assert row is not None
    assert row.storage_path == f"datasets/{body['id']}"
    ds = load_rows(settings, row)
    assert ds.column_names == ["text", "label"]
    assert list(zip(ds["text"][:], ds["label"][:], strict=True)) == ROWS


def test_openapi_documents_the_multipart_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    schema = body["multipart/form-data"]["schema"]
    assert schema["required"] == ["file", "task"]
    assert set(schema["properties"]) == {
        "file",
        "task",
        "name",
        "format",
        "column_mapping",
        "header",
        "strict",
    }
