"""/v1/jobs: submit, follow and cancel fine-tuning jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.auth.deps import JobReader, Trainer
from app.core.deps import QueueDep, SessionDep, SettingsDep
from app.core.schemas import Page
from app.db.models import Job, JobEvent
from app.job import service
from app.job.schemas import JobCreate, JobError, JobEventRead, JobProgress, JobRead

router = APIRouter(prefix="/jobs", tags=["jobs"])


def to_read(job: Job) -> JobRead:
    spec = job.spec or {}
    error = (
        JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
    )
    return JobRead(
        id=job.id,
        task=job.task,
        base_model=job.base_model,
        train_dataset=job.train_dataset_id,
        validation_dataset=job.validation_dataset_id,
        method=spec.get("method", {}),
        hyperparameters=spec.get("hyperparameters", {}),
        task_options=spec.get("task_options", {}),
        seed=spec.get("seed", 0),
        status=job.status,
        attempt=job.attempt,
        progress=JobProgress(step=job.progress_step, total=job.progress_total, epoch=job.epoch),
        train_loss=job.train_loss,
        metrics=job.metrics,
        model_id=job.model_id,
        error=error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def _event_read(event: JobEvent) -> JobEventRead:
    return JobEventRead(
        id=event.id,
        type=event.type,
        message=event.message,
        data=event.data,
        created_at=event.created_at,
    )


class EventPage(Page[JobEventRead]):
    # For events the cursor is the last event id; pass it back as `after`.
    pass


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobRead)
def create_job(
    body: JobCreate,
    session: SessionDep,
    settings: SettingsDep,
    queue: QueueDep,
    principal: Trainer,
) -> JobRead:
    """Submit a fine-tuning job; it starts as `queued`."""
    job = service.submit_job(
        session, settings=settings, queue=queue, tenant=principal.tenant, spec=body
    )
    return to_read(job)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    status: str | None = None,
) -> Page[JobRead]:
    """List jobs, newest first."""
    rows, cursor = service.list_jobs(
        session, tenant=principal.tenant, limit=limit, after=after, status=status
    )
    return Page[JobRead](data=[to_read(j) for j in rows], next_cursor=cursor)


@router.get("/{job_id}", response_model=JobRead)
def get_job(job_id: str, session: SessionDep, principal: JobReader) -> JobRead:
    """A job's status, progress, metrics and result."""
    return to_read(service.get_job(session, tenant=principal.tenant, job_id=job_id))


@router.get("/{job_id}/events", response_model=EventPage)
def list_events(
    job_id: str,
    session: SessionDep,
    principal: JobReader,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> EventPage:
    """A job's events (status changes, log lines, metrics), oldest first."""
    rows, next_after = service.list_events(
        session, tenant=principal.tenant, job_id=job_id, limit=limit, after=after
    )
    return EventPage(
        data=[_event_read(e) for e in rows],
        next_cursor=str(next_after) if next_after is not None else None,
    )


@router.post("/{job_id}/cancel", response_model=JobRead)
def cancel_job(job_id: str, session: SessionDep, principal: Trainer) -> JobRead:
    """Cancel a job: a queued one never runs; a running one stops within seconds."""
    return to_read(service.cancel_job(session, tenant=principal.tenant, job_id=job_id))
