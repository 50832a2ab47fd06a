"""Bad uploads: a 4xx in the one error shape naming the line, row or column; nothing left."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from tests.dataset.util import error, leftovers, upload


@pytest.fixture(autouse=True)
def _nothing_left_behind(settings):  # type: ignore[no-untyped-def]
    # Every test here uploads only bad files: afterwards the data dir holds only the database.
    yield
    assert leftovers(settings) == []


def test_missing_column_names_columns_and_suggests_mapping(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"utterance,label\nhi,a\n"), 422)
    assert err["code"] == "missing_column"
    message = err["message"]
    assert "'text'" in message  # what is missing
    assert "'utterance'" in message and "'label'" in message  # what the file has
    assert "requires ['text', 'label']" in message
    assert 'column_mapping, e.g. {"utterance": "text"}' in message
    assert err["details"]["columns"] == ["utterance", "label"]


def test_ambiguous_aliases_ask_for_a_mapping(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"sentence,review,label\na,b,c\n"), 422)
    assert err["code"] == "ambiguous_column"
    assert "'sentence'" in err["message"] and "'review'" in err["message"]
    assert "column_mapping" in err["message"]


@pytest.mark.parametrize(
    ("mapping", "needle"),
    [
        ("{not json", "not valid JSON"),
        ('["text"]', "JSON object"),
        ('{"sentence": ""}', "JSON object"),
        ('{"nope": "text"}', "['nope']"),
        ('{"text": "txt"}', "'txt', which is not a column"),
        ('{"text": "label", "label": "label"}', "both"),
    ],
)
def test_bad_column_mapping(client, mapping, needle):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"text,label\na,b\n", column_mapping=mapping), 422)
    assert needle in err["message"]
    assert err["details"]["field"] == "column_mapping"


@pytest.mark.parametrize(
    ("filename", "content", "row", "line"),
    [
        ("a.csv", b"text,label\ngood,1\n,0\nok,1\n", 2, 3),
        ("a.csv", b"text,label\ngood,1\n\n\n   ,0\n", 2, 5),  # blank lines still count as lines
        ("a.tsv", b"text\tlabel\ngood\t1\nfine\t0\n \t1\n", 3, 4),
        ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": null, "label": 0}\n', 2, 2),
    ],
)
def test_empty_text_names_row_and_line(client, filename, content, row, line):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename), 422)
    assert f"row {row}: column 'text' is empty" in err["message"]
    assert f"line {line} of the file" in err["message"]
    assert err["details"]["row"] == row and err["details"]["line"] == line


def test_empty_text_in_a_mapped_column_names_the_file_column(client):  # type: ignore[no-untyped-def]
    content = json.dumps([{"body": "x", "y": "a"}, {"body": "", "y": "b"}]).encode()
    mapping = json.dumps({"body": "text", "y": "label"})
    err = error(upload(client, content, "a.json", column_mapping=mapping), 422)
    assert "row 2: column 'text' is empty (column 'body' in the file)" in err["message"]


def test_empty_label_names_row(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"text,label\na,1\nb,\n"), 422)
    assert "row 2: column 'label' is empty" in err["message"]
    assert "line 3" in err["message"]


@pytest.mark.parametrize(
    ("filename", "content", "line", "needle"),
    [
        ("a.csv", b"text,label\na,1\nb,c,1\n", 3, "expected 2 fields"),
        ("a.csv", b"text,label\na,1\nb\n", 3, "found 1"),
        ("a.csv", b'text,label\na,1\n"never closed,1\nc,0\n', 3, "never closed"),
        ("a.csv", b'text,label\na,1\n"x"y,1\n', 3, "expected after"),
        ("a.tsv", b"text\tlabel\na\t1\nb\tc\t1\n", 3, "a tab inside a text?"),
        ("a.jsonl", b'{"text": "a", "label": 1}\n\n{"text": "b", label: 0}\n', 3, "invalid JSON"),
        ("a.jsonl", b'{"text": "a", "label": 1}\n["b", 0]\n', 2, "found a list"),
        ("a.json", b'[\n {"text": "a", "label": 1},\n {"text": "b" "label": 0}\n]', 3, "invalid"),
        ("a.csv", b"text,text\na,b\n", 1, "twice"),
    ],
)
def test_unparseable_file_names_line(client, filename, content, line, needle):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename), 422)
    assert err["code"] == "parse_error"
    assert err["message"].startswith(f"line {line}: ")
    assert needle in err["message"]
    assert err["details"]["line"] == line


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("a.json", b'"just a string"', "found a string"),
        ("a.json", b'{"rows": 3}', "keys ['rows']"),
        ("a.json", b'{"text": ["a", "b"], "label": ["x"]}', "different lengths"),
        ("a.parquet", b"text,label\na,b\n", "not a valid Parquet file"),
    ],
)
def test_wrong_structure(client, filename, content, needle):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename), 422)
    assert needle in err["message"]


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("a.csv", b"", "the uploaded file is empty"),
        ("a.csv", b"\n  \n\n", "the uploaded file is empty"),
        ("a.jsonl", b"\n\n", "the uploaded file is empty"),
        ("a.csv", b"text,label\n", "the file has a header line but no data rows"),
        ("a.json", b"[]", "the file has no rows"),
    ],
)
def test_empty_files(client, filename, content, message):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename), 422)
    assert err["code"] == "empty_file"
    assert err["message"] == message


@pytest.mark.parametrize(
    ("filename", "content", "line", "column"),
    [
        ("a.csv", b"text,label\nok,1\ncaf\xe9,1\n", 3, 4),
        ("a.jsonl", b'{"text": "ok", "label": 1}\n{"text": "\xff", "label": 1}\n', 2, 11),
        ("a.json", b'[{"text": "ok",\n "label": "\xc3"}]', 2, 12),
    ],
)
def test_invalid_utf8_names_line(client, filename, content, line, column):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename), 422)
    assert err["code"] == "invalid_encoding"
    assert err["message"].startswith(f"line {line}: invalid UTF-8")
    assert f"column {column}" in err["message"]
    assert err["details"]["line"] == line


def test_trec_latin1_file_names_its_line(client):  # type: ignore[no-untyped-def]
    from tests.conftest import shared_data

    content = shared_data("trec", "train_5500.label").read_bytes()
    bad = next(i for i, raw in enumerate(content.splitlines(), 1) if not _is_utf8(raw))
    rows = b"text\tlabel\n" + b"".join(
        raw.split(b" ", 1)[1] + b"\t" + raw.split(b":", 1)[0] + b"\n"
        for raw in content.splitlines()
    )
    err = error(upload(client, rows, "trec.tsv"), 422)
    assert err["message"].startswith(f"line {bad + 1}: invalid UTF-8")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("filename", "content", "fields"),
    [
        ("a.csv", b"text,label\na,b\n", {"format": "xml"}),
        ("notes.txt", b"just words\nmore words\n", {}),
        ("a.bin", b"\x00\x01\x02binary", {}),
    ],
)
def test_unknown_format(client, filename, content, fields):  # type: ignore[no-untyped-def]
    err = error(upload(client, content, filename, **fields), 422)
    assert err["code"] == "unknown_format"
    assert "csv, tsv, jsonl, json, parquet" in err["message"]
    assert err["details"]["field"] == "format"


def test_unknown_task(client):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"text,label\na,b\n", task="summarization"), 422)
    assert "unknown task 'summarization'" in err["message"]
    assert err["details"]["field"] == "task"


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"task": None}, 422, "task"),
        ({"colum_mapping": "{}"}, 422, "colum_mapping"),
    ],
)
def test_bad_form_fields(client, kwargs, status, field):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"text,label\na,b\n", **kwargs), status)
    assert err["details"]["field"] == field
    assert f"'{field}'" in err["message"]


def test_missing_file_part(client):  # type: ignore[no-untyped-def]
    resp = client.post("/v1/datasets", files={"task": (None, "classification")})
    err = error(resp, 422)
    assert err["details"]["field"] == "file"


def test_not_multipart(client):  # type: ignore[no-untyped-def]
    err = error(client.post("/v1/datasets", json={"task": "classification"}), 415)
    assert "multipart/form-data" in err["message"]


def test_truncated_multipart_body(client):  # type: ignore[no-untyped-def]
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        b"text,label\na,b\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=XyZ"}
    err = error(client.post("/v1/datasets", content=body, headers=headers), 400)
    assert "ended early" in err["message"]


def test_failure_while_publishing_leaves_nothing(app, admin_key, monkeypatch):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from tests.conftest import auth

    def broken_commit(self: Session) -> None:
        raise RuntimeError("database went away")

    with TestClient(app, raise_server_exceptions=False, headers=auth(admin_key)) as client:
        monkeypatch.setattr(Session, "commit", broken_commit)
        resp = upload(client, b"text,label\na,b\n")
        assert resp.status_code == 500
        monkeypatch.undo()

        def broken_move(staging, final):  # type: ignore[no-untyped-def]
            # The parsing process wrote data.parquet into staging; publishing it fails.
            assert {p.name for p in staging.iterdir()} == {"data.parquet", "source"}
            raise OSError("disk full")

        from app.core import store

        monkeypatch.setattr(store, "atomic_move_dir", broken_move)
        resp = upload(client, b"text,label\na,b\n")
        # The store could not take it: unavailable for now, try again later.
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "storage_unavailable"
        assert int(resp.headers["Retry-After"]) > 0
        monkeypatch.undo()
        assert client.get("/v1/datasets").json()["data"] == []
        data_dir = app.state.settings.data_dir
        assert not any((data_dir / "datasets").glob("*"))
        assert not [p for p in (data_dir / "tmp").rglob("*") if p.is_file()]


def test_strict_must_be_a_boolean(client):  # type: ignore[no-untyped-def]
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification", "strict": "maybe"},
        files={"file": ("x.csv", b"text,label\na,b\n", "text/csv")},
    )
    assert resp.status_code == 422
    assert "strict" in resp.json()["error"]["message"]
