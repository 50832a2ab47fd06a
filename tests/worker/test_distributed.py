"""Data-parallel jobs (resources.processes): real torchrun processes over gloo on CPU, with the
claiming worker in this test's process. (A two-process job through the whole service, its shards
and steps, resumed on another machine from the store, is in tests/e2e/test_workers_anywhere.py; the
losses it reports beside one process's in tests/worker/test_loss_scaling.py.)"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import EventType, JobEvent, JobStatus, Model
from tests.predict.conftest import upload_rows
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job
from worker.training.state import JobCancelled


def submit(client: TestClient, train: str, *, processes: int, **hp: Any) -> str:
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": TINY_MODEL_ID,
            "train_dataset": train,
            "hyperparameters": {
                "epochs": 2,
                "batch_size": 8,
                "learning_rate": 5e-3,
                "validation_split": 0.2,
                **hp,
            },
            "resources": {"processes": processes},
            "seed": 7,
        },
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    resp = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["data"])


def event_data(client: TestClient, job_id: str, key: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events(client, job_id) if (e.get("data") or {}).get(key)]


@pytest.fixture
def api(train_settings, client: TestClient) -> TestClient:  # type: ignore[no-untyped-def]
    return client


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def still_running(pids: list[int], *, within: float = 30.0) -> list[int]:
    """The pids still running after up to `within` s (ranks are in sessions of their own and
    die a moment after torchrun, of its SIGTERM or of their parent-death signal)."""
    deadline = time.monotonic() + within
    while (running := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def when(
    train_settings: Any,
    job_id: str,
    ready: Callable[[list[JobEvent]], bool],
    act: Callable[[list[JobEvent]], None],
) -> threading.Thread:
    """A thread that calls `act(events)` once the job's events satisfy `ready` (polled)."""
    from app.db.session import make_engine, make_sessionmaker

    def watch() -> None:
        engine = make_engine(train_settings)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                with make_sessionmaker(engine)() as session:
                    found = list(
                        session.scalars(
                            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                        )
                    )
                if ready(found):
                    act(found)
                    return
                time.sleep(0.02)
        finally:
            engine.dispose()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def pids_of(found: list[JobEvent]) -> list[int]:
    return next(list(e.data["pids"]) for e in found if e.data and "pids" in e.data)


@pytest.mark.slow
def test_a_dead_rank_loses_the_attempt_the_next_resumes_and_cancel_stops_every_rank(
    train_settings, api, db
) -> None:  # type: ignore[no-untyped-def]
    train = upload_rows(api, sentiment_rows(200))
    job_id = submit(api, train, processes=2, epochs=20, checkpoint_every=10)
    killed: list[int] = []

    def kill_rank_1(found: list[JobEvent]) -> None:
        pid = pids_of(found)[1]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watcher = when(
        train_settings,
        job_id,
        lambda found: any((e.data or {}).get("checkpoint_step") for e in found),
        kill_rank_1,
    )
    status = run_job(train_settings, job_id)
    watcher.join()
    assert killed, "the job ended before its rank 1 could be killed"
    assert status == JobStatus.QUEUED
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "queued" and job["attempt"] == 1 and job["model_id"] is None
    lost = [e for e in events(api, job_id) if (e.get("data") or {}).get("status") == "queued"][-1]
    assert "rank 1 ended by signal SIGKILL" in lost["message"], lost["message"]
    first = pids_of(list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id))))
    assert not still_running(first)  # rank 0 went with its peer

    # The relay delivers the job again: attempt 2 resumes from the checkpoint; cancelled once it
    # trains, it stops both its ranks and registers nothing.
    second: list[int] = []

    def cancel(found: list[JobEvent]) -> None:
        second.extend(pids_of(found[len(first_events) :]))
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200

    first_events = list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id)))
    watcher = when(
        train_settings,
        job_id,
        lambda found: any(
            e.type == EventType.METRICS and e.id > first_events[-1].id for e in found
        ),
        cancel,
    )
    assert run_job(train_settings, job_id) == JobStatus.CANCELLED
    watcher.join()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["attempt"] == 2 and job["model_id"] is None
    resumed = [
        e["message"] for e in events(api, job_id) if "resuming from checkpoint-" in e["message"]
    ]
    assert len(resumed) == 1 and "checkpoint-10 " in resumed[0], resumed
    assert len(second) == 2 and not set(second) & set(first)
    assert not still_running(second)
    assert db.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id)) == 0


TORCHRUN_REPORT = """
worker.training.rank FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-06_20:12:55
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : {rank0} (pid: 6534)
  error_file: <N/A>
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_20:12:55
  host      : localhost
  rank      : {root} (local_rank: {root})
  exitcode  : {root_code} (pid: 6535)
  error_file: <N/A>
======================================================
"""


def test_the_first_rank_to_fail_decides_how_the_attempt_ends() -> None:
    from worker.training.launch import RankFailed, interpret
    from worker.training.state import AttemptLost

    reset = {"outcome": "failed", "code": "training_error", "message": "Connection reset by peer"}
    # Rank 1 was killed; rank 0's error only follows from it: the attempt is lost, not failed.
    log = TORCHRUN_REPORT.format(rank0=-15, root=1, root_code=-9)
    with pytest.raises(AttemptLost, match="rank 1 ended by signal SIGKILL"):
        interpret({0: reset}, status=1, launcher_log=log)
    # Rank 1 failed first and said why: that is the job's error.
    oom = {"outcome": "failed", "code": "out_of_memory", "message": "OutOfMemoryError: CUDA"}
    log = TORCHRUN_REPORT.format(rank0=-15, root=1, root_code=1)
    with pytest.raises(RankFailed, match="rank 1: OutOfMemoryError") as failed:
        interpret({0: reset, 1: oom}, status=1, launcher_log=log)
    assert failed.value.code == "out_of_memory"
    # Nothing reported and no report from torchrun: still a lost attempt, with torchrun's status.
    with pytest.raises(AttemptLost, match="torchrun exit status 137"):
        interpret({}, status=137, launcher_log="")
    # Rank 0's own outcome wins over whatever its peers did after it.
    with pytest.raises(JobCancelled):
        interpret({0: {"outcome": "cancelled"}, 1: reset}, status=1, launcher_log=log)
