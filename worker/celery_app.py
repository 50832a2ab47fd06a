"""The Celery app of the training worker: `celery -A worker.celery_app worker`.

Importing this module builds a Celery object and nothing else: settings are read when Celery first
needs its configuration, and the database, models and any torch operation are only touched inside
the child process that runs a job (one job per child, so every job starts from a fresh process).
When the worker starts on a machine without an NVIDIA GPU, its parent imports the training libraries
once (`preload_training`): each job's child then forks with them loaded instead of spending some 6 s
of CPU importing them. The parent runs no torch operation, so no thread pool and no CUDA state is
forked; on a GPU machine it imports nothing of torch (WORKER_PRELOAD).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_ready

from app.core.config import Settings, get_settings
from app.core.queue import RUN_JOB_TASK, TRAINING_QUEUE, celery_config

log = logging.getLogger("tuneserve.worker")

WORKER_CONFIG: dict[str, Any] = {
    # A fresh child per job: memory, threads and CUDA state never leak from one job to the next.
    "worker_max_tasks_per_child": 1,
    "worker_prefetch_multiplier": 1,
    "worker_concurrency": 1,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_track_started": False,
    "worker_hijack_root_logger": False,
    "task_queues": None,
    "task_default_queue": TRAINING_QUEUE,
}


def _config(settings: Settings) -> dict[str, Any]:
    if not settings.redis_url:
        raise RuntimeError("TUNESERVE_REDIS_URL is not set (`tuneserve up` sets it for you)")
    return {**celery_config(settings.redis_url), **WORKER_CONFIG}


def create_celery(settings: Settings | None = None) -> Celery:
    """The worker's Celery app; without settings, they are read lazily from the environment."""
    app = Celery("tuneserve-worker")
    if settings is not None:
        app.conf.update(_config(settings))
    else:
        app.add_defaults(lambda: _config(get_settings()))
    bound = settings

    @app.task(  # type: ignore[untyped-decorator]
        name=RUN_JOB_TASK, ignore_result=True, acks_late=True, shared=False
    )
    def run_job_task(job_id: str) -> str | None:
        # Imported here, in the child process: the parent never loads torch.
        from worker.jobs import run_job

        status = run_job(bound or get_settings(), job_id)
        return None if status is None else str(status)

    return app


# How long the preload took, logged once the worker's logging is set up (after worker_init).
PRELOADED: dict[str, float] = {}
# What a job's child process imports: loaded once in the parent, shared by every fork.
TRAINING_MODULES = (
    "torch",
    "datasets",
    "transformers",
    "peft",
    "worker.jobs",
    "worker.training.runner",
    "worker.training.quantize",
    "worker.training.launch",
)


def should_preload(settings: Settings) -> bool:
    if settings.worker_preload != "auto":
        return settings.worker_preload == "yes"
    from app.ml.device import nvidia_gpu_present

    return not nvidia_gpu_present()


def preload_training(settings: Settings) -> list[str]:
    """Import the training libraries in this (the parent) process where the settings allow; the
    modules imported. Nothing runs: no torch operation, no CUDA, no model."""
    if not should_preload(settings):
        return []
    import importlib
    import time

    started = time.monotonic()
    for name in TRAINING_MODULES:
        importlib.import_module(name)
    from transformers import Trainer  # noqa: F401  (transformers imports its parts lazily)

    PRELOADED["seconds"] = round(time.monotonic() - started, 1)
    return list(TRAINING_MODULES)


def _preload_on_start(**_: Any) -> None:
    # In the worker's parent, before its pool forks the first child.
    preload_training(get_settings())


def _report_preload(**_: Any) -> None:
    if "seconds" in PRELOADED:
        log.info("training libraries preloaded in %.1f s", PRELOADED["seconds"])
    else:
        log.info("training libraries not preloaded (WORKER_PRELOAD, or an NVIDIA GPU)")


worker_init.connect(_preload_on_start, weak=False)
worker_ready.connect(_report_preload, weak=False)


celery_app = create_celery()
