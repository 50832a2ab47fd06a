"""Sweep submission, reads and cancellation. Trials are jobs; the driver advances the sweep."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InvalidInput, NotFound
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.core.queue import JobQueue
from app.db.models import Job, Sweep, SweepStatus, SweepTrial, new_id, utcnow
from app.db.session import get_by_id, rows_changed
from app.job.controls import early_stopping_metrics, greater_is_better
from app.job.schemas import JobError
from app.ml.tasks import get_task
from app.registry.aliases import check_alias_name
from app.sweep import driver
from app.sweep import study as studies
from app.sweep.schemas import SweepCreate, SweepRead, SweepTrialRead
from app.sweep.space import check_samples, find_spaces
from app.sweep.trials import TrialState, submit_trial

log = logging.getLogger("tuneserve.sweeps")


def _metric(body: SweepCreate, task_name: str) -> tuple[str, str]:
    task = get_task(task_name)
    metric = body.metric or task.primary_metric
    valid = early_stopping_metrics(task)
    if metric not in valid:
        raise InvalidInput(
            f"metric: task '{task.name}' does not report '{metric}'; expected one of {valid}",
            field="metric",
        )
    default = "maximize" if greater_is_better(metric) else "minimize"
    return metric, body.direction or default


def create_sweep(
    session: Session, *, settings: Settings, queue: JobQueue, tenant: str, body: SweepCreate
) -> Sweep:
    """Check the spec and its spaces, create the study, and submit the first trial through the
    job service in the sweep's own transaction (so a spec the service refuses creates nothing);
    then the driver fills up to `parallel`."""
    spec = body.job_spec()
    spaces = find_spaces(spec)
    if not spaces:
        raise InvalidInput(
            'hyperparameters: a sweep needs at least one search space, e.g. "learning_rate": '
            '{"loguniform": [1e-5, 1e-3]}',
            field="hyperparameters",
        )
    check_samples(spec, spaces)
    metric, direction = _metric(body, body.task)
    if body.alias is not None:
        try:
            check_alias_name(body.alias)
        except InvalidInput as exc:
            raise InvalidInput(exc.message, field="alias") from None
    sweep = Sweep(
        id=new_id("swp"),
        tenant_id=tenant,
        task=body.task,
        status=SweepStatus.RUNNING,
        spec=spec,
        metric=metric,
        direction=direction,
        max_trials=body.max_trials,
        parallel=body.parallel,
        time_budget_s=body.time_budget_s,
        pruning=body.pruning.model_dump() if body.pruning is not None else None,
        alias=body.alias,
        created_at=utcnow(),
    )
    studies.create_study(settings, sweep)
    try:
        study = studies.load_study(settings, sweep)
        trial = study.ask({s.name: s.distribution() for s in spaces})
        submit_trial(
            session,
            settings=settings,
            queue=queue,
            sweep=sweep,
            number=trial.number,
            params=dict(trial.params),
            add_sweep=True,
        )
    except BaseException:
        session.rollback()
        studies.delete_study(settings, sweep.id)
        raise
    log.info("sweep %s created: %s trials, %s at once", sweep.id, sweep.max_trials, sweep.parallel)
    _advance_now(session, settings=settings, queue=queue, sweep_id=sweep.id)
    session.refresh(sweep)
    return sweep


def _advance_now(session: Session, *, settings: Settings, queue: JobQueue, sweep_id: str) -> None:
    """Advance the sweep in this request, best effort: the relay does it otherwise."""
    try:
        driver.advance_sweep(session, settings=settings, queue=queue, sweep_id=sweep_id)
    except Exception:  # noqa: BLE001  (the relay's driver catches up)
        session.rollback()
        log.warning("sweep %s: advance after the request failed", sweep_id, exc_info=True)


def get_sweep(session: Session, *, tenant: str, sweep_id: str) -> Sweep:
    """The tenant's sweep, or NotFound (also for another tenant's)."""
    sweep = get_by_id(session, Sweep, sweep_id)
    if sweep is None or sweep.tenant_id != tenant:
        raise NotFound(f"sweep '{sweep_id}' does not exist")
    return sweep


def list_sweeps(
    session: Session, *, tenant: str, limit: int, after: str | None
) -> tuple[list[Sweep], str | None]:
    """The tenant's sweeps, newest first."""
    stmt = select(Sweep).where(Sweep.tenant_id == tenant)
    return page_newest_first(session, stmt, Sweep, limit=min(limit, MAX_LIMIT), after=after)


def cancel_sweep(
    session: Session, *, settings: Settings, queue: JobQueue, tenant: str, sweep_id: str
) -> Sweep:
    """No trial starts any more; queued trials are cancelled at once, running ones stop at their
    next step, and the sweep ends `cancelled` (with the best trial so far) once they have."""
    sweep = get_sweep(session, tenant=tenant, sweep_id=sweep_id)
    changed = rows_changed(
        session,
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status == SweepStatus.RUNNING)
        .values(status=SweepStatus.CANCELLING)
        .execution_options(synchronize_session=False),
    )
    session.commit()
    session.refresh(sweep)
    if not changed and sweep.status != SweepStatus.CANCELLING:
        raise Conflict(
            f"sweep '{sweep_id}' has already {sweep.status} and cannot be cancelled",
            status=sweep.status,
        )
    _advance_now(session, settings=settings, queue=queue, sweep_id=sweep_id)
    session.refresh(sweep)
    return sweep


def sweep_read(session: Session, sweep: Sweep, *, now: datetime | None = None) -> SweepRead:
    """The API's view of a sweep: its trials with their jobs, and the best so far."""
    now = now or utcnow()
    rows = session.execute(
        select(SweepTrial, Job)
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id)
        .order_by(SweepTrial.number)
    ).all()
    trials = [_trial_read(trial, job, now=now) for trial, job in rows]
    counts = {state.value: 0 for state in TrialState}
    for t in trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    best = driver.best_trial(session, sweep)
    end = sweep.finished_at or now
    return SweepRead(
        id=sweep.id,
        task=sweep.task,
        status=sweep.status,
        stop_reason=sweep.stop_reason,
        spec=sweep.spec,
        search_space={s.name: {s.kind: list(s.values)} for s in find_spaces(sweep.spec)},
        metric=sweep.metric,
        direction=sweep.direction,
        max_trials=sweep.max_trials,
        parallel=sweep.parallel,
        time_budget_s=sweep.time_budget_s,
        pruning=sweep.pruning,
        alias=sweep.alias,
        trial_counts=counts,
        trials=trials,
        best=next((t for t in trials if best is not None and t.number == best.number), None),
        best_model_id=sweep.best_model_id,
        notes=sweep.notes or [],
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
        elapsed_s=round((end - sweep.created_at).total_seconds(), 1),
    )


def _trial_read(trial: SweepTrial, job: Job | None, *, now: datetime) -> SweepTrialRead:
    duration = None
    if job is not None and job.started_at is not None:
        duration = round(((job.finished_at or now) - job.started_at).total_seconds(), 1)
    error = None
    if job is not None and job.error_code:
        error = JobError(code=job.error_code, message=job.error_message or "")
    return SweepTrialRead(
        number=trial.number,
        state=trial.state,
        params=trial.params,
        value=trial.value,
        job_id=trial.job_id,
        job_status=job.status if job is not None else None,
        model_id=job.model_id if job is not None else None,
        metrics=job.metrics if job is not None else None,
        duration_s=duration,
        error=error,
        note=trial.note,
        created_at=trial.created_at,
        finished_at=trial.finished_at,
    )
