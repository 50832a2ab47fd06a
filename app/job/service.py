"""Job submission, reads, events and cancellation. The row is the truth; the queue only wakes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from app.core.idempotency import IdempotentRequest
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.core.queue import JobQueue
from app.core.store import get_store
from app.db.models import (
    EventType,
    Job,
    JobEvent,
    JobMessage,
    JobStatus,
    Tenant,
    new_id,
    utcnow,
)
from app.db.session import get_by_id, rows_changed
from app.job.checkpoints import stored_checkpoints
from app.job.datasets import validation_warnings
from app.job.kinds import job_kind
from app.job.outbox import publish_pending
from app.job.schemas import CheckpointRead, JobCreate, JobRead
from app.ml.tasks import get_task

log = logging.getLogger("tuneserve.jobs")

# A tenant at its job cap is told to come back after this long.
ACTIVE_CAP_RETRY_SECONDS = 60


def submit_job(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    tenant: str,
    spec: JobCreate,
    idempotency: IdempotentRequest | None = None,
    attach: Callable[[Session, Job], None] | None = None,
) -> Job:
    """Validate a job spec; commit the job with its queue message; then try to publish it.

    With `idempotency`, a key seen before replays its first response (raises Replay) instead.
    `attach` adds rows that belong to the job (a sweep's trial, the OpenAI API's terms) to the
    same transaction.
    """
    if idempotency is not None:
        idempotency.replay_if_seen(session)
    task = get_task(spec.task)
    kind = job_kind(spec.method.type)
    inputs = kind.inputs(session, settings=settings, tenant=tenant, spec=spec, task=task)
    train, val, resolved = inputs.train, inputs.validation, inputs.spec
    if val is not None:
        warnings = validation_warnings(task, train=train, validation=val)
        resolved = resolved.model_copy(update={"warnings": warnings})
    # Lock the tenant row (PostgreSQL) so concurrent submissions count each other.
    session.execute(select(Tenant.id).where(Tenant.id == tenant).with_for_update())
    job = Job(
        id=new_id("job"),
        tenant_id=tenant,
        task=task.name,
        base_model=spec.base_model,
        train_dataset_id=train.id,
        validation_dataset_id=val.id if val is not None else None,
        spec=resolved.model_dump(mode="json"),
        status=JobStatus.QUEUED,
        attempt=0,
    )
    session.add(job)
    session.add(
        JobEvent(
            job_id=job.id,
            type=EventType.STATUS,
            message="job queued",
            data={"status": JobStatus.QUEUED},
        )
    )
    # The queue message is owed in the same transaction: if publishing fails below, the relay
    # publishes it later, so an accepted job is never left without a message.
    session.add(JobMessage(job_id=job.id, reason="submitted"))
    session.flush()
    if attach is not None:
        attach(session, job)
    try:
        if idempotency is not None:
            idempotency.remember(session, status_code=201, body=JobRead.from_row(job))
            # Fails (IntegrityError) when a concurrent request with this key committed first.
            session.flush()
        _check_active_cap(session, settings=settings, tenant=tenant)
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency is not None:
            idempotency.replay_if_seen(session)  # answer what the first request answered
        raise
    publish_pending(session, queue, job_id=job.id)
    return job


def _check_active_cap(session: Session, *, settings: Settings, tenant: str) -> None:
    """Refuse (429) a job that would put the tenant over its cap of queued + running jobs."""
    cap = settings.max_active_jobs_per_tenant
    if cap <= 0:
        return
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == tenant, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
    )
    if active is not None and active > cap:
        session.rollback()
        raise TooManyRequests(
            f"this tenant already has {cap} queued or running jobs (the cap); retry when one "
            "finishes, or cancel one",
            code="too_many_active_jobs",
            retry_after=ACTIVE_CAP_RETRY_SECONDS,
            cap=cap,
        )


def get_job(session: Session, *, tenant: str, job_id: str) -> Job:
    """The tenant's job, or NotFound (also for another tenant's)."""
    job = get_by_id(session, Job, job_id)
    if job is None or job.tenant_id != tenant:
        raise NotFound(f"job '{job_id}' does not exist")
    return job


def list_jobs(
    session: Session,
    *,
    tenant: str,
    limit: int,
    after: str | None,
    status: str | None = None,
    sweep_id: str | None = None,
) -> tuple[list[Job], str | None]:
    """The tenant's jobs, newest first (a sweep's trials only, with `sweep_id`)."""
    stmt = select(Job).where(Job.tenant_id == tenant)
    if sweep_id is not None:
        if "\x00" in sweep_id:  # no id holds one, and PostgreSQL cannot compare with one
            return [], None
        stmt = stmt.where(Job.sweep_id == sweep_id)
    if status is not None:
        if status not in set(JobStatus):
            raise InvalidInput(
                f"status: unknown status '{status}'; "
                f"expected one of {[s.value for s in JobStatus]}",
                field="status",
            )
        stmt = stmt.where(Job.status == status)
    return page_newest_first(session, stmt, Job, limit=min(limit, MAX_LIMIT), after=after)


def list_events(
    session: Session, *, tenant: str, job_id: str, limit: int, after: int | None
) -> tuple[list[JobEvent], int | None]:
    """A job's events in the order they happened, `limit` after event id `after`."""
    get_job(session, tenant=tenant, job_id=job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    rows = list(session.scalars(stmt.order_by(JobEvent.id).limit(min(limit, 1000) + 1)))
    next_after = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_after = rows[-1].id
    return rows, next_after


def cancel_job(session: Session, *, tenant: str, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    job = get_job(session, tenant=tenant, job_id=job_id)
    now = utcnow()
    done = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now),
    )
    if done:
        session.add(
            JobEvent(
                job_id=job_id,
                type=EventType.STATUS,
                message="job cancelled",
                data={"status": JobStatus.CANCELLED},
            )
        )
    else:
        done = rows_changed(
            session,
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True),
        )
        if done:
            session.add(
                JobEvent(
                    job_id=job_id,
                    type=EventType.LOG,
                    message="cancellation requested; stopping at the next step",
                )
            )
    session.commit()
    session.refresh(job)
    if not done and job.status not in (JobStatus.CANCELLED,):
        raise Conflict(
            f"job '{job_id}' is already {job.status} and cannot be cancelled", status=job.status
        )
    return job


def list_checkpoints(
    session: Session, *, settings: Settings, tenant: str, job_id: str
) -> list[CheckpointRead]:
    """The job's complete checkpoints, oldest first (none once the job has ended)."""
    get_job(session, tenant=tenant, job_id=job_id)
    return [
        CheckpointRead(
            step=int(c.manifest["step"]),
            epoch=float(c.manifest["epoch"]),
            metrics={k: float(v) for k, v in (c.manifest.get("metrics") or {}).items()},
            size_bytes=sum(int(n) for n in c.manifest["files"].values()),
            saved_at=c.saved_at,
        )
        for c in stored_checkpoints(get_store(settings), job_id)
    ]
