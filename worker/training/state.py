"""Job-row writes for one claimed attempt, each fenced by (id, attempt, status='running')."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.db.models import EventType, Job, JobEvent, JobMessage, JobStatus, Model, utcnow
from app.db.session import rows_changed, session_scope

log = logging.getLogger("tuneserve.worker")
T = TypeVar("T")


UNREACHABLE = (OperationalError, InterfaceError)


@contextmanager
def _best_effort(what: str) -> Iterator[None]:
    """Swallow a database outage for a write that the next one supersedes."""
    try:
        yield
    except UNREACHABLE as exc:
        log.warning("database unreachable; %s not recorded: %s", what, type(exc).__name__)


def retry_while_unreachable(write: Callable[[], T], *, seconds: float) -> T:
    """Run `write`, retrying with backoff while the database is unreachable, for up to `seconds`."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            return write()
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("database unreachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


class FenceLost(Exception):
    """The job row no longer belongs to this attempt (cancelled, re-claimed, gone): stop quietly."""


class JobCancelled(Exception):
    """The client asked this job to stop."""


class AttemptLost(Exception):
    """The attempt cannot go on for a reason outside the job (a training process died): the job
    goes back to the queue for another attempt, which resumes from its newest checkpoint."""


def claim_job(session: Session, *, job_id: str, worker: str) -> int | None:
    """Take a queued job for this worker; the new attempt number, or None if it was not queued."""
    now = utcnow()
    claimed = rows_changed(
        session,
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            started_at=now,
            heartbeat_at=now,
            worker=worker[:200],
            progress_step=0,
            # The new attempt's own figures replace these once it starts training.
            progress_detail=None,
            error_code=None,
            error_message=None,
            training_warnings=None,
        )
        .execution_options(synchronize_session=False),
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

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        job_id: str,
        attempt: int,
        db_retry_seconds: float = 300.0,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.attempt = attempt
        self.db_retry_seconds = db_retry_seconds

    def _owned(self) -> Any:
        return (Job.id == self.job_id, Job.attempt == self.attempt, Job.status == JobStatus.RUNNING)

    def _touch(self, session: Session, **values: Any) -> None:
        done = rows_changed(
            session,
            update(Job)
            .where(*self._owned())
            .values(heartbeat_at=utcnow(), **values)
            .execution_options(synchronize_session=False),
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

    def heartbeat(self) -> None:
        """Stamp heartbeat_at; FenceLost once the row has moved on."""
        self.update()

    def log(self, message: str, **data: Any) -> None:
        """A log line in the job's event stream (skipped while the database is unreachable)."""
        with _best_effort("log line"), session_scope(self.factory) as session:
            self._touch(session)
            self._event(session, EventType.LOG, message, data or None)

    def warning(self, message: str, **data: Any) -> None:
        """A warning in the job's event stream (skipped while the database is unreachable)."""
        with _best_effort("warning"), session_scope(self.factory) as session:
            self._touch(session)
            self._event(session, EventType.WARNING, message, data or None)

    def metrics(self, message: str, data: dict[str, Any], **values: Any) -> None:
        """A metrics event, with optional job-row updates in the same transaction."""
        self.metrics_batch([(message, data)], **values)

    def metrics_batch(self, events: list[tuple[str, dict[str, Any]]], **values: Any) -> bool:
        """Metrics events (message, data) in one transaction with optional job-row updates;
        False when the database was unreachable (nothing was written)."""
        with _best_effort("metrics"), session_scope(self.factory) as session:
            self._touch(session, **values)
            for message, data in events:
                self._event(session, EventType.METRICS, message, data)
            return True
        return False

    def progress(self, **values: Any) -> bool:
        """Record progress and a heartbeat; True when cancellation was requested."""
        with _best_effort("progress"), session_scope(self.factory) as session:
            self._touch(session, **values)
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))
        return False  # the database is unreachable: keep training, try again next time

    def requeue(self, reason: str) -> bool:
        """Hand the job back to the queue (the worker is stopping); False if it moved on."""
        try:
            with session_scope(self.factory) as session:
                self._touch(session, status=JobStatus.QUEUED, worker=None)
                message = f"{reason}; job re-queued after attempt {self.attempt}"
                data = {"status": JobStatus.QUEUED, "attempt": self.attempt, "reason": reason}
                self._event(session, EventType.STATUS, message, data)
                session.add(JobMessage(job_id=self.job_id, reason="requeue"))
        except FenceLost:
            return False
        return True

    def retry(self, reason: str, *, max_attempts: int, code: str) -> JobStatus | None:
        """Re-queue the job for another attempt, or fail it with `code` once this was its last;
        the status it ends in, or None if the row had moved on."""
        if self.attempt < max_attempts:
            return JobStatus.QUEUED if self.requeue(reason) else None
        message = f"{reason}; all {max_attempts} attempts are used"
        ended = self.finish(
            JobStatus.FAILED, f"job failed: {message}", error_code=code, error_message=message
        )
        return JobStatus.FAILED if ended else None

    def training_started(
        self, *, hyperparameters: dict[str, Any], parameters: dict[str, int]
    ) -> None:
        """Record the resolved hyperparameters and parameter counts on the job row (retried while
        the database is unreachable: a later attempt reuses them to resume consistently)."""

        def write() -> None:
            with session_scope(self.factory) as session:
                self._touch(
                    session, resolved_hyperparameters=hyperparameters, parameters=parameters
                )

        retry_while_unreachable(write, seconds=self.db_retry_seconds)

    def raise_if_cancelled(self) -> None:
        if self.progress():
            raise JobCancelled()

    def finish(self, status: JobStatus, message: str, **values: Any) -> bool:
        """End the attempt in a terminal status; False if the row had already moved on."""

        def write() -> None:
            with session_scope(self.factory) as session:
                self._touch(session, status=status, finished_at=utcnow(), **values)
                data = {"status": status, **{k: v for k, v in values.items() if k == "error_code"}}
                self._event(session, EventType.STATUS, message, data)

        try:
            retry_while_unreachable(write, seconds=self.db_retry_seconds)
        except FenceLost:
            log.warning("job %s attempt %s: could not record %s", self.job_id, self.attempt, status)
            return False
        return True

    def succeed(self, model: Model, *, metrics: dict[str, Any]) -> None:
        """Register the model and mark the job succeeded, in one transaction (retried while the
        database is unreachable, so a finished training is not lost to a short outage)."""
        retry_while_unreachable(
            lambda: self._succeed(model, metrics=metrics), seconds=self.db_retry_seconds
        )

    def _succeed(self, model: Model, *, metrics: dict[str, Any]) -> None:
        session = self.factory()
        try:
            done = rows_changed(
                session,
                update(Job)
                .where(*self._owned(), Job.cancel_requested.is_(False))
                .values(
                    status=JobStatus.SUCCEEDED,
                    model_id=model.id,
                    metrics=metrics,
                    baseline_metrics=model.baseline_metrics,
                    quality=model.quality,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
                .execution_options(synchronize_session=False),
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


class FollowerFence(AttemptFence):
    """The fence of a training process other than rank 0: it reads the job but writes nothing
    (rank 0 alone records events, progress and the model; the launching worker heartbeats)."""

    def job(self) -> Job:
        with session_scope(self.factory) as session:
            job = session.get(Job, self.job_id)
            if job is None or job.attempt != self.attempt or job.status != JobStatus.RUNNING:
                raise FenceLost(f"job {self.job_id} attempt {self.attempt} is no longer running")
            return job

    def update(self, **values: Any) -> None:
        return None

    def log(self, message: str, **data: Any) -> None:
        return None

    def warning(self, message: str, **data: Any) -> None:
        return None

    def metrics_batch(self, events: list[tuple[str, dict[str, Any]]], **values: Any) -> bool:
        return True

    def progress(self, **values: Any) -> bool:
        return False  # rank 0 and the launching worker watch for cancellation

    def training_started(
        self, *, hyperparameters: dict[str, Any], parameters: dict[str, int]
    ) -> None:
        return None
