"""Fine-tuning jobs submitted and read in OpenAI's terms, through Tuneserve's job service."""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import BadRequest, NotFound
from app.core.idempotency import IdempotentRequest
from app.core.pagination import encode_cursor, page_newest_first
from app.core.queue import JobQueue
from app.db.models import Job, JobEvent, Model, OpenAIJob, OpenAIJobMetadata
from app.db.session import get_by_id
from app.job import service as jobs
from app.job.controls import default_learning_rate
from app.job.schemas import JobCreate
from app.ml.tasks import get_task
from app.openai import translate
from app.openai.files import dataset_for_file
from app.openai.schemas import CheckpointOut, FineTuningJobCreate

DEFAULT_TASK = "classification"


def create_job(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    tenant: str,
    body: FineTuningJobCreate,
    idempotency: IdempotentRequest | None,
) -> Job:
    """Translate the request, parse its files for the task, and submit the job (Replay for a
    retried Idempotency-Key)."""
    if idempotency is not None:
        idempotency.replay_if_seen(session)
    base_model, model_task = translate.resolve_model(
        session, settings=settings, tenant=tenant, name=body.model
    )
    task = get_task(body.task or model_task or DEFAULT_TASK)
    method, hp_in = translate.training_method(body)
    train = dataset_for_file(
        session,
        settings=settings,
        tenant=tenant,
        file_id=body.training_file,
        task=task.name,
        field="training_file",
    )
    validation = (
        dataset_for_file(
            session,
            settings=settings,
            tenant=tenant,
            file_id=body.validation_file,
            task=task.name,
            field="validation_file",
        )
        if body.validation_file is not None
        else None
    )
    method_type = str(getattr(method, "type", "full"))
    default_rate = default_learning_rate(task, method_type, train_rows=train.num_rows)
    hp = translate.hyperparameters(hp_in, default_learning_rate=default_rate)
    try:
        spec = JobCreate(
            task=task.name,
            base_model=base_model,
            train_dataset=train.id,
            validation_dataset=validation.id if validation is not None else None,
            method=method.model_dump(),  # type: ignore[arg-type]  # validated as the union
            hyperparameters=hp,
            task_options=body.task_options or {},
            seed=body.seed if body.seed is not None else 42,
        )
    except ValidationError as exc:
        raise translate.invalid_input(exc, JobCreate, ()) from None
    asked = (hp_in.model_dump(exclude_none=True) if hp_in is not None else {}) or {}

    def attach(s: Session, job: Job) -> None:
        s.add(
            OpenAIJob(
                job_id=job.id,
                model=body.model,
                training_file=body.training_file,
                validation_file=body.validation_file,
                hyperparameters={"asked": asked, "default_learning_rate": default_rate},
                suffix=body.suffix,
                job_metadata=body.metadata,
            )
        )
        s.flush()
        for key, value in (body.metadata or {}).items():
            s.add(OpenAIJobMetadata(job_id=job.id, key=key, value=value))

    return jobs.submit_job(
        session,
        settings=settings,
        queue=queue,
        tenant=tenant,
        spec=spec,
        idempotency=idempotency,
        attach=attach,
    )


def facts_of(session: Session, job_ids: list[str]) -> dict[str, OpenAIJob]:
    """The OpenAI terms of these jobs (those submitted through /openai/v1)."""
    if not job_ids:
        return {}
    rows = session.scalars(select(OpenAIJob).where(OpenAIJob.job_id.in_(job_ids)))
    return {row.job_id: row for row in rows}


def list_jobs(
    session: Session, *, tenant: str, limit: int, after: str | None, metadata: dict[str, str]
) -> tuple[list[Job], bool]:
    """The tenant's jobs, newest first, with every metadata pair given; whether more follow."""
    stmt = select(Job).where(Job.tenant_id == tenant)
    for key, value in metadata.items():
        if "\x00" in key or "\x00" in value:
            return [], False  # no stored pair holds one
        stmt = stmt.where(
            exists().where(
                OpenAIJobMetadata.job_id == Job.id,
                OpenAIJobMetadata.key == key,
                OpenAIJobMetadata.value == value,
            )
        )
    cursor = None
    if after is not None:
        mark = get_by_id(session, Job, after)
        if mark is None or mark.tenant_id != tenant:
            raise BadRequest(f"after: no such job: '{after[:64]}'", field="after")
        cursor = encode_cursor(mark.created_at, mark.id)
    rows, next_cursor = page_newest_first(session, stmt, Job, limit=limit, after=cursor)
    return rows, next_cursor is not None


def list_events(
    session: Session, *, tenant: str, job_id: str, limit: int, after: str | None
) -> tuple[list[JobEvent], bool]:
    """A job's events, newest first (as OpenAI lists them), before event `after`."""
    jobs.get_job(session, tenant=tenant, job_id=job_id)
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id < translate.event_id(after))
    rows = list(session.scalars(stmt.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_checkpoints(
    session: Session, *, settings: Settings, tenant: str, job_id: str
) -> list[CheckpointOut]:
    """Newest first: a succeeded job's registered model, or a running job's resumable ones."""
    job = jobs.get_job(session, tenant=tenant, job_id=job_id)
    found = []
    model = get_by_id(session, Model, job.model_id) if job.model_id else None
    if model is not None:
        found.append(translate.final_checkpoint(job, model))
    stored = jobs.list_checkpoints(session, settings=settings, tenant=tenant, job_id=job_id)
    found += [translate.running_checkpoint(job, c) for c in reversed(stored)]
    return found


def page_after(
    items: list[CheckpointOut], *, after: str | None, limit: int
) -> tuple[list[CheckpointOut], bool]:
    """One page of an in-memory list after the item with id `after`."""
    if after is not None:
        ids = [c.id for c in items]
        if after not in ids:
            raise NotFound(f"no such checkpoint: '{after[:80]}'", field="after")
        items = items[ids.index(after) + 1 :]
    return items[:limit], len(items) > limit
