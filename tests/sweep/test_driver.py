"""The sweep driver on SQLite and PostgreSQL: it picks up after a restart, and drivers that
advance one sweep at once submit no trial twice and never more than `parallel`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.core.config import Settings
from app.db.models import Job, JobStatus, Sweep, SweepTrial, utcnow
from app.db.session import make_engine, make_sessionmaker
from tests.conftest import RecordingQueue, auth, create_api_key
from tests.sweep.conftest import TINY_MODEL_ID, advance, upload_rows

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


class Backend:
    def __init__(self, settings: Settings, client: TestClient, queue: RecordingQueue) -> None:
        self.settings, self.client, self.queue = settings, client, queue

    def create(self, **overrides: Any) -> dict[str, Any]:
        train = upload_rows(self.client, 24)
        body = {
            "task": "classification",
            "base_model": TINY_MODEL_ID,
            "train_dataset": train,
            "hyperparameters": {"learning_rate": {"loguniform": [1e-4, 1e-2]}, "epochs": 1},
            **overrides,
        }
        resp = self.client.post("/v1/sweeps", json=body)
        assert resp.status_code == 201, resp.text
        return dict(resp.json())

    def trials(self, sweep_id: str) -> list[SweepTrial]:
        engine = make_engine(self.settings)
        try:
            with make_sessionmaker(engine)() as session:
                stmt = select(SweepTrial).where(SweepTrial.sweep_id == sweep_id)
                return list(session.scalars(stmt.order_by(SweepTrial.number)))
        finally:
            engine.dispose()

    def end_jobs(self, sweep_id: str, status: JobStatus = JobStatus.FAILED) -> None:
        """End every queued trial job of the sweep, as a worker would have."""
        engine = make_engine(self.settings)
        try:
            with make_sessionmaker(engine)() as session:
                session.execute(
                    update(Job)
                    .where(Job.sweep_id == sweep_id, Job.status == JobStatus.QUEUED)
                    .values(status=status, finished_at=utcnow())
                )
                session.commit()
        finally:
            engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_models_dir: Path
) -> Iterator[Backend]:
    from app.db.migrate import upgrade
    from app.main import create_app

    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_server").create_database()
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=url,
        redis_url=None,
        local_models_dir=tiny_models_dir,
        training_threads=1,
    )
    upgrade(settings)
    queue = RecordingQueue()
    application = create_app(settings, queue=queue)
    with TestClient(application, headers=auth(create_api_key(settings))) as client:
        yield Backend(settings, client, queue)
    application.state.engine.dispose()


def _study_trials(settings: Settings, sweep_id: str) -> list[Any]:
    from app.sweep.study import storage

    found = storage(settings)
    return list(found.get_all_trials(found.get_study_id_from_name(sweep_id)))


def test_the_driver_picks_up_after_a_restart(backend: Backend) -> None:
    from app.sweep import study as studies
    from worker.jobs import run_job

    sweep = backend.create(max_trials=3, parallel=1)
    first = sweep["trials"][0]
    # A driver asked the study for trial 1 and died before submitting it, holding the lease.
    engine = make_engine(backend.settings)
    with make_sessionmaker(engine)() as session:
        row = session.get(Sweep, sweep["id"])
        assert row is not None
        orphan = studies.load_study(backend.settings, row).ask(
            {s.name: s.distribution() for s in studies_spaces(row)}
        )
        session.execute(
            update(Sweep)
            .where(Sweep.id == row.id)
            .values(lease_owner="dead", lease_until=utcnow() + timedelta(seconds=30))
        )
        session.commit()
    engine.dispose()
    # Its trial 0 ran while no driver did.
    assert run_job(backend.settings, first["job_id"]) == JobStatus.SUCCEEDED
    studies.dispose_storages()  # a new process: nothing of the old one's state

    assert advance(backend.settings, backend.queue) == []  # the dead driver's lease holds
    assert [t.number for t in backend.trials(sweep["id"])] == [0]
    later = utcnow() + timedelta(seconds=61)
    assert advance(backend.settings, backend.queue, now=later) == [sweep["id"]]

    trials = backend.trials(sweep["id"])
    # Trial 0 told; the orphan submitted with the parameters it was asked with; no third yet
    # (parallel 1), and nothing asked twice.
    assert [(t.number, t.state) for t in trials] == [(0, "succeeded"), (1, "running")]
    assert trials[1].params == orphan.params
    job = backend.client.get(f"/v1/jobs/{trials[1].job_id}").json()
    assert job["hyperparameters"]["learning_rate"] == orphan.params["learning_rate"]
    assert job["sweep_id"] == sweep["id"] and trials[1].job_id in backend.queue.enqueued
    told = _study_trials(backend.settings, sweep["id"])
    assert [(t.number, t.state.name) for t in told] == [(0, "COMPLETE"), (1, "RUNNING")]
    assert told[0].value == trials[0].value == job_metrics(backend, trials[0].job_id)["accuracy"]


def studies_spaces(row: Sweep) -> list[Any]:
    from app.sweep.trials import spaces_of

    return spaces_of(row)


def job_metrics(backend: Backend, job_id: str | None) -> dict[str, Any]:
    return dict(backend.client.get(f"/v1/jobs/{job_id}").json()["metrics"])


def test_concurrent_drivers_submit_no_trial_twice(backend: Backend) -> None:
    sweep = backend.create(max_trials=9, parallel=3, pruning=None)
    assert len(sweep["trials"]) == 3
    for _ in range(2):
        backend.end_jobs(sweep["id"])  # three slots free at once
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def drive(barrier: threading.Barrier, errors: list[BaseException]) -> None:
            from app.sweep.driver import advance_sweep

            engine = make_engine(backend.settings)
            try:
                with make_sessionmaker(engine)() as session:
                    barrier.wait()
                    advance_sweep(
                        session,
                        settings=backend.settings,
                        queue=backend.queue,
                        sweep_id=sweep["id"],
                    )
            except BaseException as exc:  # noqa: BLE001  (reported below)
                errors.append(exc)
            finally:
                engine.dispose()

        threads = [threading.Thread(target=drive, args=(barrier, errors)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        # Whichever driver won: the ended trials told, then exactly `parallel` running again.
        trials = backend.trials(sweep["id"])
        assert sum(t.state == "running" for t in trials) == 3
        assert [t.number for t in trials] == list(range(len(trials)))
        assert len({t.job_id for t in trials}) == len(trials)
        assert len(_study_trials(backend.settings, sweep["id"])) == len(trials)

    backend.end_jobs(sweep["id"])
    advance(backend.settings, backend.queue)
    done = backend.client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert (done["status"], done["trial_counts"]["failed"]) == ("failed", 9)
    jobs = backend.client.get("/v1/jobs", params={"sweep_id": sweep["id"], "limit": 100})
    assert len(jobs.json()["data"]) == 9 == len(set(backend.queue.enqueued))


def test_a_trial_recorded_twice_is_refused_by_its_key(backend: Backend) -> None:
    from app.sweep.trials import submit_trial

    sweep = backend.create(max_trials=2, parallel=1)
    engine = make_engine(backend.settings)
    try:
        with make_sessionmaker(engine)() as session:
            row = session.get(Sweep, sweep["id"])
            assert row is not None
            again = submit_trial(
                session,
                settings=backend.settings,
                queue=backend.queue,
                sweep=row,
                number=0,
                params=sweep["trials"][0]["params"],
            )
    finally:
        engine.dispose()
    assert again is None
    jobs = backend.client.get("/v1/jobs", params={"sweep_id": sweep["id"]}).json()["data"]
    assert [j["id"] for j in jobs] == [sweep["trials"][0]["job_id"]]
