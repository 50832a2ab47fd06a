"""Hostile uploads through the real app (benchmarks/hostile_uploads.py builds the files): each gets
a 4xx naming the problem, or is stored exactly, and the serving process (this one: TestClient runs
the app here) grows by less than 200 MB of resident memory while handling it."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.core.config import Settings
from benchmarks.hostile_uploads import (
    compressed_parquet,
    dictionary_bomb,
    many_rows_csv,
    peak_growth,
    wide_csv,
    wide_json,
    wide_jsonl,
    wide_parquet,
)
from tests.dataset.util import Response, created, dataset_dir, error, upload

MB = 1024 * 1024
RSS_GROWTH_LIMIT = 200 * MB


def configure(app: FastAPI, **limits: Any) -> None:
    """Change the app's upload limits for the requests that follow."""
    app.state.settings = app.state.settings.model_copy(update=limits)


def post(client: TestClient, content: bytes, filename: str) -> tuple[Response, int]:
    """Upload once; the response and the peak growth of this process's resident memory."""
    with peak_growth(os.getpid()) as peak:
        resp = upload(client, content, filename)
    growth = peak["growth"]
    assert growth is not None
    return resp, growth


@pytest.fixture(autouse=True)
def _warm(client: TestClient) -> None:
    # The first upload of a process imports a little and may start the parsing process; measure
    # the hostile ones from there.
    created(upload(client, b"text,label\na,x\nb,y\n"))


def test_dictionary_bomb_is_refused_before_it_expands(client: TestClient) -> None:
    content = dictionary_bomb()  # 1.5M rows of one 1,000-character text: 1.5 GB decoded
    assert len(content) < 300_000
    resp, growth = post(client, content, "bomb.parquet")
    err = error(resp, 413)
    assert err["code"] == "decoded_too_large"
    assert f"more than {256 * MB} bytes (max_decoded_bytes)" in err["message"]
    assert growth < RSS_GROWTH_LIMIT, growth / MB


def test_dictionary_bomb_past_the_memory_budget_costs_only_the_parser(
    client: TestClient, app: FastAPI
) -> None:
    # Let the bomb past the decoded-size check: the parsing process runs out of memory, not us.
    configure(app, max_decoded_bytes=16 * 1024 * MB, upload_parse_memory_bytes=512 * MB)
    resp, growth = post(client, dictionary_bomb(), "bomb.parquet")
    err = error(resp, 413)
    assert err["code"] == "parse_memory"
    assert f"{512 * MB} bytes (upload_parse_memory_bytes)" in err["message"]
    assert growth < RSS_GROWTH_LIMIT, growth / MB
    # The next upload gets a fresh parsing process.
    created(upload(client, b"text,label\na,x\nb,y\n"))


def test_million_column_csv_is_refused_at_its_first_line(client: TestClient) -> None:
    content = wide_csv()  # two lines of 1,000,000 empty fields: 2 MB
    cpu = time.process_time()
    resp, growth = post(client, content, "wide.csv")
    api_cpu = time.process_time() - cpu
    err = error(resp, 422)
    assert err["code"] == "too_many_columns"
    assert err["message"] == (
        "line 1: the header has 1000000 columns; a dataset may have at most 1000 (max_columns)"
    )
    assert err["details"] == {"limit": 1000, "columns": 1_000_000, "line": 1}
    assert api_cpu < 1.0
    assert growth < RSS_GROWTH_LIMIT, growth / MB


def test_headerless_csv_counts_its_first_row(client: TestClient) -> None:
    err = error(upload(client, wide_csv(2000), "wide.csv", header="false"), 422)
    assert err["message"].startswith("line 1: the first row has 2000 columns")


@pytest.mark.parametrize(
    ("content", "filename", "message"),
    [
        (wide_jsonl(), "wide.jsonl", "line 1: the object has 100000 columns"),
        (wide_json(), "wide.json", "item 1 has 100000 columns"),
        (
            json.dumps({str(i): ["a"] for i in range(1001)}).encode(),
            "columns.json",
            "the object of columns has 1001 columns",
        ),
        (wide_parquet(), "wide.parquet", "the file has 5000 columns"),
    ],
    ids=["jsonl", "json-rows", "json-columns", "parquet"],
)
def test_wide_files_are_refused_naming_the_count_and_the_limit(  # type: ignore[no-untyped-def]
    client: TestClient, content, filename, message
) -> None:
    resp, growth = post(client, content, filename)
    err = error(resp, 422)
    assert err["code"] == "too_many_columns"
    assert err["message"] == f"{message}; a dataset may have at most 1000 (max_columns)"
    assert growth < RSS_GROWTH_LIMIT, growth / MB


