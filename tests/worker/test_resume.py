"""A job whose attempt dies mid-training resumes from its last complete checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobStatus, Model
from app.job.checkpoints import MANIFEST, checkpoints_dir, latest_complete
from worker.jobs import run_job

SPEC: dict[str, Any] = {"epochs": 3, "batch_size": 8, "checkpoint_every": 2, "dropout": 0.0}


def _job(db: Session, job_id: str) -> Job:
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None
    return job


def test_interrupted_attempt_resumes_from_its_last_complete_checkpoint(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
) -> None:
    from worker.training.callbacks import JobProgressCallback

    train = add_dataset()
    # The same job run straight through, for comparison.
    straight = add_job(train=train, **SPEC)
    assert run_job(train_settings, straight) == JobStatus.SUCCEEDED

    job_id = add_job(train=train, **SPEC)
    original = JobProgressCallback.on_step_end

    def dies_at_step_7(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 7:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_7)
        run_job(train_settings, job_id)

    job = _job(db, job_id)
    assert (job.status, job.attempt) == (JobStatus.QUEUED, 1)
    saved = checkpoints_dir(train_settings, job_id)
    latest = latest_complete(saved)
    assert latest is not None and latest[1]["step"] == 6
    assert sorted(p.name for p in saved.iterdir()) == ["checkpoint-4", "checkpoint-6"]  # kept 2
    # A torn write (files, no manifest) is never taken for a checkpoint.
    torn = saved / "checkpoint-8"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    job = _job(db, job_id)
    assert (job.attempt, job.progress_step, job.progress_total) == (2, job.progress_total, 15)
    messages = list(
        db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )
    assert any("resuming from checkpoint-6 (step 6" in m for m in messages)
    assert any("re-queued after attempt 1" in m for m in messages)
    assert db.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id)) == 1
    assert not (train_settings.jobs_dir / job_id).exists()  # checkpoints go when the job ends

    # Attempt 2 trained steps 7-15 only, and the scheduler went on where it was: the learning
    # rate at each step is the one the straight run had at that step.
    def train_logs(job: str, after_event: int = 0) -> dict[int, float]:
        rows = db.scalars(
            select(JobEvent).where(JobEvent.job_id == job, JobEvent.id > after_event)
        ).all()
        return {
            e.data["step"]: e.data["learning_rate"]
            for e in rows
            if e.data and e.data.get("kind") == "train"
        }

    resumed_at = db.scalar(
        select(JobEvent.id).where(
            JobEvent.job_id == job_id, JobEvent.message.like("resuming from%")
        )
    )
    resumed = train_logs(job_id, after_event=resumed_at or 0)
    assert resumed and min(resumed) > 6
    straight_lr = train_logs(straight)
    for step, lr in resumed.items():
        assert lr == pytest.approx(straight_lr[step])


def test_manifest_lists_every_file_with_its_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.job.checkpoints import read_manifest, write_manifest

    ckpt = tmp_path / "checkpoint-3"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x" * 10)
    (ckpt / "optimizer.pt").write_bytes(b"y" * 5)
    assert read_manifest(ckpt) is None  # no manifest yet
    write_manifest(ckpt, step=3, epoch=1.0, metrics={"eval_loss": 0.5})
    manifest = read_manifest(ckpt)
    assert manifest is not None and manifest["files"] == {
        "model.safetensors": 10,
        "optimizer.pt": 5,
    }
    assert (ckpt / MANIFEST).exists()
    (ckpt / "optimizer.pt").write_bytes(b"y" * 4)  # changed after the manifest: not complete
    assert read_manifest(ckpt) is None


def test_early_stopping_resumes_with_its_patience_and_best_checkpoint(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
) -> None:
    from tests.tinymodel import sentiment_rows
    from tests.worker.test_controls import EARLY_STOPPING, flip_every
    from worker.training.callbacks import JobProgressCallback

    train, validation = add_dataset(), add_dataset(flip_every(sentiment_rows(12, seed=1), 3))
    straight = add_job(train=train, validation=validation, **EARLY_STOPPING)
    assert run_job(train_settings, straight) == JobStatus.SUCCEEDED
    expected = _job(db, straight)
    # The straight run stops at step 25: the best is step 15, then 20 and 25 are worse.
    assert expected.progress_step == 25

    job_id = add_job(train=train, validation=validation, **EARLY_STOPPING)
    original = JobProgressCallback.on_step_end

    def dies_at_step_22(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 22:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_22)
        run_job(train_settings, job_id)
    # checkpoints_kept=1, yet the best (15) is kept beside the newest (20).
    saved = checkpoints_dir(train_settings, job_id)
    assert sorted(p.name for p in saved.iterdir()) == ["checkpoint-15", "checkpoint-20"]

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    job = _job(db, job_id)
    # One more worse evaluation after the resume was enough (the patience count came back with
    # checkpoint-20), and the best checkpoint restored is the one the first attempt saved.
    assert (job.attempt, job.progress_step) == (2, 25)
    assert job.metrics == expected.metrics
    messages = list(
        db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
    )
    assert any("resuming from checkpoint-20" in m for m in messages)
    assert any(m.startswith("restored checkpoint-15, the best by loss") for m in messages)
