"""Submitting a job with `base_model: "model:<id>"`: what is refused (422) and why.

The registered parents here are rows with small stand-in directories (metadata, a config, an
adapter config): submission reads no weights. Training from real parents is in
tests/worker/test_lineage.py and tests/predict/test_lineage.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.db.models import Job, JobStatus, Model, new_id
from tests.conftest import create_api_key
from tests.job.test_jobs_api import BASE, ROWS, upload


@pytest.fixture
def register(app: FastAPI, migrated: Any, client: TestClient):  # type: ignore[no-untyped-def]
    """Register a model (row and stand-in files) without training it; returns its id."""
    dataset = upload(client, ROWS)

    def add(
        *,
        tenant: str = "default",
        task: str = "classification",
        labels: tuple[str, ...] = ("neg", "pos"),
        adapter: str | None = None,
        parent: str | None = None,
        files: bool = True,
    ) -> str:
        model_id = new_id("mdl")
        storage = f"models/{model_id}"
        with app.state.sessionmaker() as session:
            job = Job(
                id=new_id("job"),
                tenant_id=tenant,
                task=task,
                base_model=BASE,
                train_dataset_id=dataset,
                spec={},
                status=JobStatus.SUCCEEDED,
            )
            session.add(job)
            session.flush()
            session.add(
                Model(
                    id=model_id,
                    tenant_id=tenant,
                    task=task,
                    base_model=f"model:{parent}" if parent else BASE,
                    method="lora" if adapter else "full",
                    label_names=list(labels),
                    job_id=job.id,
                    train_dataset_id=dataset,
                    storage_path=storage,
                    artifact="adapter" if adapter else "full",
                    parent_model_id=parent,
                )
            )
            session.commit()
        if not files:
            return model_id
        path = migrated.data_dir / storage
        path.mkdir(parents=True)
        base: dict[str, Any] = {"id": BASE, "root": BASE}
        if parent:
            base = {"id": f"model:{parent}", "root": BASE}
            base["parent"] = {"id": parent, "storage_path": f"models/{parent}"}
        meta = {"model_id": model_id, "label_names": list(labels), "base_model": base}
        (path / "tuneserve.json").write_text(json.dumps(meta))
        if adapter:
            (path / "adapter_config.json").write_text(json.dumps({"peft_type": adapter}))
        else:
            (path / "config.json").write_text(
                json.dumps({"model_type": "bert", "num_hidden_layers": 2})
            )
        return model_id

    return add


def submit(client: TestClient, base_model: str, train: str, **spec: Any) -> Any:
    body = {"task": "classification", "base_model": base_model, "train_dataset": train, **spec}
    return client.post("/v1/jobs", json=body)


def error(resp: Any, field: str) -> str:
    assert resp.status_code == 422, resp.text
    body = resp.json()["error"]
    assert body["code"] == "invalid_input" and body["details"]["field"] == field, body
    message: str = body["message"]
    return message


def test_a_registered_model_is_accepted_as_given(client, queue, register) -> None:  # type: ignore[no-untyped-def]
    parent = register()
    train = upload(client, ROWS[:4] + ROWS[-4:])
    resp = submit(client, f"model:{parent}", train, method={"type": "lora"})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["base_model"] == f"model:{parent}" and queue.enqueued == [job["id"]]
    # A validation set with the parent's labels is fine too.
    val = upload(client, [("fine", "pos"), ("meh", "neg")])
    ok = submit(client, f"model:{parent}", train, validation_dataset=val)
    assert ok.status_code == 201, ok.text


def test_unknown_and_other_tenants_models_are_refused_alike(  # type: ignore[no-untyped-def]
    client, migrated, register, train_id
) -> None:
    create_api_key(migrated, tenant="b")  # makes tenant b
    theirs = register(tenant="b")
    other = error(submit(client, f"model:{theirs}", train_id), "base_model")
    missing = error(submit(client, "model:mdl_0000000000000000", train_id), "base_model")
    assert other.replace(theirs, "ID") == missing.replace("mdl_0000000000000000", "ID")
    assert "base_model" in missing
    empty = error(submit(client, "model:", train_id), "base_model")
    assert "model:" in empty


def test_task_must_match_the_parents(client, register, train_id) -> None:  # type: ignore[no-untyped-def]
    ner = register(task="ner", labels=("B-PER", "I-PER", "O"))
    message = error(submit(client, f"model:{ner}", train_id), "base_model")
    assert "'ner' model" in message and "'classification'" in message


def test_labels_must_be_the_parents(client, register) -> None:  # type: ignore[no-untyped-def]
    parent = register(labels=("neg", "pos"))
    three = upload(client, [*ROWS, ("so so", "meh"), ("fine i guess", "meh")])
    message = error(submit(client, f"model:{parent}", three), "train_dataset")
    assert three in message and "['meh']" in message and f"model:{parent}" in message


def test_parent_files_gone_method_and_depth_are_checked(  # type: ignore[no-untyped-def]
    client, register, train_id, monkeypatch
) -> None:
    gone = register(files=False)
    message = error(submit(client, f"model:{gone}", train_id), "base_model")
    assert f"model '{gone}' has no files in the store" in message

    parent = register()  # its config says 2 layers
    top = submit(
        client, f"model:{parent}", train_id, method={"type": "full", "train_top_layers": 3}
    )
    assert "2 layers" in error(top, "method.train_top_layers")

    prefix = register(adapter="PREFIX_TUNING")
    message = error(submit(client, f"model:{prefix}", train_id), "base_model")
    assert "PREFIX_TUNING" in message

    # Three adapters in a row, each continuing the one before.
    first = register(adapter="LORA")
    second = register(adapter="LORA", parent=first)
    third = register(adapter="LORA", parent=second)
    assert submit(client, f"model:{third}", train_id).status_code == 201
    monkeypatch.setattr("app.ml.lineage.MAX_LINEAGE_DEPTH", 2)
    assert submit(client, f"model:{second}", train_id).status_code == 201
    message = error(submit(client, f"model:{third}", train_id), "base_model")
    assert "more than 2 adapters in a row" in message


@pytest.fixture
def train_id(client: TestClient) -> str:
    return upload(client, ROWS)
