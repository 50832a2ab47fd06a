"""A sweep's trials: submitted as ordinary jobs, and their ends told to the study."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import ServiceError, TooManyRequests
from app.core.queue import JobQueue
from app.db.models import Job, JobStatus, Sweep, SweepTrial, utcnow
from app.db.session import rows_changed
from app.job.controls import LOSS_METRIC
from app.job.service import submit_job
from app.sweep.space import Space, find_spaces, job_create, materialize

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("tuneserve.sweeps")


class TrialState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PRUNED = "pruned"
    FAILED = "failed"
    CANCELLED = "cancelled"


def metric_key(metric: str) -> str:
    """Where a job's metrics hold the sweep's metric (the validation loss is `eval_loss`)."""
    return "eval_loss" if metric == LOSS_METRIC else metric


def spaces_of(sweep: Sweep) -> list[Space]:
    return find_spaces(sweep.spec)


def submit_trial(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    sweep: Sweep,
    number: int,
    params: dict[str, Any],
    add_sweep: bool = False,
) -> Job | None:
    """Submit trial `number` as a job through the job service, its trial row in the same
    transaction. None when another driver recorded the trial first. A refusal of the job (its
    dataset deleted since, ...) raises ServiceError; the tenant's job cap, TooManyRequests."""
    spec = materialize(sweep.spec, spaces_of(sweep), params)
    create = job_create(spec)

    def attach(s: Session, job: Job) -> None:
        if add_sweep:
            s.add(sweep)
        job.sweep_id = sweep.id
        s.add(
            SweepTrial(
                sweep_id=sweep.id,
                number=number,
                job_id=job.id,
                params=params,
                state=TrialState.RUNNING,
            )
        )

    try:
        return submit_job(
            session,
            settings=settings,
            queue=queue,
            tenant=sweep.tenant_id,
            spec=create,
            attach=attach,
        )
    except IntegrityError:
        session.rollback()  # the trial row exists: a concurrent driver submitted it
        return None


def record_refused(
    session: Session, *, sweep: Sweep, number: int, params: dict[str, Any], reason: str
) -> None:
    """A trial whose job the service refused: recorded failed, with why."""
    now = utcnow()
    session.add(
        SweepTrial(
            sweep_id=sweep.id,
            number=number,
            params=params,
            state=TrialState.FAILED,
            note=f"its job was refused: {reason}",
            finished_at=now,
        )
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()


@dataclass(frozen=True)
class Outcome:
    state: str
    value: float | None
    note: str | None = None


def outcome(sweep: Sweep, job: Job | None) -> Outcome | None:
    """How a trial ended, from its job; None while the job is queued or running."""
    if job is None:
        return Outcome(TrialState.CANCELLED, None, "its job was deleted")
    status = JobStatus(job.status)
    if not status.is_terminal:
        return None
    value = _finite((job.metrics or {}).get(metric_key(sweep.metric)))
    if status == JobStatus.SUCCEEDED:
        if value is None:
            return Outcome(TrialState.FAILED, None, f"its job reported no '{sweep.metric}'")
        return Outcome(TrialState.SUCCEEDED, value)
    if status == JobStatus.PRUNED:
        return Outcome(TrialState.PRUNED, value)
    if status == JobStatus.CANCELLED:
        return Outcome(TrialState.CANCELLED, None)
    return Outcome(TrialState.FAILED, None, job.error_message)


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def tell_ended(session: Session, *, study: optuna.Study, sweep: Sweep) -> int:
    """Tell the study how each running trial whose job has ended went; how many were told.

    Telling first and recording second makes this safe to repeat: a trial told before a crash
    is skipped by Optuna and recorded the next time."""
    from optuna.trial import TrialState as OptunaState

    rows = session.execute(
        select(SweepTrial, Job)
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep.id, SweepTrial.state == TrialState.RUNNING)
        .order_by(SweepTrial.number)
    ).all()
    ended = [(trial, found) for trial, job in rows if (found := outcome(sweep, job)) is not None]
    session.commit()  # no transaction of ours open while Optuna writes (SQLite)
    for trial, found in ended:
        if found.state == TrialState.SUCCEEDED:
            study.tell(trial.number, found.value, skip_if_finished=True)
        elif found.state == TrialState.PRUNED:
            study.tell(trial.number, state=OptunaState.PRUNED, skip_if_finished=True)
        else:
            study.tell(trial.number, state=OptunaState.FAIL, skip_if_finished=True)
        rows_changed(
            session,
            update(SweepTrial)
            .where(
                SweepTrial.sweep_id == sweep.id,
                SweepTrial.number == trial.number,
                SweepTrial.state == TrialState.RUNNING,
            )
            .values(state=found.state, value=found.value, note=found.note, finished_at=utcnow())
            .execution_options(synchronize_session=False),
        )
        session.commit()
        log.info("sweep %s: trial %s %s (%s)", sweep.id, trial.number, found.state, found.value)
    return len(ended)


def try_submit(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    study: optuna.Study,
    sweep: Sweep,
    number: int,
    params: dict[str, Any],
) -> bool:
    """Submit an asked trial; a refused one is told failed. False when the tenant's job cap
    holds it back (the trial stays asked, and a later advance submits it)."""
    from optuna.trial import TrialState as OptunaState

    try:
        submit_trial(
            session, settings=settings, queue=queue, sweep=sweep, number=number, params=params
        )
    except TooManyRequests:
        session.rollback()
        return False
    except ServiceError as exc:
        session.rollback()
        log.warning("sweep %s: trial %s refused: %s", sweep.id, number, exc.message)
        record_refused(session, sweep=sweep, number=number, params=params, reason=exc.message)
        study.tell(number, state=OptunaState.FAIL, skip_if_finished=True)
    return True
