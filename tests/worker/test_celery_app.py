"""The worker's Celery app: importable without side effects, one job per child process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PROBE = """
import sys

import pytest
import worker.celery_app as m
assert "torch" not in sys.modules and "transformers" not in sys.modules, "heavy import"
from app.core.queue import RUN_JOB_TASK
app = m.celery_app
assert RUN_JOB_TASK in app.tasks
conf = app.conf
print(conf.broker_url, conf.worker_max_tasks_per_child, conf.worker_prefetch_multiplier,
      conf.task_acks_late, conf.task_serializer, conf.task_default_queue)
"""


def test_import_is_light_and_config_is_read_lazily() -> None:
    env = dict(os.environ, TUNESERVE_REDIS_URL="redis://127.0.0.1:1/0")
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["redis://127.0.0.1:1/0", "1", "1", "True", "json", "training"]


def test_create_celery_with_explicit_settings(settings) -> None:  # type: ignore[no-untyped-def]
    from app.core.queue import RUN_JOB_TASK
    from worker.celery_app import create_celery

    settings.redis_url = "redis://127.0.0.1:2/0"
    app = create_celery(settings)
    assert app.conf.broker_url == "redis://127.0.0.1:2/0"
    assert app.conf.accept_content == ["json"]
    assert app.tasks[RUN_JOB_TASK].name == RUN_JOB_TASK


PRELOAD = """
import os, sys, threading
from app.core.config import Settings
import worker.celery_app as m
loaded = m.preload_training(Settings(worker_preload=sys.argv[1]))
import torch  # already there when preloaded
print(len(loaded), "worker.training.runner" in sys.modules, torch.cuda.is_initialized(),
      threading.active_count(), torch.get_num_threads() >= 1)
"""


@pytest.mark.slow  # imports the training stack twice
def test_preload_imports_the_training_stack_and_runs_nothing() -> None:
    def probe(mode: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", PRELOAD, mode],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # Loaded for every job's fork: no CUDA state and no Python thread in the parent.
    assert probe("yes") == ["8", "True", "False", "1", "True"]
    assert probe("no") == ["0", "False", "False", "1", "True"]
