"""DELETE /v1/jobs/{id}: an ended job goes with its events, outbox messages, checkpoints and
scratch files; the model it registered, its datasets and other jobs stay."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Job, JobEvent, JobMessage, JobStatus
from app.db.session import make_engine, make_sessionmaker
from app.job.checkpoints import checkpoints_dir, job_dir, write_manifest
from tests.conftest import auth, create_api_key
from tests.predict.conftest import upload_rows
from tests.predict.test_delete_model import _model
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.training.state import AttemptFence, claim_job


def _rows(settings: Any, job_id: str) -> tuple[int, int, int]:
    """How many job, event and outbox rows name `job_id`."""
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            return tuple(  # type: ignore[return-value]
                session.scalar(select(func.count()).select_from(t).where(col == job_id)) or 0
                for t, col in (
                    (Job, Job.id),
                    (JobEvent, JobEvent.job_id),
                    (JobMessage, JobMessage.job_id),
                )
            )
    finally:
        engine.dispose()


def _submit(client: TestClient, train: str) -> str:
    body = {"task": "classification", "base_model": TINY_MODEL_ID, "train_dataset": train}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _fail_with_checkpoints(settings: Any, job_id: str) -> None:
    """Claim the job, save a checkpoint as training does, then fail it (as the reaper does, the
    checkpoints stay)."""
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session:
            attempt = claim_job(session, job_id=job_id, worker="test")
            session.commit()
        assert attempt == 1
        saved = checkpoints_dir(settings, job_id) / "checkpoint-2"
        saved.mkdir(parents=True)
        (saved / "model.safetensors").write_bytes(b"\0" * 64)
        write_manifest(saved, step=2, epoch=1.0, metrics={"eval_loss": 0.5})
        (job_dir(settings, job_id) / "scratch.bin").write_bytes(b"\0" * 16)
        fence = AttemptFence(sessions, job_id=job_id, attempt=1)
        assert fence.finish(JobStatus.FAILED, "job failed", error_code="worker_lost")
    finally:
        engine.dispose()


def test_an_ended_job_is_deleted_with_its_files_and_nothing_else(
    train_settings, client: TestClient
) -> None:
    train = upload_rows(client, sentiment_rows(24))
    model = _model(client, train_settings, base_model=TINY_MODEL_ID, train_dataset=train)
    succeeded = model["job_id"]
    failed = _submit(client, train)
    _fail_with_checkpoints(train_settings, failed)
    cancelled = _submit(client, train)
    assert client.post(f"/v1/jobs/{cancelled}/cancel").status_code == 200
    kept = _submit(client, train)
    assert client.post(f"/v1/jobs/{kept}/cancel").status_code == 200
    assert len(client.get(f"/v1/jobs/{failed}/checkpoints").json()["data"]) == 1
    assert _rows(train_settings, failed)[1:] == (3, 1)  # queued, running, failed; one message

    # Another tenant's key: the job does not exist for it. A key without `train` may not.
    other = create_api_key(train_settings, tenant="acme")
    assert client.delete(f"/v1/jobs/{failed}", headers=auth(other)).status_code == 404
    reader = create_api_key(train_settings, scopes=("jobs:read",))
    assert client.delete(f"/v1/jobs/{failed}", headers=auth(reader)).status_code == 403

    for job_id in (failed, cancelled, succeeded):
        resp = client.delete(f"/v1/jobs/{job_id}")
        assert resp.status_code == 204, resp.text
        assert resp.content == b""
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert _rows(train_settings, job_id) == (0, 0, 0)
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 404  # deleting again
    assert not job_dir(train_settings, failed).exists()

    # The model the succeeded job registered stays, names its job, and serves.
    read = client.get(f"/v1/models/{model['id']}")
    assert read.status_code == 200 and read.json()["job_id"] == succeeded
    assert (train_settings.data_dir / "models" / model["id"]).is_dir()
    resp = client.post(
        "/v1/predict/classification", json={"model": model["id"], "inputs": ["a great film"]}
    )
    assert resp.status_code == 200, resp.text
    # Nothing else went: the other job with its events, the dataset.
    assert client.get(f"/v1/jobs/{kept}").json()["status"] == "cancelled"
    assert _rows(train_settings, kept) == (1, 2, 1)
    assert [j["id"] for j in client.get("/v1/jobs").json()["data"]] == [kept]
    assert client.get(f"/v1/datasets/{train}").status_code == 200


def test_a_queued_or_running_job_is_not_deleted(train_settings, client: TestClient) -> None:
    train = upload_rows(client, sentiment_rows(24))
    queued = _submit(client, train)
    running = _submit(client, train)
    engine = make_engine(train_settings)
    try:
        with make_sessionmaker(engine)() as session:
            assert claim_job(session, job_id=running, worker="test") == 1
            session.commit()
    finally:
        engine.dispose()

    for job_id, status in ((queued, "queued"), (running, "running")):
        resp = client.delete(f"/v1/jobs/{job_id}")
        assert resp.status_code == 409, resp.text
        error = resp.json()["error"]
        assert error["code"] == "job_not_ended" and error["details"]["status"] == status
        assert f"job '{job_id}' is {status}" in error["message"]
        assert f"POST /v1/jobs/{job_id}/cancel" in error["message"]
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == status

    # Asked to cancel, the running job still runs until its worker stops it.
    assert client.post(f"/v1/jobs/{running}/cancel").status_code == 200
    resp = client.delete(f"/v1/jobs/{running}")
    assert resp.status_code == 409 and "stopping after a cancel" in resp.json()["error"]["message"]
    # The queued one, once cancelled, can go.
    assert client.post(f"/v1/jobs/{queued}/cancel").status_code == 200
    assert client.delete(f"/v1/jobs/{queued}").status_code == 204
    assert client.get(f"/v1/jobs/{running}").json()["status"] == "running"
    assert client.get(f"/v1/datasets/{train}").status_code == 200
