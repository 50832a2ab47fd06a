"""A validation set without some of the train set's classes is accepted, and said so: a warning
on the job at submission, a warning event when training starts, and metrics that name them."""

from __future__ import annotations

import io
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.db.models import JobStatus
from app.ml.tasks.ner import NerOptions, NerTask
from tests.tinymodel import NEGATIVE, NEUTRAL, POSITIVE
from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    TINY_MODEL_ID,
    tiny_models_dir,
    train_settings,
)
from worker.jobs import run_job

# Pinned and small: these tests are about what the job says, not how well it learns.
HYPERPARAMETERS = {
    "epochs": 1,
    "batch_size": 8,
    "max_length": 16,
    "learning_rate": 1e-2,
    "checkpoint_every": "no",
}
WORDS = {"neg": NEGATIVE, "pos": POSITIVE, "sports": NEUTRAL}


def rows(counts: dict[str, int], *, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (" ".join(rng.choice(WORDS[label]) for _ in range(3)), label)
        for label, n in counts.items()
        for _ in range(n)
    ]


def upload(client: TestClient, content: str, filename: str, task: str) -> str:
    resp = client.post(
        "/v1/datasets",
        data={"task": task},
        files={"file": (filename, io.BytesIO(content.encode()))},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def upload_rows(client: TestClient, data: list[tuple[str, str]]) -> str:
    body = "text,label\n" + "".join(f"{text},{label}\n" for text, label in data)
    return upload(client, body, "rows.csv", "classification")


def submit(client: TestClient, **spec: Any) -> dict[str, Any]:
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": TINY_MODEL_ID,
            "hyperparameters": HYPERPARAMETERS,
            **spec,
        },
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    return data


@pytest.fixture
def trainer(train_settings, client):  # type: ignore[no-untyped-def]  # noqa: F811
    """The real app on settings that list the tiny model (train_settings first: it sets them)."""
    return client


def test_validation_without_a_class_warns_at_submission_in_events_and_metrics(  # type: ignore[no-untyped-def]
    train_settings,  # noqa: F811
    trainer: TestClient,
) -> None:
    train = upload_rows(trainer, rows({"neg": 8, "pos": 8, "sports": 8}))
    validation = upload_rows(trainer, rows({"neg": 3, "pos": 3}, seed=1))
    expected = (
        f"validation dataset {validation} has no rows of class(es) `sports`; macro-F1 is "
        "computed over the classes it has"
    )

    job = submit(trainer, train_dataset=train, validation_dataset=validation)
    assert job["warnings"] == [expected]
    assert trainer.get(f"/v1/jobs/{job['id']}").json()["warnings"] == [expected]

    assert run_job(train_settings, job["id"]) == JobStatus.SUCCEEDED

    warnings = [e for e in events(trainer, job["id"]) if e["type"] == "warning"]
    # (6 validation rows are also too few for a verdict against the baseline: a warning of its own.)
    assert [(w["message"], w["data"]["absent_labels"]) for w in warnings[:1]] == [
        (expected, ["sports"])
    ]
    assert [w["data"]["kind"] for w in warnings[1:]] == ["quality"]
    metrics = trainer.get(f"/v1/jobs/{job['id']}").json()["metrics"]
    assert metrics["absent_labels"] == ["sports"]
    assert metrics["macro_f1_labels"] == ["neg", "pos"]
    assert metrics["per_class"]["sports"]["support"] == 0


def test_a_held_out_split_without_a_class_is_checked_by_the_worker(  # type: ignore[no-untyped-def]
    train_settings,  # noqa: F811
    trainer: TestClient,
) -> None:
    # 2 held-out rows (10% of 20) cannot hold 3 classes: the split lacks at least one.
    train = upload_rows(trainer, rows({"neg": 9, "pos": 9, "sports": 2}))
    job = submit(trainer, train_dataset=train)
    assert job["warnings"] == []  # nothing is held out yet

    assert run_job(train_settings, job["id"]) == JobStatus.SUCCEEDED

    metrics = trainer.get(f"/v1/jobs/{job['id']}").json()["metrics"]
    absent = metrics["absent_labels"]
    assert absent and set(absent) <= {"neg", "pos", "sports"}
    assert sorted(metrics["macro_f1_labels"] + absent) == ["neg", "pos", "sports"]
    (warning,) = [
        e
        for e in events(trainer, job["id"])
        if e["type"] == "warning" and e["data"].get("absent_labels")
    ]
    assert (
        f"the validation split held out of train dataset {train} has no rows"
        in (warning["message"])
    )
    assert warning["data"]["absent_labels"] == absent


def test_a_validation_set_with_every_class_gets_no_warning(client: TestClient) -> None:
    train = upload_rows(client, rows({"neg": 4, "pos": 4}))
    validation = upload_rows(client, rows({"neg": 1, "pos": 1}, seed=1))
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "train_dataset": train,
            "validation_dataset": validation,
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["warnings"] == []


def conll(sentences: list[list[tuple[str, str]]]) -> str:
    return "\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n"


def test_ner_validation_without_an_entity_type_warns_at_submission(client: TestClient) -> None:
    person = [("Anna", "B-PER"), ("Smith", "I-PER"), ("ran", "O")]
    place = [("in", "O"), ("Paris", "B-LOC")]
    train = upload(client, conll([person, place] * 3), "train.conll", "ner")
    validation = upload(client, conll([person]), "dev.conll", "ner")
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "ner",
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "train_dataset": train,
            "validation_dataset": validation,
        },
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["warnings"] == [
        f"validation dataset {validation} has no entities of type(s) `LOC`; precision, recall "
        "and F1 cover only the types it has"
    ]


def test_ner_metrics_name_the_entity_types_without_gold_entities() -> None:
    import datasets

    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    feature_labels = [[-100, 3, 0, -100]]
    compute = NerTask().compute_metrics(
        labels,
        options=NerOptions(),
        eval_rows=datasets.Dataset.from_dict(
            {"tokens": [["Anna", "ran"]], "tags": [["B-PER", "O"]]}
        ),
        eval_features=datasets.Dataset.from_dict(
            {"labels": feature_labels, "word_index": [[-1, 0, 1, -1]]}
        ),
    )
    logits = np.zeros((1, 4, len(labels)))
    logits[0, 1, 3] = logits[0, 2, 0] = 1.0  # Anna/B-PER ran/O
    metrics = compute(SimpleNamespace(predictions=logits, label_ids=np.array(feature_labels)))
    assert metrics["f1"] == 1.0
    assert metrics["absent_labels"] == ["LOC"]
