"""A job's events as Server-Sent Events: what `GET /v1/jobs/{id}/events` streams to a client that
accepts `text/event-stream`.

Every event is one SSE message whose `id` is the event id, whose `event` is its type (status, log,
metrics, warning) and whose `data` is the same JSON object the paged JSON route returns. A client
that reconnects sends the last id it saw as `Last-Event-ID` (browsers' EventSource do so by
themselves) and the stream goes on after it. Once the job has ended and every event before the end
has been sent, one `end` message carries the final status and the stream closes.

The stream polls the database (a short query a poll) rather than listening to a broker, so it works
the same against any worker anywhere; no session is held between polls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import BadRequest
from app.db.models import Job, JobEvent, JobStatus
from app.job.schemas import JobEventRead

EVENT_STREAM = "text/event-stream"
# Events sent per poll; a backlog drains in several polls without waiting between them.
BATCH = 500
# A comment line now and then keeps proxies from closing a quiet stream (e.g. a long evaluation).
KEEPALIVE_SECONDS = 15.0
# What EventSource waits before it reconnects after the connection drops, in milliseconds.
RETRY_MS = 2000


def wants_event_stream(accept: str | None) -> bool:
    """Whether an Accept header asks for Server-Sent Events."""
    if not accept:
        return False
    return any(part.split(";")[0].strip().lower() == EVENT_STREAM for part in accept.split(","))


def parse_last_event_id(value: str | None, *, maximum: int) -> int | None:
    """The Last-Event-ID header as an event id; a clear 400 when it is not one."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if not text.isdigit() or int(text) > maximum:
        raise BadRequest(
            f"Last-Event-ID must be an event id (a whole number from 0 to {maximum}), "
            f"got {text[:40]!r}",
            field="Last-Event-ID",
        )
    return int(text)


def frame(event: JobEventRead) -> str:
    """One SSE message for one event (its JSON has no newline, so one `data:` line)."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def end_frame(status: str) -> str:
    return f"event: end\ndata: {json.dumps({'status': status})}\n\n"


def poll(
    factory: Callable[[], Session], *, job_id: str, after: int | None
) -> tuple[list[JobEventRead], str | None]:
    """Events after `after` and the job's status read before them (None once it is deleted).

    The status is read first: when it says the job has ended, every event written before the end
    is already committed, so an empty page after it means the stream is complete.
    """
    with factory() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        stmt = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            stmt = stmt.where(JobEvent.id > after)
        rows = session.scalars(stmt.order_by(JobEvent.id).limit(BATCH))
        events = [
            JobEventRead(
                id=e.id, type=e.type, message=e.message, data=e.data, created_at=e.created_at
            )
            for e in rows
        ]
        return events, status


async def job_events(
    factory: Callable[[], Session],
    *,
    job_id: str,
    after: int | None,
    disconnected: Callable[[], Awaitable[bool]],
    poll_seconds: float = 0.5,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """SSE messages for the job's events after `after`, until the job has ended."""
    yield f"retry: {RETRY_MS}\n\n"
    quiet = 0.0
    while True:
        events, status = await run_in_threadpool(poll, factory, job_id=job_id, after=after)
        for event in events:
            yield frame(event)
            after = event.id
        if len(events) == BATCH:
            continue
        if status is None:  # deleted while we watched
            yield end_frame("deleted")
            return
        if JobStatus(status).is_terminal:  # and every event before the end is sent
            yield end_frame(status)
            return
        if await disconnected():
            return
        quiet = 0.0 if events else quiet + poll_seconds
        if quiet >= keepalive_seconds:
            quiet = 0.0
            yield ": keepalive\n\n"
        await asyncio.sleep(poll_seconds)


def response(
    request: Request, *, job_id: str, after: int | None, maximum: int
) -> StreamingResponse:
    """The streaming answer for a job the caller may see (checked before): after the event the
    Last-Event-ID header names, else after `after`."""
    resume = parse_last_event_id(request.headers.get("last-event-id"), maximum=maximum)
    body = job_events(
        request.app.state.sessionmaker,
        job_id=job_id,
        after=resume if resume is not None else after,
        disconnected=request.is_disconnected,
    )
    # No proxy may buffer or cache it (nginx honours X-Accel-Buffering).
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type=EVENT_STREAM, headers=headers)
