"""The outbox relay: publish queue messages that were committed but not yet sent."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.queue import JobQueue
from app.db.models import Job, JobMessage, JobStatus, utcnow
from app.job.schemas import job_resources

log = logging.getLogger("tuneserve.relay")
MAX_ERROR_CHARS = 500


def job_queue(spec: dict[str, Any] | None) -> str:
    """The queue a job's messages go to, as its stored spec says (older jobs: training)."""
    return job_resources(spec).queue


def publish_pending(
    session: Session, queue: JobQueue, *, job_id: str | None = None, limit: int = 100
) -> int:
    """Publish up to `limit` unsent messages, oldest first; how many reached the broker.

    Stops at the first broker error (the broker is down: the next round retries). A message for
    a job that is no longer queued (cancelled meanwhile) is marked sent without publishing.
    Publishing twice is harmless: the worker's claim on the job row decides who runs it.
    """
    stmt = (
        select(JobMessage.id, JobMessage.job_id, Job.status, Job.spec)
        .join(Job, Job.id == JobMessage.job_id)
        .where(JobMessage.sent_at.is_(None))
        .order_by(JobMessage.id)
        .limit(limit)
    )
    if job_id is not None:
        stmt = stmt.where(JobMessage.job_id == job_id)
    sent = 0
    for message_id, message_job, status, spec in session.execute(stmt).all():
        if status == JobStatus.QUEUED:
            try:
                queue.enqueue(message_job, job_queue(spec))
            except Exception as exc:  # broker unreachable: keep the message for the next round
                log.warning("could not publish job %s: %s", message_job, exc)
                session.execute(
                    update(JobMessage)
                    .where(JobMessage.id == message_id)
                    .values(
                        publish_attempts=JobMessage.publish_attempts + 1,
                        last_error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS],
                    )
                )
                session.commit()
                break
            sent += 1
        session.execute(
            update(JobMessage)
            .where(JobMessage.id == message_id, JobMessage.sent_at.is_(None))
            .values(sent_at=utcnow(), publish_attempts=JobMessage.publish_attempts + 1)
        )
        session.commit()
    return sent
