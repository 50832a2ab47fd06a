"""Serving continued models: an adapter child is rebuilt from its lineage; a lost parent is a
clear 503, never a 500; and the whole path through the API."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import Unavailable
from app.db.models import Job, JobStatus, Model
from app.predict.predictor import load_predictor
from tests.predict.conftest import upload_rows
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job

TEXTS = ["a great superb film", "awful boring plot", "the story", "good and bad"]
LORA = {"type": "lora", "r": 4, "lora_dropout": 0.0}


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(**kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def _logits(model: Any, tokenizer: Any) -> torch.Tensor:
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits: torch.Tensor = model(**enc).logits
    return logits


def test_lora_child_of_a_lora_parent_serves_like_a_manual_rebuild(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    parent = _train(train_settings, db, add_job, method=LORA, epochs=2, learning_rate=1e-2)
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(24, seed=2)),
        method=LORA,
        epochs=2,
        learning_rate=1e-2,
    )
    assert child.parent_model_id == parent.id and child.artifact == "adapter"
    predictor = load_predictor(train_settings, child)
    assert type(predictor.model).__name__ == "BertForSequenceClassification"

    # By hand: the root base, the parent's adapter merged in, the child's adapter on top.
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    root = AutoModelForSequenceClassification.from_pretrained(
        str(train_settings.local_models_dir / "tiny-bert"), num_labels=2
    )
    data = train_settings.data_dir
    with_parent = PeftModel.from_pretrained(root, str(data / parent.storage_path))
    manual = PeftModel.from_pretrained(
        with_parent.merge_and_unload(), str(data / child.storage_path)
    ).eval()
    expected = _logits(manual, predictor.tokenizer)
    assert torch.allclose(_logits(predictor.model, predictor.tokenizer), expected, atol=1e-5)
    # ...and the child is not its parent: its own adapter changed the answers.
    parent_logits = _logits(load_predictor(train_settings, parent).model, predictor.tokenizer)
    assert not torch.allclose(parent_logits, expected, atol=1e-4)


def test_child_starts_from_the_merged_lora_parent(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    from app.ml.lineage import load_starting_model
    from app.ml.tasks import get_task
    from app.registry.lineage import resolve_job_base

    parent = _train(train_settings, db, add_job, method=LORA, epochs=2, learning_rate=1e-2)
    base = resolve_job_base(
        db,
        settings=train_settings,
        tenant="default",
        task="classification",
        base_model=f"model:{parent.id}",
    )
    assert base.lineage is not None and base.lineage.root_id == TINY_MODEL_ID
    assert base.path_or_hub_id == str(train_settings.local_models_dir / "tiny-bert")
    start, head = load_starting_model(get_task("classification"), base, label_names=["neg", "pos"])
    assert head == ["classifier.bias", "classifier.weight"]
    assert all(p.requires_grad for p in start.parameters())
    served = load_predictor(train_settings, parent)
    got = _logits(start.eval(), served.tokenizer)
    assert torch.allclose(got, _logits(served.model, served.tokenizer), atol=1e-5)


def test_adapter_child_whose_parent_files_are_gone_is_503(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    parent = _train(train_settings, db, add_job, epochs=1)
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(16, seed=3)),
        method=LORA,
        epochs=1,
    )
    # A full grandchild holds its own weights once trained: it needs no ancestor to serve.
    full = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{child.id}",
        train=add_dataset(sentiment_rows(16, seed=4)),
        epochs=1,
    )
    assert full.parent_model_id == child.id
    load_predictor(train_settings, child)  # loads while the parent is there

    shutil.rmtree(train_settings.data_dir / parent.storage_path)
    with pytest.raises(Unavailable) as err:
        load_predictor(train_settings, child)
    assert err.value.status_code == 503 and err.value.code == "parent_model_unavailable"
    assert parent.id in err.value.message and "no files" in err.value.message
    load_predictor(train_settings, full)
    # Training from the child needs the parent too: the job fails saying which model is gone.
    job_id = add_job(base_model=f"model:{child.id}", epochs=1)
    assert run_job(train_settings, job_id) == JobStatus.FAILED
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.error_code == "invalid_input"
    assert parent.id in (job.error_message or "")


# --- through the API: submission, the model resource, /predict -------------------------------


def _run(client: TestClient, settings: Any, **spec: Any) -> dict[str, Any]:
    hp = {"epochs": 2, "batch_size": 8, "learning_rate": 1e-2}
    resp = client.post("/v1/jobs", json={"task": "classification", "hyperparameters": hp, **spec})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def test_continue_a_model_through_the_api(train_settings, client: TestClient) -> None:
    parent_job = _run(
        client,
        train_settings,
        base_model=TINY_MODEL_ID,
        train_dataset=upload_rows(client, sentiment_rows(40)),
    )
    parent = parent_job["model_id"]
    child_job = _run(
        client,
        train_settings,
        base_model=f"model:{parent}",
        train_dataset=upload_rows(client, sentiment_rows(24, seed=7)),
        method=LORA,
    )
    assert child_job["base_model"] == f"model:{parent}"  # as given
    child = client.get(f"/v1/models/{child_job['model_id']}").json()
    assert child["parent_model"] == parent and child["base_model"] == f"model:{parent}"
    assert client.get(f"/v1/models/{parent}").json()["parent_model"] is None

    predict = {"model": child["id"], "inputs": ["a great superb film"]}
    resp = client.post("/v1/predict/classification", json=predict)
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"][0][0]["label"] in {"neg", "pos"}

    # The parent's files go (and the child leaves the cache): a clear 503 naming the parent.
    client.app.state.predictors.clear()  # type: ignore[attr-defined]
    shutil.rmtree(train_settings.data_dir / "models" / parent)
    resp = client.post("/v1/predict/classification", json=predict)
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "parent_model_unavailable" and parent in error["message"]
    # A new child of the parent is refused at submission, naming base_model.
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": f"model:{parent}",
            "train_dataset": upload_rows(client, sentiment_rows(8)),
        },
    )
    assert resp.status_code == 422 and "base_model" in resp.json()["error"]["message"]
