"""Job-row writes for one claimed attempt, each fenced by (id, attempt, status='running')."""

from __future__ import annotations

import logging
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import EventType, Job, JobEvent, JobStatus, Model, utcnow
from app.db.session import session_scope

log = logging.getLogger("tuneserve.worker")


def _rowcount(result: Any) -> int:
    return cast(CursorResult[Any], result).rowcount


class FenceLost(Exception):
    """The job row no longer belongs to this attempt (cancelled, re-claimed, gone): stop quietly."""


class JobCancelled(Exception):
    """The client asked this job to stop."""


def claim_job(session: Session, *, job_id: str, worker: str) -> int | None:
    """Take a queued job for this worker; the new attempt number, or None if it was not queued."""
    now = utcnow()
    claimed = _rowcount(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                attempt=Job.attempt + 1,
                started_at=now,
                heartbeat_at=now,
                worker=worker[:200],
                progress_step=0,
                error_code=None,
                error_message=None,
            )
            .execution_options(synchronize_session=False)
        )
    )
    if claimed != 1:
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id))
    assert attempt is not None
    session.add(
        JobEvent(
            job_id=job_id,
            type=EventType.STATUS,
            message=f"job running (attempt {attempt}, worker {worker})",
            data={"status": JobStatus.RUNNING, "attempt": attempt, "worker": worker},
        )
    )
    return attempt


class AttemptFence:
    """Writes on behalf of one attempt; each raises FenceLost once the row has moved on."""

    def __init__(self, factory: sessionmaker[Session], *, job_id: str, attempt: int) -> None:
        self.factory = factory
        self.job_id = job_id
        self.attempt = attempt

    def _owned(self) -> Any:
        return (Job.id == self.job_id, Job.attempt == self.attempt, Job.status == JobStatus.RUNNING)

    def _touch(self, session: Session, **values: Any) -> None:
        done = _rowcount(
            session.execute(
                update(Job)
                .where(*self._owned())
                .values(heartbeat_at=utcnow(), **values)
                .execution_options(synchronize_session=False)
            )
        )
        if done != 1:
            raise FenceLost(f"job {self.job_id} attempt {self.attempt} is no longer running")

    def _event(self, session: Session, kind: EventType, message: str, data: Any) -> None:
        session.add(JobEvent(job_id=self.job_id, type=kind, message=message, data=data))

    def job(self) -> Job:
        """A detached snapshot of the job row (it must still belong to this attempt)."""
        with session_scope(self.factory) as session:
            self._touch(session)
            job = session.get(Job, self.job_id)
            assert job is not None
            return job

    def update(self, **values: Any) -> None:
        with session_scope(self.factory) as session:
            self._touch(session, **values)

    def log(self, message: str, **data: Any) -> None:
        """A log line in the job's event stream."""
        with session_scope(self.factory) as session:
            self._touch(session)
            self._event(session, EventType.LOG, message, data or None)

    def metrics(self, message: str, data: dict[str, Any], **values: Any) -> None:
        """A metrics event, with optional job-row updates in the same transaction."""
        with session_scope(self.factory) as session:
            self._touch(session, **values)
            self._event(session, EventType.METRICS, message, data)

    def progress(self, **values: Any) -> bool:
        """Record progress and a heartbeat; True when cancellation was requested."""
        with session_scope(self.factory) as session:
            self._touch(session, **values)
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def raise_if_cancelled(self) -> None:
        if self.progress():
            raise JobCancelled()

    def finish(self, status: JobStatus, message: str, **values: Any) -> bool:
        """End the attempt in a terminal status; False if the row had already moved on."""
        try:
            with session_scope(self.factory) as session:
                self._touch(session, status=status, finished_at=utcnow(), **values)
                data = {"status": status, **{k: v for k, v in values.items() if k == "error_code"}}
                self._event(session, EventType.STATUS, message, data)
        except FenceLost:
            log.warning("job %s attempt %s: could not record %s", self.job_id, self.attempt, status)
            return False
        return True

    def succeed(self, model: Model, *, metrics: dict[str, Any]) -> None:
        """Register the model and mark the job succeeded, in one transaction."""
        session = self.factory()
        try:
            done = _rowcount(
                session.execute(
                    update(Job)
                    .where(*self._owned(), Job.cancel_requested.is_(False))
                    .values(
                        status=JobStatus.SUCCEEDED,
                        model_id=model.id,
                        metrics=metrics,
                        finished_at=utcnow(),
                        heartbeat_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                )
            )
            if done != 1:
                session.rollback()
                self.raise_if_cancelled()  # raises FenceLost itself when the row moved on
                raise FenceLost(f"job {self.job_id} changed while its model was being registered")
            session.add(model)
            self._event(
                session,
                EventType.STATUS,
                f"job succeeded; registered model {model.id}",
                {"status": JobStatus.SUCCEEDED, "model_id": model.id},
            )
            session.commit()
        except IntegrityError as exc:  # a model is already registered for this job
            session.rollback()
            raise FenceLost(f"job {self.job_id} already has a model") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
