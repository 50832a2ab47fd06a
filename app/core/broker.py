"""What the Redis broker holds: the job ids of waiting and recently delivered messages.

Kombu's Redis transport keeps waiting messages in a list named after the queue (one list per
priority step) and delivered-but-unacknowledged ones in the `unacked` hash, with the delivery
time in the `unacked_index` sorted set. The reaper reads these to find queued jobs whose message
was lost (a Redis restart without persistence, a worker killed between delivery and claim).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from typing import Any, cast

from app.core.queue import RUN_JOB_TASK, TRAINING_QUEUE

log = logging.getLogger("tuneserve.broker")
# kombu's default priority steps; level 0 is the plain queue name.
PRIORITY_STEPS = (3, 6, 9)
PRIORITY_SEP = "\x06\x16"
UNACKED = "unacked"
UNACKED_INDEX = "unacked_index"


def queue_keys(queue: str = TRAINING_QUEUE) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def job_id_of(raw: bytes | str) -> str | None:
    """The job id a kombu message carries, or None when it is not a run-job message."""
    try:
        message: dict[str, Any] = json.loads(raw)
        if message.get("headers", {}).get("task") != RUN_JOB_TASK:
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def held_job_ids(
    redis_url: str, *, delivered_within: float, queues: tuple[str, ...] = (TRAINING_QUEUE,)
) -> set[str] | None:
    """Job ids with a message waiting in `queues`, or one delivered less than
    `delivered_within` s ago (from any queue)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        held: set[str] = set()
        for key in (k for queue in queues for k in queue_keys(queue)):
            for raw in client.lrange(key, 0, -1):
                if (job := job_id_of(raw)) is not None:
                    held.add(job)
        recent = cast(
            list[bytes], client.zrangebyscore(UNACKED_INDEX, time.time() - delivered_within, "+inf")
        )
        if recent:
            for entry in cast(list[bytes | None], client.hmget(UNACKED, recent)):
                if entry is None:
                    continue
                raw = entry
                try:
                    payload = json.loads(raw)[0]
                except (ValueError, IndexError, TypeError):
                    continue
                if (job := job_id_of(json.dumps(payload))) is not None:
                    held.add(job)
        return held
    except redis.RedisError as exc:
        log.warning("cannot read the broker's queues: %s", exc)
        return None
    finally:
        client.close()
