"""Run one job by id: claim it, train it, register its model, record how it ended."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from app.core.config import Settings
from app.core.errors import ServiceError
from app.db.models import JobStatus, Model, new_id
from app.db.session import make_engine, make_sessionmaker, session_scope
from app.job.checkpoints import drop_job_files
from app.ml.methods import DEFAULT_METHOD
from worker.kinds import job_runner
from worker.training.artifacts import WrittenModel, discard
from worker.training.pruning import TrialPruned
from worker.training.state import (
    UNREACHABLE,
    AttemptFence,
    AttemptLost,
    FenceLost,
    JobCancelled,
    claim_job,
)

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
        fence = AttemptFence(
            factory, job_id=job_id, attempt=attempt, db_retry_seconds=settings.db_retry_seconds
        )
        with Heartbeat(fence, interval=settings.heartbeat_seconds), stop_on_sigterm():
            return run_claimed(settings, fence)
    finally:
        engine.dispose()


class WorkerStopping(BaseException):
    """SIGTERM reached the process running a job (the worker is being shut down)."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into WorkerStopping while a job runs, so the job can be handed back."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise WorkerStopping(f"signal {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Heartbeat:
    """A thread that stamps the job's heartbeat every `interval` s, whatever training is doing
    (loading a model, tokenizing, a long evaluation); it stops when the attempt is fenced off."""

    def __init__(self, fence: AttemptFence, *, interval: float) -> None:
        self.fence = fence
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.fence.heartbeat()
            except FenceLost:
                log.warning("job %s attempt %s: fenced off", self.fence.job_id, self.fence.attempt)
                return
            except UNREACHABLE as exc:
                log.warning("heartbeat not recorded, database unreachable: %s", type(exc).__name__)


def produce_model(
    settings: Settings, fence: AttemptFence, *, model_id: str
) -> tuple[Model, WrittenModel]:
    """Run the claimed job as its kind says (train, quantize, export...); the model row to
    register and its written directory."""
    method = (fence.job().spec or {}).get("method") or {}
    runner = job_runner(str(method.get("type", DEFAULT_METHOD)))
    return runner.run(settings, fence, model_id=model_id)


def run_claimed(settings: Settings, fence: AttemptFence) -> JobStatus | None:
    """Run a claimed attempt and record its end; an unregistered model directory is removed."""
    model_id = new_id("mdl")
    registered = ended = False
    try:
        row, _ = produce_model(settings, fence, model_id=model_id)
        fence.succeed(row, metrics=row.metrics)
        registered = ended = True
        log.info("job %s succeeded: model %s", fence.job_id, model_id)
        return JobStatus.SUCCEEDED
    except TrialPruned as exc:  # a sweep trial its pruner stopped: no model
        log.info("job %s: %s", fence.job_id, exc)
        ended = fence.finish(JobStatus.PRUNED, str(exc), metrics=exc.metrics)
        return JobStatus.PRUNED
    except JobCancelled:
        log.info("job %s cancelled", fence.job_id)
        ended = fence.finish(JobStatus.CANCELLED, "job cancelled")
        return JobStatus.CANCELLED
    except FenceLost as exc:
        log.warning("job %s: %s; abandoning this attempt", fence.job_id, exc)
        return None
    except AttemptLost as exc:
        log.warning("job %s: %s", fence.job_id, exc)
        status = fence.retry(
            str(exc), max_attempts=settings.max_attempts, code="training_process_lost"
        )
        ended = status is JobStatus.FAILED
        return status
    except Exception as exc:
        log.exception("job %s failed", fence.job_id)
        code, message = error_code(exc), error_message(exc)
        ended = fence.finish(
            JobStatus.FAILED, f"job failed: {message}", error_code=code, error_message=message
        )
        return JobStatus.FAILED
    except BaseException as exc:  # worker shutdown (SIGTERM, SystemExit, Ctrl-C): hand it back
        reason = f"the worker stopped during training ({type(exc).__name__}: {exc})"
        if fence.requeue(reason):
            log.warning("job %s: %s; re-queued", fence.job_id, reason)
        raise
    finally:
        if not registered:
            discard(settings, model_id)
        if ended:  # checkpoints serve only a later attempt of a job that has not ended
            drop_job_files(settings, fence.job_id)
