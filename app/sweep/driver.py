"""The sweep driver: tells the study how ended trials went, asks it for the next ones, and ends
the sweep. The relay runs it every `SWEEP_INTERVAL_SECONDS`; the API runs it once after a sweep
is created or cancelled.

Everything it needs is in the database (the sweep's rows, its trials' jobs and the Optuna
study), so it picks up after any restart. One driver at a time advances a sweep: it takes a
lease with a conditional UPDATE, renewed before each new trial, and each trial row is unique
by (sweep, number), so two drivers never submit the same trial twice, nor more than `parallel`.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, NotFound
from app.core.queue import JobQueue
from app.db.models import (
    EventType,
    Job,
    JobEvent,
    JobStatus,
    Sweep,
    SweepStatus,
    SweepTrial,
    utcnow,
)
from app.db.session import rows_changed
from app.job.service import cancel_job
from app.sweep import study as studies
from app.sweep.trials import TrialState, spaces_of, tell_ended, try_submit

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("tuneserve.sweeps")

# A driver that dies holding a sweep's lease holds it at most this long.
LEASE_SECONDS = 60.0
# How often the relay looks for sweeps with work to do (reading rows only, no Optuna).
SWEEP_INTERVAL_SECONDS = 2.0


def driver_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:64]


def advance_sweeps(
    session: Session, *, settings: Settings, queue: JobQueue, now: datetime | None = None
) -> list[str]:
    """One pass over the sweeps that have not ended; the ids of those advanced."""
    ids = session.scalars(
        select(Sweep.id).where(Sweep.status.in_([SweepStatus.RUNNING, SweepStatus.CANCELLING]))
    ).all()
    session.commit()
    advanced = []
    for sweep_id in ids:
        if not needs_advance(session, sweep_id=sweep_id, now=now or utcnow()):
            continue
        try:
            if advance_sweep(session, settings=settings, queue=queue, sweep_id=sweep_id, now=now):
                advanced.append(sweep_id)
        except SQLAlchemyError:
            raise  # a database outage: the relay reports it and tries again
        except Exception:  # one sweep's trouble (the study's storage) stops no other
            session.rollback()
            log.exception("sweep %s: could not advance; trying again next pass", sweep_id)
    return advanced


def needs_advance(session: Session, *, sweep_id: str, now: datetime) -> bool:
    """Cheap checks, without Optuna: is there a trial to tell, one to ask, or an end to make?"""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or SweepStatus(sweep.status).is_terminal:
        return False
    rows = session.execute(
        select(SweepTrial.state, Job.status)
        .outerjoin(Job, Job.id == SweepTrial.job_id)
        .where(SweepTrial.sweep_id == sweep_id)
    ).all()
    session.commit()
    running = [job for state, job in rows if state == TrialState.RUNNING]
    if any(job is None or JobStatus(job).is_terminal for job in running):
        return True  # a trial to tell
    if sweep.status == SweepStatus.CANCELLING or _past_deadline(sweep, now):
        return True  # trials to cancel, or the end to make
    if not running:
        return True  # trials to ask, or the end to make
    return len(running) < sweep.parallel and len(rows) < sweep.max_trials  # a trial to ask


def _past_deadline(sweep: Sweep, now: datetime) -> bool:
    if sweep.time_budget_s is None:
        return False
    return now >= sweep.created_at + timedelta(seconds=sweep.time_budget_s)


def _take_lease(session: Session, *, sweep_id: str, owner: str, now: datetime) -> bool:
    taken = rows_changed(
        session,
        update(Sweep)
        .where(
            Sweep.id == sweep_id,
            Sweep.status.in_([SweepStatus.RUNNING, SweepStatus.CANCELLING]),
            or_(Sweep.lease_until.is_(None), Sweep.lease_until < now, Sweep.lease_owner == owner),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=LEASE_SECONDS))
        .execution_options(synchronize_session=False),
    )
    session.commit()
    return taken == 1


def _release_lease(session: Session, *, sweep_id: str, owner: str) -> None:
    session.rollback()
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    session.commit()


def advance_sweep(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    sweep_id: str,
    now: datetime | None = None,
) -> bool:
    """Advance one sweep if no other driver holds it; False when one does (or it has ended)."""
    owner = driver_name()
    if not _take_lease(session, sweep_id=sweep_id, owner=owner, now=now or utcnow()):
        return False
    try:
        _advance(session, settings=settings, queue=queue, sweep_id=sweep_id, owner=owner, now=now)
    finally:
        _release_lease(session, sweep_id=sweep_id, owner=owner)
    return True


def _advance(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    sweep_id: str,
    owner: str,
    now: datetime | None,
) -> None:
    sweep = session.get(Sweep, sweep_id)
    assert sweep is not None
    session.commit()
    study = studies.load_study(settings, sweep)
    _reconcile(session, settings=settings, queue=queue, study=study, sweep=sweep)
    tell_ended(session, study=study, sweep=sweep)
    stopping = sweep.status == SweepStatus.CANCELLING or _past_deadline(sweep, now or utcnow())
    if stopping:
        _cancel_trials(session, sweep=sweep)
        tell_ended(session, study=study, sweep=sweep)  # the queued ones ended at once
    else:
        _ask(session, settings=settings, queue=queue, sweep=sweep, owner=owner, now=now)
    running, recorded = _counts(session, sweep_id)
    if running == 0 and (stopping or max(recorded, _asked(settings, sweep)) >= sweep.max_trials):
        _finish(session, sweep=sweep, now=now or utcnow())


def _asked(settings: Settings, sweep: Sweep) -> int:
    """Trials the study has asked for (recorded as trial rows or not)."""
    return len(studies.load_study(settings, sweep).get_trials(deepcopy=False))


def _counts(session: Session, sweep_id: str) -> tuple[int, int]:
    """Trials running, and trials recorded in all."""
    states = session.scalars(select(SweepTrial.state).where(SweepTrial.sweep_id == sweep_id)).all()
    session.commit()
    return sum(s == TrialState.RUNNING for s in states), len(states)


def _reconcile(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    study: optuna.Study,
    sweep: Sweep,
) -> None:
    """Trials the study asked for that have no job yet (a driver stopped between asking and
    submitting, or the tenant's job cap held them back): submitted now, or, when the sweep is
    stopping, told failed. A trial recorded as ended but still running in the study is told."""
    from optuna.trial import TrialState as OptunaState

    recorded = {
        t.number: t.state
        for t in session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id))
    }
    session.commit()
    asked = study.get_trials(deepcopy=False, states=(OptunaState.RUNNING,))
    stopping = sweep.status != SweepStatus.RUNNING
    for trial in asked:
        state = recorded.get(trial.number)
        if state is None and not stopping:
            try_submit(
                session,
                settings=settings,
                queue=queue,
                study=study,
                sweep=sweep,
                number=trial.number,
                params=dict(trial.params),
            )
        elif state != TrialState.RUNNING:
            study.tell(trial.number, state=OptunaState.FAIL, skip_if_finished=True)


def _ask(
    session: Session,
    *,
    settings: Settings,
    queue: JobQueue,
    sweep: Sweep,
    owner: str,
    now: datetime | None,
) -> None:
    """Ask the study for trials and submit them, up to `parallel` running and `max_trials`."""
    spaces = spaces_of(sweep)
    distributions = {s.name: s.distribution() for s in spaces}
    while True:
        running, _ = _counts(session, sweep.id)
        asked = _asked(settings, sweep)
        if running >= sweep.parallel or asked >= sweep.max_trials:
            return
        # Renew the lease before each trial: a driver that lost it stops here.
        if not _take_lease(session, sweep_id=sweep.id, owner=owner, now=now or utcnow()):
            return
        study = studies.load_study(settings, sweep, asked=asked)
        trial = study.ask(distributions)
        if not try_submit(
            session,
            settings=settings,
            queue=queue,
            study=study,
            sweep=sweep,
            number=trial.number,
            params=dict(trial.params),
        ):
            return  # the job cap: the asked trial waits for the next advance


def _cancel_trials(session: Session, *, sweep: Sweep) -> None:
    """Cancel the sweep's queued and running trials (a running one stops at its next step)."""
    jobs = session.scalars(
        select(Job.id).where(
            Job.sweep_id == sweep.id,
            Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]),
            Job.cancel_requested.is_(False),
        )
    ).all()
    session.commit()
    for job_id in jobs:
        try:
            cancel_job(session, tenant=sweep.tenant_id, job_id=job_id)
        except (Conflict, NotFound):
            session.rollback()  # it ended meanwhile


