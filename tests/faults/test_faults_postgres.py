"""PostgreSQL restarted under the running service: the API answers 503 (not 500) while the
database is down, the worker rides out the outage, and the job finishes with one model."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.service import Service
from tests.faults.figures import FIGURES
from tests.faults.test_faults import (
    HEARTBEAT_TIMEOUT,
    _start,
    check_invariants,
    finished,
    mid_training,
    signal_pool,
    submit,
)
from tests.pgserver import PostgresServer, own_server

pytestmark = [pytest.mark.faults, pytest.mark.postgres]
DOWN_SECONDS = HEARTBEAT_TIMEOUT + 4  # longer than a heartbeat timeout on purpose


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    yield from own_server()  # its own server: this module restarts it


@pytest.fixture(scope="module")
def pg_svc(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, str]]:
    yield from _start(tmp_path_factory.mktemp("faults-pg"), database_url=pg.create_database())


def _poll(client: httpx.Client, stop: threading.Event, seen: dict[int, int]) -> None:
    while not stop.is_set():
        try:
            code = client.get("/v1/jobs", timeout=10).status_code
        except httpx.HTTPError:
            code = 0  # no HTTP answer at all
        seen[code] = seen.get(code, 0) + 1
        time.sleep(0.1)


def test_pool_process_killed_mid_training_on_postgres(pg_svc: tuple[Service, str]) -> None:
    """The reaper and the attempt fence on PostgreSQL: a killed attempt is re-run, once."""
    service, dataset = pg_svc
    job_id = submit(service, dataset)
    mid_training(service, job_id)
    signal_pool(service, job_id, signal.SIGKILL, "pool process SIGKILL (PostgreSQL)")


def test_postgres_restart_mid_training(pg: PostgresServer, pg_svc: tuple[Service, str]) -> None:
    service, dataset = pg_svc
    job_id = submit(service, dataset)
    mid_training(service, job_id)
    seen: dict[int, int] = {}
    stop = threading.Event()
    with service.new_client(service.admin_key) as poller:
        thread = threading.Thread(target=_poll, args=(poller, stop, seen))
        thread.start()
        try:
            pg.restart(down_seconds=DOWN_SECONDS)
            FIGURES.kills += 1
            time.sleep(2)
        finally:
            stop.set()
            thread.join()
    for code, n in seen.items():
        FIGURES.db_down_answers[code] = FIGURES.db_down_answers.get(code, 0) + n
    assert 503 in seen, seen  # the outage was seen, and answered as such
    assert not any(code >= 500 and code != 503 for code in seen), seen
    assert 0 not in seen, seen
    job = finished(service, job_id, "succeeded")
    # The reaper waits for the database to be back for a whole heartbeat timeout before it
    # judges heartbeats, so the outage alone does not cost the job its attempt.
    assert job["attempt"] == 1
    check_invariants(service)


def test_submission_while_postgres_is_down_is_503(
    pg: PostgresServer, pg_svc: tuple[Service, str], tmp_path: Path
) -> None:
    service, dataset = pg_svc
    pg._run("pg_ctl", "-D", str(pg.data), "-m", "immediate", "-w", "stop")
    try:
        resp = service.client.post(
            "/v1/jobs",
            json={"task": "classification", "base_model": "local/tiny-bert",
                  "train_dataset": dataset},
        )  # fmt: skip
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "database_unavailable"
        assert resp.headers["retry-after"]
    finally:
        pg._launch()
    assert service.client.get("/v1/jobs").status_code == 200
