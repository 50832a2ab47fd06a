"""NER through the real API: CoNLL, JSONL/JSON/Parquet and span uploads, errors with lines, the
real CoNLL-2003 and WNUT-17 files unchanged, and job submission checks."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import shared_data
from tests.dataset.util import created, dataset_dir, error, leftovers, upload

BASE = "sentence-transformers/all-MiniLM-L6-v2"

CONLL = b"""-DOCSTART- -X- O O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER
"""
ROWS = [
    {"tokens": ["EU", "rejects", "German", "call"], "tags": ["B-ORG", "O", "B-MISC", "O"]},
    {"tokens": ["Peter", "Blackburn"], "tags": ["B-PER", "I-PER"]},
]


def ner_upload(client: TestClient, content: bytes, filename: str | None, **fields: object):  # type: ignore[no-untyped-def]
    return upload(client, content, filename, task="ner", **fields)


def stored(settings: Settings, dataset_id: str) -> list[dict[str, list[str]]]:
    table = pq.read_table(dataset_dir(settings, dataset_id) / "data.parquet")
    return table.to_pylist()  # type: ignore[no-any-return]


def jsonl(rows: list[dict[str, object]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_conll_upload_is_detected_and_converted(client, settings):  # type: ignore[no-untyped-def]
    for filename in ("eng.train", None, "rows.txt"):
        body = created(ner_upload(client, CONLL, filename))
        assert body["format"] == "conll" and body["task"] == "ner"
        assert body["num_rows"] == 2 and body["columns"] == ["tokens", "tags"]
        assert body["label_names"] == ["O", "B-MISC", "B-ORG", "B-PER", "I-PER"]
        assert body["label_counts"] == {"O": 2, "B-MISC": 1, "B-ORG": 1, "B-PER": 1, "I-PER": 1}
        assert stored(settings, body["id"]) == ROWS
        assert (dataset_dir(settings, body["id"]) / "source").read_bytes() == CONLL


def test_token_rows_in_jsonl_json_and_parquet(client, settings):  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ROWS), buf)
    for filename, content in (
        ("rows.jsonl", jsonl(ROWS)),  # type: ignore[arg-type]
        ("rows.json", json.dumps(ROWS).encode()),
        ("rows.parquet", buf.getvalue()),
    ):
        body = created(ner_upload(client, content, filename))
        assert body["num_rows"] == 2 and stored(settings, body["id"]) == ROWS


def test_aliased_columns(client, settings):  # type: ignore[no-untyped-def]
    rows = [{"words": r["tokens"], "ner_tags": r["tags"]} for r in ROWS]
    body = created(ner_upload(client, jsonl(rows), "rows.jsonl"))  # type: ignore[arg-type]
    assert body["column_mapping"] == {"words": "tokens", "ner_tags": "tags"}
    assert stored(settings, body["id"]) == ROWS


def test_span_annotations_become_tokens_and_tags(client, settings):  # type: ignore[no-untyped-def]
    rows = [
        {"text": "Peter Blackburn met the EU.", "entities": [
            {"start": 0, "end": 15, "label": "PER"}, {"start": 24, "end": 26, "label": "ORG"}
        ]},
        {"text": "Nothing here", "entities": []},
    ]  # fmt: skip
    body = created(ner_upload(client, jsonl(rows), "spans.jsonl"))  # type: ignore[arg-type]
    assert body["format"] == "jsonl" and body["num_rows"] == 2
    assert stored(settings, body["id"]) == [
        {
            "tokens": ["Peter", "Blackburn", "met", "the", "EU", "."],
            "tags": ["B-PER", "I-PER", "O", "O", "B-ORG", "O"],
        },
        {"tokens": ["Nothing", "here"], "tags": ["O", "O"]},
    ]


def test_span_errors_name_row_and_line(client, settings):  # type: ignore[no-untyped-def]
    rows = [
        {"text": "fine", "entities": []},
        {"text": "Peter Blackburn", "entities": [
            {"start": 0, "end": 9, "label": "PER"}, {"start": 6, "end": 15, "label": "PER"}
        ]},
    ]  # fmt: skip
    content = b"\n" + jsonl(rows)  # a blank first line: row 2 sits on line 3
    err = error(ner_upload(client, content, "spans.jsonl"), 422)
    assert err["details"]["row"] == 2 and err["details"]["line"] == 3
    assert "overlap" in err["message"] and "(line 3 of the file)" in err["message"]
    assert leftovers(settings) == []


@pytest.mark.parametrize(
    ("content", "line", "needle"),
    [
        # Parse errors name the exact line.
        (b"EU B-ORG\nrejects O\n\nPeter\n", 4, "expected a token and its tag"),
        # Row errors name the first line of the sentence.
        (b"EU B-ORG\n\nPeter I-PER\nBlackburn S-PER\n", 3, "IOBES/BILOU"),
        (b"EU B-ORG\n\n\nPeter PER\n", 4, "tags are O, B-<type> or I-<type>"),
    ],
)
def test_conll_errors_name_the_line(client, settings, content, line, needle):  # type: ignore[no-untyped-def]
    err = error(ner_upload(client, content, "bad.conll"), 422)
    assert err["details"]["line"] == line, err
    assert needle in err["message"]
    assert leftovers(settings) == []


def test_strict_refuses_stray_inside_but_converts_iob1(client):  # type: ignore[no-untyped-def]
    mixed = b"EU B-ORG\nrejects O\n\nPeter O\nBlackburn I-PER\n"
    body = created(ner_upload(client, mixed, "mixed.conll"))
    assert body["label_names"] == ["O", "B-ORG", "B-PER"]
    err = error(ner_upload(client, mixed, "mixed.conll", strict="true"), 422)
    assert err["details"]["row"] == 2 and err["details"]["line"] == 4
    assert "'I-PER' follows 'O'" in err["message"]
    created(ner_upload(client, CONLL, "iob1.conll", strict="true"))


def test_format_field_and_wrong_task(client):  # type: ignore[no-untyped-def]
    body = created(ner_upload(client, CONLL, "data.txt", format="conll"))
    assert body["format"] == "conll"
    err = error(upload(client, CONLL, "data.txt", format="conll"), 422)
    assert "'ner'" in err["message"]
    err = error(ner_upload(client, jsonl([{"tokens": ["a", "b"], "tags": ["O"]}]), "r.jsonl"), 422)
    assert "2 tokens but 1 tags" in err["message"] and err["details"]["line"] == 1


def test_real_files_upload_unchanged(client, settings):  # type: ignore[no-untyped-def]
    expected = {
        ("conll2003", "eng.train"): (14_041, 203_621, "IOB1"),
        ("conll2003", "eng.testa"): (3_250, 51_362, "IOB1"),
        ("conll2003", "eng.testb"): (3_453, 46_435, "IOB1"),
        ("wnut17", "wnut17train.conll"): (3_394, 62_730, "IOB2"),
    }
    for (folder, name), (sentences, tokens, _) in expected.items():
        content = shared_data(folder, name).read_bytes()
        body = created(ner_upload(client, content, name))
        assert body["format"] == "conll"
        assert body["num_rows"] == sentences, name
        assert sum(body["label_counts"].values()) == tokens
        assert (dataset_dir(settings, body["id"]) / "source").read_bytes() == content
        if folder == "conll2003":
            assert body["label_names"] == [
                "O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER",
            ]  # fmt: skip
        else:
            assert len(body["label_names"]) == 13


def submit(client: TestClient, **spec: object):  # type: ignore[no-untyped-def]
    return client.post("/v1/jobs", json={"task": "ner", "base_model": BASE, **spec})


def test_job_submission_checks(client, queue):  # type: ignore[no-untyped-def]
    train = created(ner_upload(client, CONLL, "train.conll"))["id"]
    loc = created(ner_upload(client, b"Paris B-LOC\nParis I-LOC\n\nEU B-ORG\n", "v.conll"))["id"]
    err = error(submit(client, train_dataset=train, validation_dataset=loc), 422)
    assert err["details"]["tags"] == ["B-LOC", "I-LOC"] and "B-LOC" in err["message"]

    both = {"train_dataset": train, "validation_dataset": train}
    err = error(submit(client, **both, task_options={"label_all_tokens": 3}), 422)
    assert err["details"]["field"] == "task_options.label_all_tokens"
    err = error(submit(client, **both, task_options={"stride": 3}), 422)
    assert err["details"]["field"] == "task_options.stride"

    only_o = created(ner_upload(client, b"a O\n\nb O\n\nc O\n\nd O\n", "o.conll"))["id"]
    err = error(submit(client, train_dataset=only_o), 422)
    assert "no entities" in err["message"]

    resp = submit(client, **both, task_options={"label_all_tokens": True})
    assert resp.status_code == 201, resp.text
    assert resp.json()["task_options"] == {"label_all_tokens": True}
    assert queue.enqueued == [resp.json()["id"]]
    resp = submit(client, **both)
    assert resp.json()["task_options"] == {"label_all_tokens": False}


def test_task_default_hyperparameters(client):  # type: ignore[no-untyped-def]
    train = created(ner_upload(client, CONLL, "train.conll"))["id"]
    both = {"train_dataset": train, "validation_dataset": train}
    hp = submit(client, **both).json()["hyperparameters"]
    assert (hp["batch_size"], hp["learning_rate"]) == (8, 2e-4)
    hp = submit(client, **both, method={"type": "lora"}).json()["hyperparameters"]
    assert (hp["batch_size"], hp["learning_rate"]) == (8, 2e-3)
    hp = submit(client, **both, method={"type": "head_only"}).json()["hyperparameters"]
    assert (hp["batch_size"], hp["learning_rate"]) == (8, 3e-2)
    # One vector per input is classification's: a tagger's head reads every token.
    mean = submit(client, **both, method={"type": "head_only", "pooling": "mean"})
    assert mean.status_code == 422
    assert mean.json()["error"]["details"]["field"] == "method.pooling"
    # What the client gives wins.
    given = {"batch_size": 32, "learning_rate": 5e-5}
    hp = submit(client, **both, hyperparameters=given).json()["hyperparameters"]
    assert (hp["batch_size"], hp["learning_rate"]) == (32, 5e-5)
