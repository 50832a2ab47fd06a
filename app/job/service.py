"""Job submission, reads, events and cancellation. The row is the truth; the queue only wakes."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput, NotFound, TooManyRequests
from app.core.idempotency import IdempotentRequest
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.core.queue import GPU_QUEUE, TRAINING_QUEUE, JobQueue
from app.core.store import get_store
from app.core.validation import plain_errors
from app.db.models import (
    Dataset,
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
from app.job.controls import check_controls, resolve_controls
from app.job.datasets import (
    dataset_for,
    dataset_summary,
    validation_dataset_for,
    validation_warnings,
)
from app.job.distill import DistillMethod, check_distill, defaults_method
from app.job.outbox import publish_pending
from app.job.quantize import quantize_inputs
from app.job.schemas import (
    DEFAULT_LEARNING_RATE,
    AdaLoraMethod,
    CheckpointRead,
    DerivedMethod,
    Hyperparameters,
    JobCreate,
    JobRead,
    JobSpec,
    LoraMethod,
    ResolvedResources,
)
from app.ml.tasks import DatasetSummary, TaskSpec, get_task
from app.registry.lineage import check_parent_labels, resolve_job_base

log = logging.getLogger("tuneserve.jobs")

# Fewest rows a split train set needs so both halves see every label at least once.
MIN_TRAIN_ROWS = 4
# AdaLoRA's default lora_alpha per unit of init_r (LoRA's is 2 per unit of r).
ADALORA_ALPHA_PER_RANK = 4.0
# A tenant at its job cap is told to come back after this long.
ACTIVE_CAP_RETRY_SECONDS = 60


def resolve_spec(spec: JobCreate, task: TaskSpec, train: DatasetSummary | None = None) -> JobSpec:
    """Fill the defaults that depend on other fields, so the stored spec says what will run."""
    hp = spec.hyperparameters
    # Fields the client left out take the task's defaults, then the method's learning rate.
    task_defaults = {
        k: v
        for k, v in task.default_hyperparameters(
            defaults_method(spec.method), train_rows=train.num_rows if train else None
        ).items()
        if k not in hp.model_fields_set
    }
    hp = Hyperparameters.model_validate({**hp.model_dump(), **task_defaults})
    if hp.learning_rate is None:
        rate = DEFAULT_LEARNING_RATE[defaults_method(spec.method)]
        hp = hp.model_copy(update={"learning_rate": rate})
    # "auto" values stay as asked: the worker resolves them when training starts.
    hp = resolve_controls(hp, task)
    method = spec.method
    if isinstance(method, LoraMethod) and method.lora_alpha is None:
        method = method.model_copy(update={"lora_alpha": 2.0 * method.r})
    if isinstance(method, AdaLoraMethod) and method.lora_alpha is None:
        # AdaLoRA starts its singular values at zero and learns slowly from there: 4 * init_r
        # beat 2 * init_r at lr 1e-2 on SST-2 (0.767 / 0.76 against 0.737 / 0.76, two seeds) and
        # CoNLL (0.716 / 0.725 against 0.708 / 0.719); README "Method defaults".
        method = method.model_copy(update={"lora_alpha": ADALORA_ALPHA_PER_RANK * method.init_r})
    if isinstance(method, DistillMethod):  # the job shows its teacher
        method = method.model_copy(update={"teacher": spec.base_model})
    try:
        # The train set's summary lets a task resolve "auto" options from the data (QA's
        # version_2_with_negative: true when the train set has unanswerable questions).
        options = task.options_model.model_validate(
            spec.task_options, context={"train_summary": train}
        )
    except ValidationError as exc:
        problems = plain_errors(exc.errors(), root=task.options_model, prefix=("task_options",))
        raise InvalidInput(
            "; ".join(p.message for p in problems) + f" (task '{task.name}')",
            field=problems[0].field,
            errors=[p.as_dict() for p in problems],
        ) from None
    # A job that needs a CUDA GPU (the submit-time device check passed it) goes where GPUs are.
    default_queue = GPU_QUEUE if hp.mixed_precision in ("bf16", "fp16") else TRAINING_QUEUE
    return JobSpec(
        method=method,
        hyperparameters=hp,
        task_options=options.model_dump(mode="json"),
        seed=spec.seed,
        resources=ResolvedResources(
            queue=spec.resources.queue or default_queue, processes=spec.resources.processes
        ),
    )


def default_learning_rate(task: TaskSpec, method: str, *, train_rows: int | None) -> float:
    """The learning rate a job of `task` and `method` trains with when it names none."""
    rate = task.default_hyperparameters(method, train_rows=train_rows).get("learning_rate")
    return float(rate) if isinstance(rate, int | float) else DEFAULT_LEARNING_RATE[method]


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
    if isinstance(spec.method, DerivedMethod):
        train, val, resolved = quantize_inputs(
            session, settings=settings, tenant=tenant, spec=spec, task=task
        )
    else:
        train, val, resolved = _training_inputs(
            session, settings=settings, tenant=tenant, spec=spec, task=task
        )
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


def _training_inputs(
    session: Session, *, settings: Settings, tenant: str, spec: JobCreate, task: TaskSpec
) -> tuple[Dataset, Dataset | None, JobSpec]:
    """A training job's datasets and resolved spec, every field checked (InvalidInput)."""
    if spec.train_dataset is None:
        raise InvalidInput(
            f"train_dataset: required for method '{spec.method.type}'", field="train_dataset"
        )
    if isinstance(spec.method, DistillMethod):  # base_model is the teacher
        base = check_distill(session, settings=settings, tenant=tenant, spec=spec)
    else:
        base = resolve_job_base(
            session, settings=settings, tenant=tenant, task=task.name, base_model=spec.base_model
        )
    _check_top_layers(spec, base.num_layers)
    _check_method(spec, task)
    train = dataset_for(
        session, spec.train_dataset, tenant=tenant, field="train_dataset", task=task.name
    )
    val: Dataset | None = None
    if spec.validation_dataset is not None:
        val = validation_dataset_for(
            session, spec.validation_dataset, tenant=tenant, task=task, train=train
        )
    else:
        if train.num_rows < MIN_TRAIN_ROWS:
            raise InvalidInput(
                f"train_dataset has {train.num_rows} rows; at least {MIN_TRAIN_ROWS} are needed "
                "to hold out a validation split (or give validation_dataset)",
                field="train_dataset",
            )
        task.check_compatible(dataset_summary(train), dataset_summary(train))
    check_parent_labels(base, train=train, validation=val)

    resolved = resolve_spec(spec, task, dataset_summary(train))
    check_controls(settings, resolved.hyperparameters, task)
    return train, val, resolved


