"""Processes that share nothing but PostgreSQL, Redis and an S3-compatible store.

The API, the relay and the worker each run with a data directory of their own, as on separate
machines; datasets, models and checkpoints live in a real S3-compatible server (moto's server
mode). Real SST-2 rows train a LoRA adapter on all-MiniLM-L6-v2 with two data-parallel processes
(each on its own shard of the rows); the worker is killed after a checkpoint
reached the store (its training processes go with it), and a worker with an empty disk resumes the
job from it and registers one model, which the API (which never saw the worker's disk) serves. Then
the store goes down: an upload gets 503 and leaves nothing, and a job ends failed with
storage_unavailable.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import needs_weights
from tests.e2e.service import Service, running_service, wait_for, wait_for_job
from tests.e2e.test_classification_e2e import HELD_OUT, LORA_ROWS, sst2_slice, upload
from tests.s3server import S3Server, s3_server
from tests.worker.test_distributed import still_running

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

BASE = "sentence-transformers/all-MiniLM-L6-v2"
RECOVERY = {
    "TUNESERVE_HEARTBEAT_SECONDS": "0.5",
    "TUNESERVE_HEARTBEAT_TIMEOUT_SECONDS": "8",
    "TUNESERVE_REAPER_INTERVAL_SECONDS": "0.5",
    "TUNESERVE_RELAY_INTERVAL_SECONDS": "0.25",
    "TUNESERVE_REPUBLISH_AFTER_SECONDS": "3",
    # A worker gives up on a store that stays down after this long (the job then fails): the
    # default's minutes, shortened, but not to a few seconds, which a store that is up can miss
    # on a loaded machine (the store-down test restarts the worker with less).
    "TUNESERVE_STORAGE_RETRY_SECONDS": "30",
    "TUNESERVE_UPLOAD_STORAGE_RETRY_SECONDS": "1",
}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str
) -> Iterator[tuple[Service, S3Server]]:
    needs_weights()
    tmp = tmp_path_factory.mktemp("anywhere")
    with s3_server(tmp / "moto") as s3:
        env = RECOVERY | s3.env | {"TUNESERVE_STORAGE_URL": s3.url("prod")}
        with running_service(
            tmp / "data",
            database_url=postgres_url,
            extra_env=env,
            separate_dirs=True,
            worker_queues="training,cpu-pool",
        ) as service:
            yield service, s3


def store_keys(s3: S3Server, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=s3.bucket, Prefix=f"prod/{prefix}")
    return [o["Key"][len("prod/") :] for o in listed.get("Contents", [])]


def test_a_worker_with_an_empty_disk_resumes_from_the_store(
    stack: tuple[Service, S3Server], tmp_path: Path
) -> None:
    service, s3 = stack
    client = service.client
    train_bytes, _ = sst2_slice("train.tsv", LORA_ROWS)
    dev_bytes, dev_rows = sst2_slice("dev.tsv", HELD_OUT)
    train, dev = upload(client, "train.tsv", train_bytes), upload(client, "dev.tsv", dev_bytes)
    # The upload went to the store, under the dataset's id, manifest last.
    assert f"datasets/{train['id']}/.tuneserve-tree.json" in store_keys(s3, "datasets/")
    spec: dict[str, Any] = {
        "task": "classification",
        "base_model": BASE,
        "method": {"type": "lora", "r": 16},
        "train_dataset": train["id"],
        "validation_dataset": dev["id"],
        "hyperparameters": {"epochs": 2, "max_length": 64, "checkpoint_every": 6},
        "resources": {"queue": "cpu-pool", "processes": 2},
    }
    # Routed: a job for a queue no worker serves waits; this one goes to the cpu-pool queue.
    unserved = client.post("/v1/jobs", json=spec | {"resources": {"queue": "nobody"}}).json()
    resp = client.post("/v1/jobs", json=spec)
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert resp.json()["resources"] == {"queue": "cpu-pool", "processes": 2}

    # A checkpoint in the store, listed by the API from there; then the worker machine dies.
    wait_for(client, job_id, ("running",), 300, service.data_dir, min_step=8)
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert listed and listed[-1]["step"] % 6 == 0, listed
    assert any(k.startswith(f"jobs/{job_id}/checkpoints/") for k in store_keys(s3, "jobs/"))
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    (pids,) = [e["data"]["pids"] for e in events if "pids" in (e.get("data") or {})]
    service.kill_worker(signal.SIGKILL)
    # torchrun and its ranks do not outlive the worker that launched them.
    assert not still_running(pids), pids
    empty = tmp_path / "new-machine"
    service.worker_argv[service.worker_argv.index("training,cpu-pool")] = "cpu-pool"
    service.start_worker(data_dir=empty)

    job = wait_for_job(client, job_id, timeout=400, data_dir=service.data_dir)
    if job["status"] != "succeeded":
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
        pytest.fail(f"{job['status']}: {job.get('error')}; {[e['message'] for e in events][-30:]}")
    assert job["attempt"] == 2, job
    assert job["hyperparameters"]["processes"] == 2
    assert (
        job["hyperparameters"]["effective_batch_size"] == 2 * job["hyperparameters"]["batch_size"]
    )
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    resumed = [e["message"] for e in events if e["message"].startswith("resuming from")]
    assert resumed and "checkpoint-" in resumed[0], [e["message"] for e in events][-20:]
    # Each process trains on its own half of the rows: together they see every row once, but
    # the few the sampler repeats to give both a full last step; the steps are those of one
    # process with the whole batch.
    effective = job["hyperparameters"]["effective_batch_size"]
    assert job["progress"]["total"] == 2 * math.ceil(LORA_ROWS / effective), job["progress"]
    shards = [e["data"] for e in events if "shard_rows" in (e.get("data") or {})]
    assert shards, [e["message"] for e in events][-20:]
    first = shards[0]
    assert first["distinct_rows"] == first["train_rows"] == LORA_ROWS, first
    assert first["shard_rows"][0] == first["shard_rows"][1], first
    assert first["repeated_rows"] < effective, first
    mine = [m for m in client.get("/v1/models").json()["data"] if m["job_id"] == job_id]
    assert [m["id"] for m in mine] == [job["model_id"]]  # exactly one model
    waiting = client.get(f"/v1/jobs/{unserved['id']}").json()
    assert (waiting["status"], waiting["attempt"]) == ("queued", 0), waiting
    assert client.post(f"/v1/jobs/{unserved['id']}/cancel").status_code == 200
    # Its files are in the store; the job's checkpoints are gone with the job.
    model_keys = store_keys(s3, f"models/{job['model_id']}/")
    assert f"models/{job['model_id']}/.tuneserve-tree.json" in model_keys
    assert f"models/{job['model_id']}/adapter_model.safetensors" in model_keys
    # (The worker removes them right after it records the job's end.)
    deadline = time.monotonic() + 30
    while store_keys(s3, f"jobs/{job_id}/") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store_keys(s3, f"jobs/{job_id}/") == []

    # The API loads it from the store into its own cache and serves it.
    texts = [t for t, _ in dev_rows]
    resp = client.post(
        "/v1/predict/classification", json={"model": job["model_id"], "inputs": texts}
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    accuracy = sum(p[0]["label"] == gold for p, (_, gold) in zip(preds, dev_rows, strict=True))
    accuracy /= len(dev_rows)
    assert accuracy >= 0.65 and abs(accuracy - job["metrics"]["accuracy"]) < 0.02, accuracy
    api_disk = service.data_dir / "api-disk"
    assert (api_disk / "cache" / "models" / job["model_id"]).is_dir()
    # No process wrote a dataset or a model where another could only read it from its disk.
    for disk in (
        api_disk,
        service.data_dir / "worker-disk",
        empty,
        service.data_dir / "relay-disk",
    ):
        assert not (disk / "models").exists() and not (disk / "datasets").exists(), disk


def test_while_the_store_is_down_uploads_say_503_and_jobs_fail_cleanly(
    stack: tuple[Service, S3Server],
) -> None:
    service, s3 = stack
    client = service.client
    dataset = upload(client, "train.tsv", sst2_slice("train.tsv", 100)[0])
    before = client.get("/v1/datasets").json()["data"]
    # A worker that gives up on the store after 4 s, so that the job below fails soon.
    service.kill_worker(signal.SIGTERM)
    service.start_worker(extra_env={"TUNESERVE_STORAGE_RETRY_SECONDS": "4"})
    s3.stop()
    try:
        resp = client.post(
            "/v1/datasets",
            data={"task": "classification"},
            files={
                "file": ("more.tsv", sst2_slice("train.tsv", 50)[0], "text/tab-separated-values")
            },
        )
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "storage_unavailable"
        assert int(resp.headers["Retry-After"]) > 0
        assert client.get("/v1/datasets").json()["data"] == before  # nothing half-made

        spec = {
            "task": "classification",
            "base_model": BASE,
            "method": {"type": "lora"},
            "train_dataset": dataset["id"],
            "hyperparameters": {"epochs": 1, "max_length": 32},
            "resources": {"queue": "cpu-pool"},  # the one the worker now serves
        }
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        job = wait_for_job(client, job_id, timeout=120, data_dir=service.data_dir)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "storage_unavailable", job["error"]
        assert "object store" in job["error"]["message"]
    finally:
        s3.start()  # back, empty (moto keeps objects in memory): later tests upload afresh
        s3.create_bucket()
