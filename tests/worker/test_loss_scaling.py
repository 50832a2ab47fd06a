"""Losses are per-batch means at every batch layout: gradient accumulation and data-parallel
processes change neither the training loss the job reports (nor the gradients it is the loss of)
nor its eval_loss.

A model whose forward takes **kwargs (BERT's task heads) would have the Trainer treat its loss
as a sum normalised by the items of the whole accumulated, gathered batch: not divided by the
accumulation steps, and multiplied by the process count. These jobs train with a learning rate
too small to move the weights and without dropout, so every layout's mean training loss is the
starting model's mean loss over the same rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobStatus, Model
from tests.predict.conftest import upload_rows
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job

# Weights that stay where they started; no dropout, so a loss depends on the rows alone.
STILL = {"epochs": 1, "learning_rate": 1e-8, "dropout": 0.0}


def _finished(db: Session, job_id: str) -> tuple[Job, Model]:
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None
    assert job.status == JobStatus.SUCCEEDED, f"{job.error_code}: {job.error_message}"
    return job, db.scalars(select(Model).where(Model.job_id == job_id)).one()


def test_gradient_accumulation_reports_the_loss_of_the_whole_batch(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    # 48 rows: six full steps of 8 rows either way.
    train = add_dataset(sentiment_rows(48, seed=1))
    validation = add_dataset(sentiment_rows(16, seed=2))
    losses = {}
    for batch, accumulate in ((8, 1), (4, 2)):
        job_id = add_job(
            train=train,
            validation=validation,
            batch_size=batch,
            gradient_accumulation_steps=accumulate,
            **STILL,
        )
        run_job(train_settings, job_id)
        job, _ = _finished(db, job_id)
        assert job.train_loss is not None and job.metrics is not None
        losses[accumulate] = (job.train_loss, job.metrics["eval_loss"])
    # Accumulating two halves is one step of the mean over 8 rows (unscaled: 2x the loss and the
    # gradients that max_grad_norm clips).
    assert losses[2][0] == pytest.approx(losses[1][0], rel=1e-3)
    assert losses[2][1] == pytest.approx(losses[1][1], rel=1e-3)


@pytest.fixture
def api(train_settings, client: TestClient) -> TestClient:  # type: ignore[no-untyped-def]
    return client


def _submit(client: TestClient, body: dict[str, Any]) -> str:
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_a_data_parallel_job_reports_the_losses_of_one_process(
    train_settings, api: TestClient, db: Session
) -> None:
    # 64 train rows and 16 validation rows: every process has full batches of 4 for training and
    # an equal share of the evaluation, so no row is repeated to fill a batch.
    train = upload_rows(api, sentiment_rows(64, seed=1))
    validation = upload_rows(api, sentiment_rows(16, seed=2))
    runs = {}
    for processes, batch in ((2, 4), (1, 8)):
        job_id = _submit(
            api,
            {
                "task": "classification",
                "base_model": TINY_MODEL_ID,
                "train_dataset": train,
                "validation_dataset": validation,
                "hyperparameters": {"batch_size": batch, **STILL},
                "resources": {"processes": processes},
                "seed": 7,
            },
        )
        run_job(train_settings, job_id)
        runs[processes] = _finished(db, job_id)
    (job2, model2), (job1, _) = runs[2], runs[1]
    assert model2.hyperparameters["processes"] == 2
    assert job1.train_loss is not None and job2.train_loss is not None
    assert job2.train_loss == pytest.approx(job1.train_loss, rel=1e-3)
    assert job1.metrics is not None and model2.metrics is not None
    assert model2.metrics["eval_loss"] == pytest.approx(job1.metrics["eval_loss"], rel=1e-3)

    # The two-process model evaluated again in one process (a quantize job's fp32 evaluation of
    # its parent, on the parent's validation rows at its batch size) measures its eval_loss.
    quantize = _submit(
        api,
        {
            "task": "classification",
            "base_model": f"model:{model2.id}",
            "method": {"type": "quantize", "scheme": "int8_dynamic"},
        },
    )
    run_job(train_settings, quantize)
    _, int8 = _finished(db, quantize)
    assert int8.validation_dataset_id == validation and int8.parent_metrics is not None
    assert int8.parent_metrics["accuracy"] == model2.metrics["accuracy"]
    assert int8.parent_metrics["eval_loss"] == pytest.approx(model2.metrics["eval_loss"], rel=1e-4)
