"""The shared real files upload unchanged: SST-2 TSV (quotes in text), banking77 CSV (77 labels);
the formula filter keeps the text of every shared corpus."""

from __future__ import annotations

import csv
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from app.core.config import Settings
from app.dataset.formulas import formula_rows
from tests.conftest import shared_data
from tests.dataset.real_text import corpora
from tests.dataset.util import created, dataset_dir, error, leftovers, upload


def read_reference(path: Path, *, delimiter: str) -> list[tuple[str, str]]:
    """The rows as Python's csv module reads them (no quoting for TSV), header dropped."""
    with path.open(newline="", encoding="utf-8") as f:
        if delimiter == "\t":
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        else:
            rows = list(csv.reader(f))
    return [(r[0], r[1]) for r in rows[1:]]


def stored(settings: Settings, dataset_id: str) -> list[tuple[str, str]]:
    table = pq.read_table(dataset_dir(settings, dataset_id) / "data.parquet")
    return list(zip(table["text"].to_pylist(), table["label"].to_pylist(), strict=True))


def test_sst2_dev_tsv(client, settings):  # type: ignore[no-untyped-def]
    path = shared_data("sst2", "dev.tsv")
    body = created(upload(client, path.read_bytes(), "dev.tsv"))
    assert body["format"] == "tsv"
    assert body["num_rows"] == 872
    assert body["label_names"] == ["0", "1"]
    assert sum(body["label_counts"].values()) == 872
    assert stored(settings, body["id"]) == read_reference(path, delimiter="\t")


def test_sst2_full_train_tsv(client, settings):  # type: ignore[no-untyped-def]
    path = shared_data("sst2", "train.tsv")
    content = path.read_bytes()
    start = time.perf_counter()
    body = created(upload(client, content, "train.tsv"))
    elapsed = time.perf_counter() - start
    print(f"SST-2 train.tsv ({len(content)} bytes) uploaded in {elapsed:.2f} s")
    assert body["num_rows"] == 67_349
    assert body["label_counts"] == {"0": 29_780, "1": 37_569}
    assert stored(settings, body["id"]) == read_reference(path, delimiter="\t")


def test_banking77_train_and_test(client, settings):  # type: ignore[no-untyped-def]
    for name, rows in (("train.csv", 10_003), ("test.csv", 3_080)):
        path = shared_data("banking77", name)
        body = created(upload(client, path.read_bytes(), name))
        assert body["format"] == "csv"
        assert body["num_rows"] == rows
        assert len(body["label_names"]) == 77
        assert body["column_mapping"] == {"category": "label"}
        assert stored(settings, body["id"]) == read_reference(path, delimiter=",")


def test_banking77_categories_json_has_no_rows(client, settings):  # type: ignore[no-untyped-def]
    path = shared_data("banking77", "categories.json")
    err = error(upload(client, path.read_bytes(), "categories.json"), 422)
    assert "list of objects" in err["message"]
    assert "item 1 is a string" in err["message"]
    assert leftovers(settings) == []


def test_formula_filter_keeps_real_text() -> None:
    # Every text cell of the shared corpora (sentences and, for NER, single tokens too): the
    # filter refuses only tokens that a spreadsheet would indeed read as a formula ("=D" gives
    # #NAME?, "=1,000" and "=(" a formula error), the same seven the rule before Unicode
    # spaces and full-width signs were added refused; emoticons such as "=)" and "=/" pass.
    refused: Counter[str] = Counter()
    sizes = {}
    for name, cells in corpora().items():
        sizes[name] = len(cells)
        refused.update(cells[i] for i in formula_rows(pa.array(cells, pa.string())).to_pylist())
    assert sum(sizes.values()) > 580_000
    assert refused == {"=D": 5, "=(": 1, "=1,000": 1}