def _check_top_layers(spec: JobCreate, num_layers: int | None) -> None:
    """`train_top_layers` may not exceed the base model's layer count (when its config says)."""
    wanted = getattr(spec.method, "train_top_layers", None)
    if wanted is not None and num_layers is not None and wanted > num_layers:
        raise InvalidInput(
            f"method.train_top_layers: {wanted} is more than the {num_layers} layers of "
            f"'{spec.base_model}'",
            field="method.train_top_layers",
        )


def _check_method(spec: JobCreate, task: TaskSpec) -> None:
    """The task must be able to train with the method; AdaLoRA's schedule must fit max_steps."""
    method = spec.method
    reason = task.unsupported_methods.get(method.type)
    if reason is not None:
        raise InvalidInput(
            f"method.type: '{method.type}' cannot train '{task.name}' models: {reason}",
            field="method.type",
        )
    steps = spec.hyperparameters.max_steps
    # Without max_steps the step count depends on the rows left after tokenizing and holding
    # out; the worker checks the schedule against it before training.
    if isinstance(method, AdaLoraMethod) and steps is not None:
        fixed = (method.tinit or 0) + (method.tfinal or 0)
        if fixed >= steps:
            raise InvalidInput(
                f"method.tinit: tinit + tfinal ({fixed}) must be less than "
                f"hyperparameters.max_steps ({steps}), to leave steps in which AdaLoRA "
                "reallocates ranks",
                field="method.tinit",
            )


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