def test_rows_whose_keys_add_up_past_the_cap_are_refused(client: TestClient) -> None:
    # Every line is narrow; together they would make a table of thousands of columns.
    lines = [json.dumps({"text": "a", "label": "x", f"extra{i}": 1}) for i in range(2000)]
    err = error(upload(client, "\n".join(lines).encode(), "rows.jsonl"), 422)
    assert err["message"] == (
        "line 999: lines 1 to 999 have together more than 1000 columns; a dataset may have at "
        "most 1000 (max_columns)"
    )
    items = json.dumps([json.loads(line) for line in lines]).encode()
    err = error(upload(client, items, "rows.json"), 422)
    assert err["message"].startswith("items 1 to 999 have together more than 1000 columns")


@pytest.mark.parametrize(
    ("content", "filename"),
    [
        (b"text,label,extra\na,x,1\nb,y,2\n", "rows.csv"),
        (b'{"text": "a", "label": "x", "extra": 1}\n', "rows.jsonl"),
        (b'[{"text": "a", "label": "x"}, {"text": "b", "label": "y", "extra": 1}]', "rows.json"),
    ],
)
def test_max_columns_itself_is_allowed(client: TestClient, app: FastAPI, content, filename) -> None:  # type: ignore[no-untyped-def]
    configure(app, max_columns=3)
    created(upload(client, content, filename))
    configure(app, max_columns=2)
    assert error(upload(client, content, filename), 422)["code"] == "too_many_columns"


def test_parquet_that_decodes_big_is_stored_exactly(client: TestClient, settings: Settings) -> None:
    # 100 MB of distinct texts, compressed to a small file without a dictionary.
    rows, chars = 50_000, 2000
    content = compressed_parquet(rows, chars)
    assert len(content) < 5 * MB
    resp, growth = post(client, content, "texts.parquet")
    body = created(resp)
    assert body["num_rows"] == rows
    stored = pq.read_table(dataset_dir(settings, body["id"]) / "data.parquet")
    original = pq.read_table(pa.BufferReader(content))
    assert stored["text"].to_pylist() == original["text"].to_pylist()
    assert stored["label"].to_pylist() == original["label"].to_pylist()
    source = dataset_dir(settings, body["id"]) / "source"
    assert hashlib.sha256(source.read_bytes()).hexdigest() == body["sha256"]
    assert growth < RSS_GROWTH_LIMIT, growth / MB


def test_csv_past_the_memory_budget_costs_only_the_parser(client: TestClient, app: FastAPI) -> None:
    # Short distinct cells: each 10-byte line becomes several objects in the parser, far past
    # the budget (a file that only just fits can leave a parser crawling at its limit instead).
    configure(app, upload_parse_memory_bytes=64 * MB)
    resp, growth = post(client, many_rows_csv(1_000_000), "rows.csv")
    err = error(resp, 413)
    assert err["code"] == "parse_memory"
    assert growth < RSS_GROWTH_LIMIT, growth / MB


def test_dictionary_pages_count_towards_the_decoded_size(client: TestClient, app: FastAPI) -> None:
    # 1,000 distinct 100-character texts, each once: expanded they take ~108 KB, and their
    # dictionary as much again while both are in memory.
    table = pa.table({"text": [f"{i:04d}" + "z" * 96 for i in range(1000)], "label": ["x"] * 1000})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, use_dictionary=True)
    configure(app, max_decoded_bytes=160_000)
    err = error(upload(client, sink.getvalue().to_pybytes(), "texts.parquet"), 413)
    assert err["code"] == "decoded_too_large"
    configure(app, max_decoded_bytes=300_000)
    created(upload(client, sink.getvalue().to_pybytes(), "texts.parquet"))