def best_trial(session: Session, sweep: Sweep) -> SweepTrial | None:
    """The succeeded trial with the best value (the earliest of equals)."""
    trials = session.scalars(
        select(SweepTrial)
        .where(SweepTrial.sweep_id == sweep.id, SweepTrial.state == TrialState.SUCCEEDED)
        .order_by(SweepTrial.number)
    ).all()
    scored = [t for t in trials if t.value is not None]
    if not scored:
        return None
    sign = 1.0 if sweep.direction == "maximize" else -1.0
    return max(scored, key=lambda t: (sign * (t.value or 0.0), -t.number))


def _finish(session: Session, *, sweep: Sweep, now: datetime) -> None:
    """End the sweep: its status, why it stopped, and the best trial's model marked."""
    from app.sweep.marking import mark_best

    best = best_trial(session, sweep)
    if sweep.status == SweepStatus.CANCELLING:
        status, reason = SweepStatus.CANCELLED, "cancelled"
    else:
        status = SweepStatus.SUCCEEDED if best is not None else SweepStatus.FAILED
        reason = "time_budget" if _past_deadline(sweep, now) else "max_trials"
    job = session.get(Job, best.job_id) if best is not None and best.job_id else None
    values = {
        "status": status,
        "stop_reason": reason,
        "finished_at": now,
        "best_trial": best.number if best is not None else None,
        "best_value": best.value if best is not None else None,
        "best_job_id": best.job_id if best is not None else None,
        "best_model_id": job.model_id if job is not None else None,
    }
    ended = rows_changed(
        session,
        update(Sweep)
        .where(
            Sweep.id == sweep.id, Sweep.status.in_([SweepStatus.RUNNING, SweepStatus.CANCELLING])
        )
        .values(**values)
        .execution_options(synchronize_session=False),
    )
    if ended != 1:
        session.rollback()
        return
    if job is not None:
        session.add(
            JobEvent(
                job_id=job.id,
                type=EventType.LOG,
                message=f"best trial ({best.number if best else ''}) of sweep {sweep.id}: "
                f"{sweep.metric} {values['best_value']}",
                data={"sweep_id": sweep.id, "best_trial": values["best_trial"]},
            )
        )
    session.commit()
    session.refresh(sweep)
    log.info("sweep %s %s (%s): best trial %s", sweep.id, status, reason, values["best_trial"])
    if job is not None and job.model_id and sweep.alias:
        mark_best(session, sweep=sweep, model_id=job.model_id)
