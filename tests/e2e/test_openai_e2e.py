"""The official `openai` SDK against the running service (real HTTP, Redis, a Celery worker):
upload SST-2 rows in OpenAI's chat format, fine-tune all-MiniLM-L6-v2 with "auto" batch size and
learning rate (3 epochs: "auto" would make 10 of 200 rows, minutes on a shared CPU; the in-process
SDK tests check its translation), follow the job to `succeeded`, read its events and
checkpoints, and serve `fine_tuned_model` through /v1/predict."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from openai import OpenAI

from tests.e2e.service import Service, tail_logs
from tests.e2e.test_classification_e2e import BASE, sst2_slice

pytestmark = pytest.mark.e2e

ROWS = 200
NAMES = {"0": "negative", "1": "positive"}


def chat_lines(rows: list[tuple[str, str]]) -> bytes:
    lines = []
    for text, label in rows:
        messages = [
            {"role": "system", "content": "Is this movie review positive or negative?"},
            {"role": "user", "content": text.strip()},
            {"role": "assistant", "content": NAMES[label]},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def test_sdk_fine_tunes_and_the_model_serves(
    e2e_service: Service, e2e_client: httpx.Client
) -> None:
    key = e2e_client.headers["Authorization"].removeprefix("Bearer ")
    client = OpenAI(base_url=f"{e2e_client.base_url}/openai/v1", api_key=key, max_retries=0)
    _, train_rows = sst2_slice("train.tsv", ROWS)
    _, dev_rows = sst2_slice("dev.tsv", ROWS)

    train = client.files.create(file=("train.jsonl", chat_lines(train_rows)), purpose="fine-tune")
    dev = client.files.create(file=("dev.jsonl", chat_lines(dev_rows)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE,
        training_file=train.id,
        validation_file=dev.id,
        hyperparameters={
            "n_epochs": 3,
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
            "max_length": 64,  # a Tuneserve hyperparameter, passed on
        },
        metadata={"experiment": "sst2-e2e"},
    )
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, tail_logs(e2e_service.data_dir)
        time.sleep(1)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", (job, tail_logs(e2e_service.data_dir))
    # "auto", resolved by the worker: batch 16 on a CPU (an eighth of 200 rows, a power of two).
    assert job.hyperparameters.n_epochs == 3
    assert job.hyperparameters.batch_size in (8, 16, 32)
    assert job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.fine_tuned_model is not None

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    valid = [e.data for e in events if e.type == "metrics" and e.data and "valid_loss" in e.data]
    assert len(valid) == 3, valid  # one evaluation an epoch
    assert any(e.type == "metrics" and e.data and "train_loss" in e.data for e in events)
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert checkpoint.fine_tuned_model_checkpoint == job.fine_tuned_model
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"experiment": "sst2-e2e"})] == [
        job.id
    ]

    texts = [text for text, _ in dev_rows]
    answer = e2e_client.post(
        "/v1/predict/classification", json={"model": job.fine_tuned_model, "inputs": texts}
    )
    assert answer.status_code == 200, answer.text
    predicted = [p[0]["label"] for p in answer.json()["predictions"]]
    accuracy = sum(p == NAMES[gold] for p, (_, gold) in zip(predicted, dev_rows, strict=True))
    assert accuracy / len(dev_rows) >= 0.6, accuracy  # chance is 0.5
