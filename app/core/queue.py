"""Thin producer: the API enqueues job ids by task name and never imports the worker."""

from __future__ import annotations

from typing import Protocol

RUN_JOB_TASK = "tuneserve.run_job"
# Jobs any worker can run go to the training queue; jobs that need a CUDA GPU (mixed precision)
# to the gpu queue, which workers serve when they see one (`tuneserve worker --queues`).
TRAINING_QUEUE = "training"
GPU_QUEUE = "gpu"


class JobQueue(Protocol):
    def enqueue(self, job_id: str, queue: str = TRAINING_QUEUE) -> None: ...

    def held_job_ids(
        self, *, delivered_within: float, queues: tuple[str, ...] = (TRAINING_QUEUE,)
    ) -> set[str] | None:
        """Job ids the broker holds a message for in `queues` (waiting, or delivered within the
        last `delivered_within` seconds and not yet acknowledged); None when it cannot tell."""
        ...


def celery_config(redis_url: str) -> dict[str, object]:
    """Celery settings shared by the producer and the worker: JSON only, long-job friendly."""
    return {
        "broker_url": redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": TRAINING_QUEUE,
        "broker_connection_retry_on_startup": True,
        # Redis re-delivers unacked messages after this; it must exceed the longest job.
        "broker_transport_options": {"visibility_timeout": 24 * 3600},
    }


class CeleryJobQueue:
    """Sends `RUN_JOB_TASK(job_id)` to Redis. The message only wakes a worker; the row rules."""

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self._celery = Celery("tuneserve-producer")
        self._celery.conf.update(celery_config(redis_url))

        self._redis_url = redis_url

    def enqueue(self, job_id: str, queue: str = TRAINING_QUEUE) -> None:
        self._celery.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)

    def held_job_ids(
        self, *, delivered_within: float, queues: tuple[str, ...] = (TRAINING_QUEUE,)
    ) -> set[str] | None:
        from app.core.broker import held_job_ids

        return held_job_ids(self._redis_url, delivered_within=delivered_within, queues=queues)
