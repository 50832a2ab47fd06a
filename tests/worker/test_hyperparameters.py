"""Training controls reach the Trainer: max_steps, accumulation, warm-up, clipping, dropout."""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobStatus, Model
from worker.jobs import run_job


def test_max_steps_accumulation_and_dropout(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job(
        epochs=50,  # max_steps wins
        max_steps=3,
        gradient_accumulation_steps=2,
        warmup_steps=1,
        max_grad_norm=0.5,
        dropout=0.0,
        batch_size=4,
    )
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.progress_total == 3 and job.progress_step == 3
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    path = train_settings.data_dir / model.storage_path
    meta = json.loads((path / "tuneserve.json").read_text())
    hp = meta["hyperparameters"]
    assert (hp["max_steps"], hp["gradient_accumulation_steps"], hp["warmup_steps"]) == (3, 2, 1)
    assert hp["max_grad_norm"] == 0.5 and hp["dropout"] == 0.0
    config = json.loads((path / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["attention_probs_dropout_prob"] == 0.0


def test_same_seed_data_and_spec_give_the_same_metrics_on_cpu(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    train = add_dataset()
    runs = []
    for seed in (7, 7, 8):
        job_id = add_job(train=train, seed=seed, max_steps=6, batch_size=8)
        assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
        db.expire_all()
        job = db.get(Job, job_id)
        assert job is not None and job.metrics is not None
        runs.append((job.train_loss, job.metrics["eval_loss"]))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]  # the seed matters (so the test can fail)
