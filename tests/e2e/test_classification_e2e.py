"""Upload real SST-2 rows, fine-tune all-MiniLM-L6-v2 through Redis and a real Celery worker
process, and check that /predict clearly beats chance on held-out rows.

Runs on SQLite: LoRA submitted and followed with the `tuneserve` client, a duplicate queue message
and a cancel. Full fine-tuning of classification is in test_methods_e2e.py and test_quickstart.py;
LoRA on two data-parallel processes, on a real PostgreSQL with an S3-compatible store, in
test_workers_anywhere.py (its shards, batch and steps); that a data-parallel job reports the loss of
one process with the whole batch, in tests/worker/test_loss_scaling.py.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time
from pathlib import Path
from subprocess import CompletedProcess

import httpx
import pytest

from app.core.queue import CeleryJobQueue
from tests.conftest import shared_data
from tests.e2e.conftest import needs_weights
from tests.e2e.service import CLI, Service, wait_for_job

pytestmark = pytest.mark.e2e

BASE = "sentence-transformers/all-MiniLM-L6-v2"
# LoRA: 32 steps of its default rate clear its bar (0.65) comfortably.
LORA_ROWS = 500
HELD_OUT = 200


@pytest.fixture(autouse=True)
def _needs_weights() -> None:
    needs_weights()


def sst2_slice(name: str, n: int) -> tuple[bytes, list[tuple[str, str]]]:
    """The header plus the first n data lines, byte for byte, and the parsed rows."""
    lines = shared_data("sst2", name).read_bytes().splitlines(keepends=True)[: n + 1]
    reader = csv.reader(
        io.StringIO(b"".join(lines[1:]).decode()), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    return b"".join(lines), [(r[0], r[1]) for r in reader]


def upload(client: httpx.Client, name: str, content: bytes) -> dict:  # type: ignore[type-arg]
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": (name, content, "text/tab-separated-values")},
    )
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def tuneserve(client: httpx.Client, *args: str, input: str | None = None) -> CompletedProcess[str]:
    """Run a `tuneserve` client command against the service `client` talks to, with its key."""
    key = client.headers["Authorization"].removeprefix("Bearer ")
    env = os.environ | {"TUNESERVE_API_URL": str(client.base_url), "TUNESERVE_API_KEY": key}
    return subprocess.run(
        [*CLI, *args], env=env, input=input, capture_output=True, text=True, timeout=600
    )


def submit_with_cli(client: httpx.Client, tmp: Path, spec: dict) -> str:  # type: ignore[type-arg]
    """Upload both files and submit the job with `tuneserve`, following it to its end as a user
    would: `jobs submit --follow` prints progress lines and exits 0 once the job succeeds."""
    ids = {}
    for field, name in (("train_dataset", "train.tsv"), ("validation_dataset", "dev.tsv")):
        done = tuneserve(client, "datasets", "upload", str(tmp / name), "--task", "classification")
        assert done.returncode == 0, done.stderr
        ids[field] = done.stdout.split()[0]
    followed = tuneserve(
        client, "jobs", "submit", "--spec", "-", "--follow", input=json.dumps(spec | ids)
    )
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = followed.stdout.splitlines()
    job_id = lines[0].split()[0]
    steps = [line for line in lines if line.startswith("step ")]
    # One line at the first step and at each tenth of training, each with loss and ETA.
    assert len(steps) >= 5 and all("loss " in line and "ETA " in line for line in steps), lines
    assert "[running]" in followed.stdout and "[succeeded]" in followed.stdout
    assert lines[-1].startswith(f"job {job_id} succeeded") and "model mdl_" in lines[-1]
    return job_id


def train_and_check(
    client: httpx.Client,
    data_dir: Path,
    method: dict,  # type: ignore[type-arg]
    min_acc: float,
    *,
    cli_dir: Path,
) -> dict:  # type: ignore[type-arg]
    """Upload the files, submit the job and follow it with the `tuneserve` client commands; then
    check the job, the model and /predict."""
    train_bytes, _ = sst2_slice("train.tsv", LORA_ROWS)
    dev_bytes, dev_rows = sst2_slice("dev.tsv", HELD_OUT)
    spec = {
        "task": "classification",
        "base_model": BASE,
        "method": method,
        "hyperparameters": {"epochs": 2, "max_length": 64},
    }
    (cli_dir / "train.tsv").write_bytes(train_bytes)
    (cli_dir / "dev.tsv").write_bytes(dev_bytes)
    job_id = submit_with_cli(client, cli_dir, spec)
    job = wait_for_job(client, job_id, timeout=600, data_dir=data_dir)
    assert job["status"] == "succeeded", job
    assert job["progress"]["step"] == job["progress"]["total"] > 0
    assert job["metrics"]["accuracy"] >= min_acc
    # The defaults learn: clearly better than the majority class on the same rows.
    assert job["quality"] == "better_than_baseline", (job["metrics"], job["baseline_metrics"])
    if method == {"type": "full"}:  # every weight trains
        assert job["parameters"]["trainable"] == job["parameters"]["total"] > 0

    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert model["method"] == method["type"] and model["job_id"] == job["id"]
    assert sorted(model["label_names"]) == ["0", "1"]

    texts = [t for t, _ in dev_rows]
    resp = client.post(
        "/v1/predict/classification", json={"model": job["model_id"], "inputs": texts, "top_k": 2}
    )
    assert resp.status_code == 200, resp.text
    preds = resp.json()["predictions"]
    assert len(preds) == len(texts)
    assert all(len(p) == 2 and p[0]["score"] >= p[1]["score"] for p in preds)
    accuracy = sum(p[0]["label"] == gold for p, (_, gold) in zip(preds, dev_rows, strict=True))
    accuracy /= len(dev_rows)
    # Chance is about 0.5 on SST-2; a trained model must be clearly better.
    assert accuracy >= min_acc, accuracy
    # The reported validation accuracy and the served one agree (same rows, same model).
    assert abs(accuracy - job["metrics"]["accuracy"]) < 0.02

    events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 1000}).json()["data"]
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert any(e["type"] == "metrics" for e in events)
    return job


def test_sqlite_lora_through_the_client(
    e2e_service: Service, e2e_client: httpx.Client, tmp_path: Path
) -> None:
    # Full fine-tuning of classification is test_methods_e2e.py's (with its verdict) and the
    # quick start's (test_quickstart.py).
    data_dir = e2e_service.data_dir
    # Submitted and followed through the client commands, as a user at a terminal would.
    lora = {"type": "lora", "r": 16}
    one = train_and_check(e2e_client, data_dir, lora, min_acc=0.65, cli_dir=tmp_path)
    duplicate_delivery_does_nothing(e2e_service, e2e_client, one)
    cancel_running_job(e2e_service, e2e_client, one)


def duplicate_delivery_does_nothing(
    svc: Service,
    client: httpx.Client,
    job: dict,  # type: ignore[type-arg]
) -> None:
    """Redis delivers the id of a finished job again: the claim finds it taken; nothing changes."""
    models_before = client.get("/v1/models").json()["data"]
    CeleryJobQueue(svc.redis_url).enqueue(job["id"])
    deadline = time.monotonic() + 60
    log = svc.data_dir / "worker.log"
    skipped = f"job {job['id']} is not queued"
    while skipped not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert skipped in log.read_text()
    after = client.get(f"/v1/jobs/{job['id']}").json()
    assert (after["status"], after["attempt"], after["model_id"]) == (
        "succeeded",
        job["attempt"],
        job["model_id"],
    )
    assert client.get("/v1/models").json()["data"] == models_before


def cancel_running_job(svc: Service, client: httpx.Client, done: dict) -> None:  # type: ignore[type-arg]
    """A running job asked to cancel stops at its next step and registers nothing."""
    models_before = len(client.get("/v1/models").json()["data"])
    resp = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": BASE,
            "train_dataset": done["train_dataset"],
            "hyperparameters": {"epochs": 50, "max_length": 64},
        },
    )
    job_id = resp.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] > 0:
            break
        time.sleep(0.25)
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    job = wait_for_job(client, job_id, timeout=60, data_dir=svc.data_dir)
    assert job["status"] == "cancelled" and job["model_id"] is None
    assert job["progress"]["step"] < job["progress"]["total"]
    assert len(client.get("/v1/models").json()["data"]) == models_before
    assert not list((svc.data_dir / "models").glob("*" + job_id[4:] + "*"))
