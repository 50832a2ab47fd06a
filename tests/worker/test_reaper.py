"""The reaper and the outbox relay on a real (SQLite) database, with a fake broker."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobMessage, JobStatus, utcnow
from app.db.session import make_engine, make_sessionmaker, session_scope
from app.job.outbox import publish_pending
from app.job.reaper import reap
from tests.conftest import RecordingQueue
from worker.training.state import AttemptFence, FenceLost, claim_job


@pytest.fixture
def factory(train_settings):  # type: ignore[no-untyped-def]
    engine = make_engine(train_settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def _claim(factory, job_id: str) -> int:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        attempt = claim_job(session, job_id=job_id, worker="w")
    assert attempt is not None
    return attempt


def _silence(db: Session, job_id: str, seconds: float) -> None:
    stamp = utcnow() - timedelta(seconds=seconds)
    db.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stamp))
    db.commit()


def test_silent_job_is_requeued_then_failed_after_the_last_attempt(
    train_settings, db: Session, factory, add_job: Callable[..., str]
) -> None:
    train_settings.max_attempts = 2
    queue = RecordingQueue()
    job_id = add_job()
    fence = AttemptFence(factory, job_id=job_id, attempt=_claim(factory, job_id))
    fresh = reap(db, settings=train_settings, queue=queue)
    assert not fresh.requeued  # a fresh heartbeat is left alone

    _silence(db, job_id, train_settings.heartbeat_timeout_seconds + 1)
    skipped = reap(db, settings=train_settings, queue=queue, check_heartbeats=False)
    assert not skipped.requeued
    report = reap(db, settings=train_settings, queue=queue)
    assert report.requeued == [job_id]
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.status == JobStatus.QUEUED and job.attempt == 1
    with pytest.raises(FenceLost):  # the silent attempt can no longer write
        fence.progress(progress_step=5)
    assert publish_pending(db, queue) == 1 and queue.enqueued == [job_id]

    assert _claim(factory, job_id) == 2
    _silence(db, job_id, train_settings.heartbeat_timeout_seconds + 1)
    report = reap(db, settings=train_settings, queue=queue)
    assert report.failed == [job_id]
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.status == JobStatus.FAILED
    assert job.error_code == "worker_lost" and "all 2 attempts" in (job.error_message or "")
    messages = [e.message for e in db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert any("re-queued for attempt 2 of 2" in m for m in messages)


def test_silent_job_with_a_cancel_request_ends_cancelled(
    train_settings, db: Session, factory, add_job: Callable[..., str]
) -> None:
    job_id = add_job()
    _claim(factory, job_id)
    db.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    db.commit()
    _silence(db, job_id, train_settings.heartbeat_timeout_seconds + 1)
    assert reap(db, settings=train_settings, queue=RecordingQueue()).cancelled == [job_id]
    db.expire_all()
    assert db.get(Job, job_id).status == JobStatus.CANCELLED  # type: ignore[union-attr]


def test_queued_job_whose_message_is_gone_is_republished(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    queue = RecordingQueue()
    job_id = add_job()
    db.add(JobMessage(job_id=job_id, reason="submitted"))
    db.commit()
    assert publish_pending(db, queue) == 1
    later = utcnow() + timedelta(seconds=train_settings.republish_after_seconds + 1)

    # The broker still holds it: nothing to do.
    assert reap(db, settings=train_settings, queue=queue, now=later).republished == []
    # Within the grace period nothing is checked, even if the broker lost it.
    queue.enqueued.clear()
    assert reap(db, settings=train_settings, queue=queue).republished == []
    # Lost: a new message is owed, and the relay sends it once.
    assert reap(db, settings=train_settings, queue=queue, now=later).republished == [job_id]
    assert reap(db, settings=train_settings, queue=queue, now=later).republished == []
    assert publish_pending(db, queue) == 1 and queue.enqueued == [job_id]


def test_broker_that_cannot_be_read_republishes_nothing(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    class Blind(RecordingQueue):
        def held_job_ids(
            self, *, delivered_within: float, queues: tuple[str, ...] = ()
        ) -> set[str] | None:
            return None

    queue = Blind()
    job_id = add_job()
    db.add(JobMessage(job_id=job_id, reason="submitted"))
    db.commit()
    publish_pending(db, queue)
    later = utcnow() + timedelta(seconds=train_settings.republish_after_seconds + 1)
    assert reap(db, settings=train_settings, queue=queue, now=later).republished == []


def test_relay_skips_messages_of_jobs_no_longer_queued(
    db: Session, add_job: Callable[..., str]
) -> None:
    queue = RecordingQueue()
    job_id = add_job()
    db.add(JobMessage(job_id=job_id, reason="submitted"))
    db.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.CANCELLED))
    db.commit()
    assert publish_pending(db, queue) == 0 and queue.enqueued == []
    assert db.scalars(select(JobMessage.sent_at)).one() is not None


def test_broker_messages_are_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """held_job_ids reads kombu's own message format from a real Redis."""
    from app.core.embedded_redis import EmbeddedRedis
    from app.core.queue import CeleryJobQueue

    with EmbeddedRedis(tmp_path) as redis:
        queue = CeleryJobQueue(redis.url)
        assert queue.held_job_ids(delivered_within=60) == set()
        queue.enqueue("job_a")
        queue.enqueue("job_b")
        assert queue.held_job_ids(delivered_within=60) == {"job_a", "job_b"}
        queue.enqueue("job_c", "gpu")  # another queue: read only when asked for
        assert queue.held_job_ids(delivered_within=60) == {"job_a", "job_b"}
        both = ("training", "gpu")
        assert queue.held_job_ids(delivered_within=60, queues=both) == {"job_a", "job_b", "job_c"}
    assert CeleryJobQueue(redis.url).held_job_ids(delivered_within=60) is None  # server gone
