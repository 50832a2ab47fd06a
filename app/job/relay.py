"""The relay process: publish owed queue messages every second, run the reaper every few, and
advance the sweeps (app/sweep/driver.py)."""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from app.core.config import Settings
from app.core.queue import JobQueue
from app.db.session import make_engine, make_sessionmaker
from app.job.outbox import publish_pending
from app.job.reaper import reap
from app.sweep.driver import SWEEP_INTERVAL_SECONDS, advance_sweeps

log = logging.getLogger("tuneserve.relay")


def run_relay(settings: Settings, queue: JobQueue, stop: threading.Event) -> None:
    """Loop until `stop` is set; database or broker outages are logged and retried."""
    engine = make_engine(settings)
    factory = make_sessionmaker(engine)
    next_reap = next_sweeps = 0.0
    # Heartbeats are judged only once the database has been reachable (to us, and so to the
    # workers) for a whole timeout; until then a stale heartbeat may just be the outage.
    reachable_since = time.monotonic()
    try:
        while not stop.is_set():
            try:
                with factory() as session:
                    while publish_pending(session, queue) > 0 and not stop.is_set():
                        pass
                    if time.monotonic() >= next_reap:
                        next_reap = time.monotonic() + settings.reaper_interval_seconds
                        settled = (
                            time.monotonic() - reachable_since > settings.heartbeat_timeout_seconds
                        )
                        report = reap(
                            session, settings=settings, queue=queue, check_heartbeats=settled
                        )
                        if report.requeued or report.failed or report.republished:
                            log.info("reaper: %s", report)
                    if time.monotonic() >= next_sweeps:  # tell ended trials, start new ones
                        next_sweeps = time.monotonic() + SWEEP_INTERVAL_SECONDS
                        advance_sweeps(session, settings=settings, queue=queue)
            except SQLAlchemyError as exc:
                log.warning("relay: database unavailable (%s); retrying", type(exc).__name__)
                reachable_since = time.monotonic() + settings.relay_interval_seconds
            stop.wait(settings.relay_interval_seconds)
    finally:
        engine.dispose()
