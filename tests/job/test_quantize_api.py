"""Submitting a quantize job (`method: {"type": "quantize"}`): what it is given and what is refused.

Parents here are rows with stand-in directories (submission reads no weights); quantize jobs run
for real in tests/worker/test_quantize.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.db.models import Job, JobStatus, Model, new_id
from app.job.schemas import Hyperparameters, JobSpec
from tests.job.test_jobs_api import BASE, ROWS, upload

QUANTIZE = {"type": "quantize", "scheme": "int8_dynamic"}


@pytest.fixture
def train_id(client: TestClient) -> str:
    return upload(client, ROWS)


@pytest.fixture
def register(app: FastAPI, migrated: Any, train_id: str):  # type: ignore[no-untyped-def]
    """A registered model trained on `train_id` (row and stand-in files); returns its id."""

    def add(
        *,
        validation: str | None = None,
        spec: dict[str, Any] | None = None,
        artifact: str = "full",
        parent: str | None = None,
    ) -> str:
        model_id = new_id("mdl")
        if spec is None:
            hp = Hyperparameters(validation_split=0.25)
            spec = JobSpec(method={"type": "full"}, hyperparameters=hp, seed=11).model_dump(  # type: ignore[arg-type]
                mode="json"
            )
        with app.state.sessionmaker() as session:
            job = Job(
                id=new_id("job"),
                tenant_id="default",
                task="classification",
                base_model=BASE,
                train_dataset_id=train_id,
                validation_dataset_id=validation,
                spec=spec,
                status=JobStatus.SUCCEEDED,
            )
            session.add(job)
            session.flush()
            session.add(
                Model(
                    id=model_id,
                    tenant_id="default",
                    task="classification",
                    base_model=f"model:{parent}" if parent else BASE,
                    method="quantize" if parent else "full",
                    label_names=["neg", "pos"],
                    job_id=job.id,
                    train_dataset_id=train_id,
                    validation_dataset_id=validation,
                    storage_path=f"models/{model_id}",
                    artifact=artifact,
                    parent_model_id=parent,
                )
            )
            session.commit()
        path = migrated.data_dir / "models" / model_id
        path.mkdir(parents=True)
        meta = {"model_id": model_id, "label_names": ["neg", "pos"], "base_model": {"id": BASE}}
        (path / "tuneserve.json").write_text(json.dumps(meta))
        (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
        return model_id

    return add


def quantize(client: TestClient, base_model: str, **spec: Any) -> Any:
    body = {"task": "classification", "base_model": base_model, "method": QUANTIZE, **spec}
    return client.post("/v1/jobs", json=body)


def error(resp: Any, field: str) -> str:
    assert resp.status_code == 422, resp.text
    body = resp.json()["error"]
    assert body["code"] == "invalid_input", body
    assert body["details"]["field"] == field, body
    message: str = body["message"]
    return message


def test_a_quantize_job_takes_its_parents_data_seed_and_split(  # type: ignore[no-untyped-def]
    client, queue, register, train_id
) -> None:
    parent = register()
    resp = quantize(client, f"model:{parent}")
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["method"] == QUANTIZE and queue.enqueued == [job["id"]]
    assert job["train_dataset"] == train_id and job["validation_dataset"] is None
    # The parent's seed and validation_split draw its held-out rows again.
    assert job["seed"] == 11 and job["hyperparameters"]["validation_split"] == 0.25
    # The scheme defaults (there is one); the parent's train set may be named, and defaults too.
    same = quantize(
        client,
        f"model:{parent}",
        method={"type": "quantize"},
        train_dataset=train_id,
        hyperparameters={"epochs": 3},
        seed=42,
    )
    assert same.status_code == 201, same.text

    # A parent evaluated on a validation dataset: the job evaluates on it too.
    val = upload(client, [("fine", "pos"), ("meh", "neg")])
    given = quantize(client, f"model:{register(validation=val)}").json()
    assert given["validation_dataset"] == val
    # Or on another validation dataset the job names (with the parent's labels only).
    other = upload(client, [("lovely", "pos"), ("dull", "neg")])
    named = quantize(client, f"model:{parent}", validation_dataset=other).json()
    assert named["validation_dataset"] == other
    odd = upload(client, [("lovely", "pos"), ("so so", "meh")])
    refused = quantize(client, f"model:{parent}", validation_dataset=odd)
    assert "meh" in error(refused, "validation_dataset")


def test_unknown_scheme_is_refused(client, register) -> None:  # type: ignore[no-untyped-def]
    resp = quantize(client, f"model:{register()}", method={"type": "quantize", "scheme": "int4"})
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_input" and "scheme" in err["message"]
    assert "int8_dynamic" in err["message"]


def test_quantize_needs_a_registered_model(client, train_id) -> None:  # type: ignore[no-untyped-def]
    message = error(quantize(client, BASE), "base_model")
    assert "quantize needs base_model model:<id>" in message
    message = error(quantize(client, "model:mdl_0000000000000000"), "base_model")
    assert "mdl_0000000000000000" in message


def test_a_quantized_model_is_neither_quantized_again_nor_trained(  # type: ignore[no-untyped-def]
    client, register, train_id
) -> None:
    parent = register()
    int8 = register(artifact="int8_dynamic", parent=parent)
    message = error(quantize(client, f"model:{int8}"), "base_model")
    assert "int8_dynamic" in message and f"model:{parent}" in message
    train = client.post(
        "/v1/jobs",
        json={"task": "classification", "base_model": f"model:{int8}", "train_dataset": train_id},
    )
    assert f"model:{parent}" in error(train, "base_model")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hyperparameters": {"epochs": 1}}, "hyperparameters.epochs"),
        ({"hyperparameters": {"max_length": 64}}, "hyperparameters.max_length"),
        ({"task_options": {"anything": 1}}, "task_options"),
        ({"seed": 7}, "seed"),
    ],
)
def test_training_fields_are_refused_by_name(client, register, spec, field) -> None:  # type: ignore[no-untyped-def]
    message = error(quantize(client, f"model:{register()}", **spec), field)
    assert "quantize" in message


def test_train_dataset_is_the_parents(client, register) -> None:  # type: ignore[no-untyped-def]
    other = upload(client, ROWS[:6] + ROWS[-6:])
    message = error(quantize(client, f"model:{register()}", train_dataset=other), "train_dataset")
    assert "leave it out" in message
    # A training method still needs one.
    resp = client.post("/v1/jobs", json={"task": "classification", "base_model": BASE})
    assert "train_dataset" in error(resp, "train_dataset")


def test_held_out_rows_that_cannot_be_drawn_again_need_a_validation_dataset(  # type: ignore[no-untyped-def]
    client, register
) -> None:
    parent = register(spec={})  # its job's spec (seed, split) is not on record
    message = error(quantize(client, f"model:{parent}"), "validation_dataset")
    assert "cannot be drawn again" in message
    val = upload(client, [("fine", "pos"), ("meh", "neg")])
    assert quantize(client, f"model:{parent}", validation_dataset=val).status_code == 201
