"""Job submission, reads, events and cancellation. The row is the truth; the queue only wakes."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput, NotFound, Unavailable
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.core.queue import JobQueue
from app.db.models import Dataset, EventType, Job, JobEvent, JobStatus, new_id, utcnow
from app.job.schemas import (
    DEFAULT_LEARNING_RATE,
    Hyperparameters,
    JobCreate,
    JobSpec,
    LoraMethod,
)
from app.ml.tasks import DatasetSummary, TaskSpec, get_task

log = logging.getLogger("tuneserve.jobs")

# Fewest rows a split train set needs so both halves see every label at least once.
MIN_TRAIN_ROWS = 4


def _summary(ds: Dataset) -> DatasetSummary:
    return DatasetSummary(
        num_rows=ds.num_rows,
        columns=list(ds.columns),
        label_names=ds.label_names,
        label_counts=ds.label_counts,
        stats=ds.stats or {},
    )


def _dataset_for(session: Session, dataset_id: str, *, field: str, task: str) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise InvalidInput(f"{field}: dataset '{dataset_id}' does not exist", field=field)
    if ds.task != task:
        raise InvalidInput(
            f"{field}: dataset '{dataset_id}' is a '{ds.task}' dataset, not '{task}'", field=field
        )
    return ds


def resolve_spec(spec: JobCreate, task: TaskSpec, train: DatasetSummary | None = None) -> JobSpec:
    """Fill the defaults that depend on other fields, so the stored spec says what will run."""
    hp = spec.hyperparameters
    # Fields the client left out take the task's defaults, then the method's learning rate.
    task_defaults = {
        k: v
        for k, v in task.default_hyperparameters(spec.method.type).items()
        if k not in hp.model_fields_set
    }
    hp = Hyperparameters.model_validate({**hp.model_dump(), **task_defaults})
    if hp.learning_rate is None:
        hp = hp.model_copy(update={"learning_rate": DEFAULT_LEARNING_RATE[spec.method.type]})
    method = spec.method
    if isinstance(method, LoraMethod) and method.lora_alpha is None:
        method = method.model_copy(update={"lora_alpha": 2.0 * method.r})
    try:
        # The train set's summary lets a task resolve "auto" options from the data (QA's
        # version_2_with_negative: true when the train set has unanswerable questions).
        options = task.options_model.model_validate(
            spec.task_options, context={"train_summary": train}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(
            f"task_options.{where}: {first['msg']} (task '{task.name}')",
            field=f"task_options.{where}",
        ) from None
    return JobSpec(
        method=method,
        hyperparameters=hp,
        task_options=options.model_dump(mode="json"),
        seed=spec.seed,
    )


def submit_job(session: Session, *, settings: Settings, queue: JobQueue, spec: JobCreate) -> Job:
    """Validate a job spec against its task, datasets and base model; commit it; then enqueue it."""
    from app.basemodel.service import resolve_base_model

    task = get_task(spec.task)
    resolve_base_model(settings, spec.base_model)
    train = _dataset_for(session, spec.train_dataset, field="train_dataset", task=task.name)
    if spec.validation_dataset is not None:
        val = _dataset_for(
            session, spec.validation_dataset, field="validation_dataset", task=task.name
        )
        task.check_compatible(_summary(train), _summary(val))
    else:
        if train.num_rows < MIN_TRAIN_ROWS:
            raise InvalidInput(
                f"train_dataset has {train.num_rows} rows; at least {MIN_TRAIN_ROWS} are needed "
                "to hold out a validation split (or give validation_dataset)",
                field="train_dataset",
            )
        task.check_compatible(_summary(train), _summary(train))

    resolved = resolve_spec(spec, task, _summary(train))
    job = Job(
        id=new_id("job"),
        task=task.name,
        base_model=spec.base_model,
        train_dataset_id=train.id,
        validation_dataset_id=spec.validation_dataset,
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
    session.commit()
    try:
        queue.enqueue(job.id)
    except Exception as exc:  # the broker is down: say so, and leave no job that will never run
        log.exception("enqueue failed for %s", job.id)
        fail_unqueued(session, job=job, message=f"could not reach the job queue: {exc}")
        raise Unavailable("the job queue is unavailable; the job was not started") from exc
    return job


def fail_unqueued(session: Session, *, job: Job, message: str) -> None:
    """Mark a job that never reached the queue as failed."""
    session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.FAILED,
            error_code="enqueue_failed",
            error_message=message,
            finished_at=utcnow(),
        )
    )
    session.commit()
    session.refresh(job)


def get_job(session: Session, *, job_id: str) -> Job:
    """The job, or NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job '{job_id}' does not exist")
    return job


def list_jobs(
    session: Session, *, limit: int, after: str | None, status: str | None = None
) -> tuple[list[Job], str | None]:
    """Jobs, newest first."""
    stmt = select(Job)
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
    session: Session, *, job_id: str, limit: int, after: int | None
) -> tuple[list[JobEvent], int | None]:
    """A job's events in the order they happened, `limit` after event id `after`."""
    get_job(session, job_id=job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    rows = list(session.scalars(stmt.order_by(JobEvent.id).limit(min(limit, 1000) + 1)))
    next_after = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_after = rows[-1].id
    return rows, next_after


def _update(session: Session, stmt: Any) -> int:
    """Run a conditional UPDATE; the number of rows it changed."""
    result: CursorResult[Any] = session.execute(stmt)  # type: ignore[assignment]
    return int(result.rowcount)


def cancel_job(session: Session, *, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one is asked to stop at its next step."""
    job = get_job(session, job_id=job_id)
    now = utcnow()
    done = _update(
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
        done = _update(
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
