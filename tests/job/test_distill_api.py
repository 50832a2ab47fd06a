"""Submitting a distill job: what is accepted, and every bad spec refused with a 422 naming its
field. The teachers here are registered rows with stand-in files (a config of 2 layers, the tiny
tokenizer): submission reads no weights. Training is in tests/worker/test_distill.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.ml.methods.full import Full
from tests.job.test_jobs_api import ROWS, upload
from tests.job.test_lineage_api import error, register  # noqa: F401  (a fixture)
from tests.tinymodel import build_tiny_model_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


@pytest.fixture(scope="module")
def students_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Local base models: tiny-bert (the teachers' vocabulary) and tiny-other (one more token)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("students")
    build_tiny_model_dir(root / "tiny-bert")
    other = build_tiny_model_dir(root / "tiny-other")
    tokenizer = AutoTokenizer.from_pretrained(str(other))
    tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(str(other))
    return root


@pytest.fixture
def teacher(migrated: Any, register: Any, students_dir: Path) -> str:  # noqa: F811
    """A registered classification teacher of 2 layers, with the tiny tokenizer."""
    migrated.local_models_dir = students_dir
    model_id: str = register()
    for name in TOKENIZER_FILES:
        source = students_dir / "tiny-bert" / name
        if source.exists():
            shutil.copy(source, migrated.data_dir / "models" / model_id / name)
    return model_id


def submit(client: TestClient, base_model: str, method: dict[str, Any], **spec: Any) -> Any:
    body = {
        "task": "classification",
        "base_model": base_model,
        "train_dataset": upload(client, ROWS),
        "method": {"type": "distill", **method},
        **spec,
    }
    return client.post("/v1/jobs", json=body)


def test_a_distill_job_is_accepted_and_shows_its_teacher(
    client: TestClient, queue: Any, teacher: str
) -> None:
    resp = submit(client, f"model:{teacher}", {"student": {"layers": 1}})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["base_model"] == f"model:{teacher}" and queue.enqueued == [job["id"]]
    assert job["method"] == {
        "type": "distill",
        "teacher": f"model:{teacher}",
        "student": {"layers": 1},
        "temperature": 2.0,
        "alpha": 0.5,
        "hidden_weight": 0.0,
        "transfer_dataset": None,
    }
    # Every weight of the student trains: full fine-tuning's defaults.
    assert job["hyperparameters"]["learning_rate"] == Full.default_learning_rate
    # The teacher may be repeated as method.teacher; a base model of its vocabulary is a student.
    again = submit(
        client,
        f"model:{teacher}",
        {"teacher": f"model:{teacher}", "student": "local/tiny-bert", "temperature": 4},
    )
    assert again.status_code == 201, again.text
    assert again.json()["method"]["student"] == "local/tiny-bert"
    # Or the layers kept by index, shown as given.
    named = submit(client, f"model:{teacher}", {"student": {"layers": [0]}})
    assert named.status_code == 201, named.text
    assert named.json()["method"]["student"] == {"layers": [0]}


@pytest.mark.parametrize(
    ("method", "field", "words"),
    [
        ({"student": {"layers": 1}, "alpha": 1.5}, "method.alpha", "1"),
        ({"student": {"layers": 1}, "alpha": -0.1}, "method.alpha", "0"),
        ({"student": {"layers": 1}, "temperature": 0}, "method.temperature", "0"),
        ({"student": {"layers": 1}, "temperature": -2}, "method.temperature", "0"),
        ({"student": {"layers": 1}, "hidden_weight": -1}, "method.hidden_weight", "0"),
        ({"student": "local/tiny-bert", "hidden_weight": 1}, "method.hidden_weight", "layers"),
        ({"student": {"layers": 0}}, "method.student.layers", "1"),
        ({"student": {"layers": 2}}, "method.student.layers", "fewer than the teacher's 2"),
        ({"student": {"layers": 7}}, "method.student.layers", "fewer than the teacher's 2"),
        ({"student": {"layers": [0, 1]}}, "method.student.layers", "(2 named) must be fewer"),
        ({"student": {"layers": [2]}}, "method.student.layers", "no layer 2"),
        ({"student": {"layers": [1, 0]}}, "method.student.layers", "0 follows 1"),
        ({"student": {"layers": [0, 0]}}, "method.student.layers", "distinct"),
        ({"student": {"layers": []}}, "method.student.layers", "1"),
        ({"student": {"layers": [-1]}}, "method.student.layers[0]", "0 to 999; got -1"),
        ({"student": {"layers": 1, "heads": 2}}, "method.student.heads", "heads"),
        ({}, "method.student", "student"),
        ({"student": ""}, "method.student", "student"),
        ({"student": "local/nope"}, "method.student", "local/nope"),
        ({"student": "local/tiny-other"}, "method.student", "vocabulary"),
        ({"student": "model:mdl_0000000000000000"}, "method.student", "registered model"),
        (
            {"student": {"layers": 1}, "teacher": "model:mdl_0000000000000000"},
            "method.teacher",
            "not the job's base_model",
        ),
    ],
)
def test_bad_options_are_refused_naming_the_field(
    client: TestClient, teacher: str, method: dict[str, Any], field: str, words: str
) -> None:
    message = error(submit(client, f"model:{teacher}", method), field)
    assert words in message, message


def test_a_teacher_must_be_a_registered_model_of_the_task(
    client: TestClient,
    migrated: Any,
    register: Any,  # noqa: F811
    teacher: str,
) -> None:
    layers = {"student": {"layers": 1}}
    missing = error(submit(client, "model:mdl_0000000000000000", layers), "base_model")
    assert "unknown teacher" in missing and "mdl_0000000000000000" in missing
    base = error(submit(client, "sentence-transformers/all-MiniLM-L6-v2", layers), "base_model")
    assert "registered model" in base
    ner = register(task="ner", labels=("B-PER", "I-PER", "O"))
    other = error(submit(client, f"model:{ner}", layers), "base_model")
    assert "'ner' model" in other and "'classification'" in other
    # Named as method.teacher too, the field named is the one the client wrote.
    named = error(
        submit(client, f"model:{ner}", {**layers, "teacher": f"model:{ner}"}), "method.teacher"
    )
    assert "'ner' model" in named
    # Another tenant's model is a missing one.
    from tests.conftest import create_api_key

    create_api_key(migrated, tenant="b")
    theirs = register(tenant="b")
    hidden = error(submit(client, f"model:{theirs}", layers), "base_model")
    assert hidden.replace(theirs, "ID") == missing.replace("mdl_0000000000000000", "ID")
    # A teacher whose lineage cannot be rebuilt (a prefix is not merged into weights).
    prefix = register(adapter="PREFIX_TUNING")
    assert "PREFIX_TUNING" in error(submit(client, f"model:{prefix}", layers), "base_model")


def test_a_student_needs_a_train_dataset(client: TestClient, teacher: str) -> None:
    body = {
        "task": "classification",
        "base_model": f"model:{teacher}",
        "method": {"type": "distill", "student": {"layers": 1}},
    }
    assert "required" in error(client.post("/v1/jobs", json=body), "train_dataset")


def test_a_transfer_set_is_a_dataset_of_the_task_with_the_train_sets_columns(
    client: TestClient, teacher: str
) -> None:
    train = upload(client, ROWS)
    unlabelled = [(f"some text {i}", "?") for i in range(5)]  # placeholder labels: not read
    transfer = upload(client, unlabelled)

    def with_transfer(dataset: str, **spec: Any) -> Any:
        method = {"student": {"layers": 1}, "transfer_dataset": dataset}
        return submit(client, f"model:{teacher}", method, train_dataset=train, **spec)

    resp = with_transfer(transfer)
    assert resp.status_code == 201, resp.text
    assert resp.json()["method"]["transfer_dataset"] == transfer
    field = "method.transfer_dataset"
    assert "does not exist" in error(with_transfer("ds_0000000000000000"), field)
    ner = client.post(
        "/v1/datasets",
        data={"task": "ner"},
        files={"file": ("rows.conll", b"Paris B-LOC\nis O\n\nBob B-PER\n", "text/plain")},
    )
    assert ner.status_code == 201, ner.text
    assert "is a 'ner' dataset" in error(with_transfer(ner.json()["id"]), field)
    # Not what the student is evaluated on: the validation set itself, or the same file again.
    validation = upload(client, unlabelled)
    assert "is the job's validation dataset" in error(
        with_transfer(validation, validation_dataset=validation), field
    )
    assert "holds the same file as the job's validation dataset" in error(
        with_transfer(transfer, validation_dataset=validation), field
    )
    # The train set's columns: here a second text segment the train set lacks.
    pairs = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": ("pairs.csv", b"text,text_pair,label\na,b,x\nc,d,x\n", "text/csv")},
    )
    assert pairs.status_code == 201, pairs.text
    assert "a transfer set has the train set's columns" in error(
        with_transfer(pairs.json()["id"]), field
    )


def test_a_transfer_set_a_queued_job_names_is_not_deleted(client: TestClient, teacher: str) -> None:
    transfer = upload(client, [(f"some text {i}", "?") for i in range(5)])
    method = {"student": {"layers": 1}, "transfer_dataset": transfer}
    job = submit(client, f"model:{teacher}", method)
    assert job.status_code == 201, job.text
    resp = client.delete(f"/v1/datasets/{transfer}")
    assert resp.status_code == 409, resp.text
    assert job.json()["id"] in resp.json()["error"]["message"]
    # Once the job is over, nothing holds it.
    assert client.post(f"/v1/jobs/{job.json()['id']}/cancel").status_code == 200
    assert client.delete(f"/v1/datasets/{transfer}").status_code == 204
