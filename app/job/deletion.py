"""Deleting a job that has ended: its row, events, outbox messages and OpenAI-API terms, then its
working files.

The model it registered stays (`models.job_id` is not a foreign key), and so do its datasets.
"""

from __future__ import annotations

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict
from app.db.models import Job, JobEvent, JobMessage, JobStatus, OpenAIJob, OpenAIJobMetadata
from app.db.session import rows_changed
from app.job.checkpoints import drop_job_files
from app.job.service import get_job

JOB_NOT_ENDED = "job_not_ended"
ENDED = [s for s in JobStatus if s.is_terminal]


def _not_ended(job: Job) -> Conflict:
    if job.cancel_requested:
        advice = "it is stopping after a cancel; delete it once it has ended"
    else:
        advice = f"cancel it first (POST /v1/jobs/{job.id}/cancel) and delete it after it ends"
    return Conflict(
        f"job '{job.id}' is {job.status} and cannot be deleted: {advice}",
        code=JOB_NOT_ENDED,
        status=job.status,
    )


def delete_job(session: Session, *, settings: Settings, tenant: str, job_id: str) -> None:
    """Delete the tenant's ended job with its events, messages, checkpoints and scratch files
    (Conflict while it is queued or running; NotFound for a missing or another tenant's job)."""
    job = get_job(session, tenant=tenant, job_id=job_id)
    if not JobStatus(job.status).is_terminal:
        raise _not_ended(job)
    session.execute(delete(JobEvent).where(JobEvent.job_id == job.id))
    session.execute(delete(JobMessage).where(JobMessage.job_id == job.id))
    session.execute(delete(OpenAIJobMetadata).where(OpenAIJobMetadata.job_id == job.id))
    session.execute(delete(OpenAIJob).where(OpenAIJob.job_id == job.id))
    # Conditional, like every write to a job: only an ended job goes.
    if not rows_changed(session, delete(Job).where(Job.id == job.id, Job.status.in_(ENDED))):
        # Deleted by a concurrent request meanwhile (NotFound), or not ended after all.
        session.rollback()
        session.expunge(job)
        raise _not_ended(get_job(session, tenant=tenant, job_id=job_id))
    session.commit()
    drop_job_files(settings, job.id)
