"""The real worker's Celery app plus one injected fault: a "poison" job kills its process.

`celery --app tests.faults.faulty_worker worker`: when a job id listed in the file named by
TUNESERVE_TEST_POISON_FILE starts, a thread SIGKILLs the pool process a moment later (after the
job has been claimed), the way a segfault or the kernel's OOM killer would.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from celery.signals import task_prerun

from worker.celery_app import celery_app

__all__ = ["celery_app"]
POISON_DELAY_SECONDS = 2.0


def _poisoned(job_id: str) -> bool:
    path = os.environ.get("TUNESERVE_TEST_POISON_FILE")
    return bool(path) and Path(path).exists() and job_id in Path(path).read_text().split()


@task_prerun.connect
def _maybe_die(args: Any = None, **_: Any) -> None:
    job_id = str(args[0]) if args else ""

    def die_later() -> None:
        time.sleep(POISON_DELAY_SECONDS)
        if _poisoned(job_id):
            os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=die_later, daemon=True).start()
