"""Claiming and fencing: only the attempt that claimed a job may write to it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job, JobStatus
from app.db.session import make_engine, make_sessionmaker, session_scope
from worker.training.state import AttemptFence, FenceLost, JobCancelled, claim_job


def test_claim_once_then_fence_rejects_a_stale_attempt(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    engine = make_engine(train_settings)
    factory = make_sessionmaker(engine)
    try:
        with session_scope(factory) as session:
            assert claim_job(session, job_id=job_id, worker="w1") == 1
        with session_scope(factory) as session:
            assert claim_job(session, job_id=job_id, worker="w2") is None

        fence = AttemptFence(factory, job_id=job_id, attempt=1)
        fence.log("hello")
        assert fence.progress(progress_step=3, progress_total=10) is False

        # Someone re-queued and re-claimed the job: attempt 1 must not write any more.
        db.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
        db.commit()
        with session_scope(factory) as session:
            assert claim_job(session, job_id=job_id, worker="w2") == 2
        with pytest.raises(FenceLost):
            fence.log("stale")
        assert fence.finish(JobStatus.FAILED, "stale failure") is False
        db.expire_all()
        job = db.get(Job, job_id)
        assert job is not None and (job.status, job.attempt, job.worker) == ("running", 2, "w2")
    finally:
        engine.dispose()


def test_cancel_request_is_seen_by_the_fence(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    engine = make_engine(train_settings)
    factory = make_sessionmaker(engine)
    try:
        with session_scope(factory) as session:
            claim_job(session, job_id=job_id, worker="w1")
        fence = AttemptFence(factory, job_id=job_id, attempt=1)
        fence.raise_if_cancelled()
        db.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
        db.commit()
        with pytest.raises(JobCancelled):
            fence.raise_if_cancelled()
    finally:
        engine.dispose()


def test_resolved_hyperparameters_are_written_by_the_owning_attempt_only(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    engine = make_engine(train_settings)
    factory = make_sessionmaker(engine)
    try:
        with session_scope(factory) as session:
            claim_job(session, job_id=job_id, worker="w1")
        fence = AttemptFence(factory, job_id=job_id, attempt=1)
        fence.training_started(
            hyperparameters={"batch_size": 16}, parameters={"trainable": 1, "total": 2}
        )
        db.expire_all()
        job = db.get(Job, job_id)
        assert job is not None and job.resolved_hyperparameters == {"batch_size": 16}
        assert job.parameters == {"trainable": 1, "total": 2}

        db.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
        db.commit()
        with session_scope(factory) as session:
            assert claim_job(session, job_id=job_id, worker="w2") == 2
        with pytest.raises(FenceLost):
            fence.training_started(
                hyperparameters={"batch_size": 99}, parameters={"trainable": 0, "total": 0}
            )
        db.expire_all()
        job = db.get(Job, job_id)
        assert job is not None and job.resolved_hyperparameters == {"batch_size": 16}
    finally:
        engine.dispose()
