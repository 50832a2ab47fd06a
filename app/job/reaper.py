"""The reaper: re-queue running jobs whose worker went silent, republish lost queue messages.

Every decision is a conditional UPDATE on the job row, so any number of reapers may run, and a
worker that comes back after being reaped finds its attempt fenced off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.queue import JobQueue
from app.db.models import EventType, Job, JobEvent, JobMessage, JobStatus, utcnow
from app.db.session import rows_changed
from app.job.outbox import job_queue

log = logging.getLogger("tuneserve.reaper")


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    republished: list[str] = field(default_factory=list)


def reap(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    now: datetime | None = None,
    check_heartbeats: bool = True,
) -> ReapReport:
    """One pass: silent running jobs, then queued jobs whose message is gone.

    The relay passes check_heartbeats=False until the database has been reachable for a whole
    heartbeat timeout: after an outage every heartbeat looks stale, yet the workers are alive.
    """
    now = now or utcnow()
    report = ReapReport()
    if check_heartbeats:
        _reap_silent(session, settings=settings, now=now, report=report)
    _republish_lost(session, settings=settings, queue=queue, now=now, report=report)
    return report


def _reap_silent(
    session: Session, *, settings: Settings, now: datetime, report: ReapReport
) -> None:
    cutoff = now - timedelta(seconds=settings.heartbeat_timeout_seconds)
    stale = session.execute(
        select(Job.id, Job.attempt, Job.heartbeat_at, Job.cancel_requested, Job.worker).where(
            Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff
        )
    ).all()
    for job_id, attempt, beat, cancel, worker in stale:
        values: dict[str, Any]
        owned = (
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.attempt == attempt,
            Job.heartbeat_at == beat,
        )
        silent = f"attempt {attempt} went silent (worker {worker}, last heartbeat {beat:%H:%M:%S})"
        if cancel:
            status, message, values = JobStatus.CANCELLED, f"job cancelled; {silent}", {}
            bucket = report.cancelled
        elif attempt < settings.max_attempts:
            status = JobStatus.QUEUED
            message = f"{silent}; re-queued for attempt {attempt + 1} of {settings.max_attempts}"
            values = {"worker": None}
            bucket = report.requeued
        else:
            status = JobStatus.FAILED
            reason = f"{silent}; all {settings.max_attempts} attempts are used"
            message = f"job failed: {reason}"
            values = {"error_code": "worker_lost", "error_message": reason}
            bucket = report.failed
        terminal = status != JobStatus.QUEUED
        stmt = (
            update(Job)
            .where(*owned)
            .values(status=status, finished_at=now if terminal else None, **values)
            .execution_options(synchronize_session=False)
        )
        if rows_changed(session, stmt) != 1:
            session.rollback()  # the worker spoke or someone else reaped it first
            continue
        data = {"status": status, "attempt": attempt, "reason": "heartbeat_timeout"}
        session.add(JobEvent(job_id=job_id, type=EventType.STATUS, message=message, data=data))
        if status == JobStatus.QUEUED:
            session.add(JobMessage(job_id=job_id, reason="requeue"))
        session.commit()
        bucket.append(job_id)
        log.warning("job %s: %s", job_id, message)


def _republish_lost(
    session: Session, *, settings: Settings, queue: JobQueue, now: datetime, report: ReapReport
) -> None:
    grace = timedelta(seconds=settings.republish_after_seconds)
    last_sent = (
        select(JobMessage.job_id, func.max(JobMessage.sent_at).label("sent"))
        .group_by(JobMessage.job_id)
        .subquery()
    )
    unsent = select(JobMessage.job_id).where(JobMessage.sent_at.is_(None))
    rows = session.execute(
        select(Job.id, Job.spec)
        .join(last_sent, last_sent.c.job_id == Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            last_sent.c.sent < now - grace,
            Job.id.not_in(unsent),
        )
    ).tuples()
    candidates: dict[str, dict[str, Any] | None] = {job_id: spec for job_id, spec in rows}
    if not candidates:
        return
    queues = tuple(sorted({job_queue(spec) for spec in candidates.values()}))
    held = queue.held_job_ids(delivered_within=settings.heartbeat_timeout_seconds, queues=queues)
    if held is None:  # the broker cannot be read now; try again next round
        return
    for job_id in candidates:
        if job_id in held:
            continue
        session.add(JobMessage(job_id=job_id, reason="republish"))
        session.add(
            JobEvent(
                job_id=job_id,
                type=EventType.LOG,
                message="the queue no longer holds this job's message; publishing it again",
            )
        )
        report.republished.append(job_id)
        log.warning("job %s: queue message lost; republishing", job_id)
    session.commit()
