"""Run one job by id: claim it, train it, register its model, record how it ended."""

from __future__ import annotations

import logging
import os
import socket

from app.core.config import Settings
from app.core.errors import ServiceError
from app.db.models import JobStatus, new_id
from app.db.session import make_engine, make_sessionmaker, session_scope
from worker.training.artifacts import discard
from worker.training.state import AttemptFence, FenceLost, JobCancelled, claim_job

log = logging.getLogger("tuneserve.worker")
MAX_ERROR_CHARS = 4000


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def error_code(exc: BaseException) -> str:
    """A machine-readable reason for a failed job."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return "out_of_memory"
    return "training_error"


def error_message(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ServiceError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


def run_job(settings: Settings, job_id: str) -> JobStatus | None:
    """Claim and run job `job_id`; its final status, or None when this delivery had no work."""
    engine = make_engine(settings)
    try:
        factory = make_sessionmaker(engine)
        with session_scope(factory) as session:
            attempt = claim_job(session, job_id=job_id, worker=worker_name())
        if attempt is None:
            log.info("job %s is not queued (duplicate delivery or cancelled): skipped", job_id)
            return None
        log.info("job %s: attempt %s claimed", job_id, attempt)
        return run_claimed(settings, AttemptFence(factory, job_id=job_id, attempt=attempt))
    finally:
        engine.dispose()


def run_claimed(settings: Settings, fence: AttemptFence) -> JobStatus | None:
    """Train a claimed attempt and record its end; an unregistered model directory is removed."""
    from worker.training.runner import train_job

    model_id = new_id("mdl")
    registered = False
    try:
        row, _ = train_job(settings, fence, model_id=model_id)
        fence.succeed(row, metrics=row.metrics)
        registered = True
        log.info("job %s succeeded: model %s", fence.job_id, model_id)
        return JobStatus.SUCCEEDED
    except JobCancelled:
        log.info("job %s cancelled", fence.job_id)
        fence.finish(JobStatus.CANCELLED, "job cancelled")
        return JobStatus.CANCELLED
    except FenceLost as exc:
        log.warning("job %s: %s; abandoning this attempt", fence.job_id, exc)
        return None
    except Exception as exc:
        log.exception("job %s failed", fence.job_id)
        code, message = error_code(exc), error_message(exc)
        fence.finish(
            JobStatus.FAILED, f"job failed: {message}", error_code=code, error_message=message
        )
        return JobStatus.FAILED
    except BaseException:  # worker shutdown (SystemExit, KeyboardInterrupt): say so, then go
        fence.finish(
            JobStatus.FAILED,
            "job failed: the worker stopped during training",
            error_code="worker_interrupted",
            error_message="the worker process was stopped during training; submit the job again",
        )
        raise
    finally:
        if not registered:
            discard(settings, model_id)
