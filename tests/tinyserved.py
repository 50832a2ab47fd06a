"""Real tiny models of every task and artifact kind, for tests that send /predict what a hostile
client would: the tiny BERT trained through the real API (uploads, job submission) and the
worker's code run in-process, in a few seconds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.ml.test_ner_training import ner_rows
from tests.ml.test_qa import synthetic_rows
from tests.tinymodel import build_tiny_model_dir, sentiment_rows

TASKS = ("classification", "ner", "qa")
# How a registered model's weights are stored (Model.artifact), and the job that makes each.
KINDS: dict[str, dict[str, Any]] = {
    "full": {"type": "full"},
    "adapter": {"type": "lora", "r": 4},
    "merged": {"type": "lora", "r": 4, "merge_adapter": True},
    "int8_dynamic": {"type": "quantize", "scheme": "int8_dynamic"},
    "onnx": {"type": "export", "format": "onnx", "quantization": "none"},
    "onnx_int8": {"type": "export", "format": "onnx", "quantization": "int8"},
}
# Kinds made from the full model rather than trained.
DERIVED = frozenset({"quantize", "export"})


def serving_settings(root: Path, *, build: bool = True, **overrides: Any) -> Settings:
    """Settings on a fresh data dir under `root` that list the tiny BERT as `local/tiny-bert`
    (written there unless `build` is False: a copy already holds it)."""
    if build:
        build_tiny_model_dir(root / "base-models" / "tiny-bert")
    values: dict[str, Any] = {
        "data_dir": root / "data",
        "redis_url": None,
        "rate_limit_per_minute": 0,  # thousands of requests per key
        "local_models_dir": root / "base-models",
        "training_threads": 1,
    }
    return Settings(**{**values, **overrides})


def _jsonl(rows: dict[str, list[Any]]) -> bytes:
    columns = list(rows)
    count = len(rows[columns[0]])
    return "".join(
        json.dumps({c: rows[c][i] for c in columns}) + "\n" for i in range(count)
    ).encode()


def train_served_models(client: TestClient, settings: Settings) -> dict[str, dict[str, str]]:
    """Model ids by task, then by artifact kind: a full model, a LoRA adapter, a LoRA merged at
    registration, the full model quantized to int8 and exported to ONNX (fp32 and int8); one
    epoch each on 40 rows."""
    from worker.jobs import run_job

    rows = {
        "classification": sentiment_rows(40),
        "ner": ner_rows(40, seed=0),
        "qa": synthetic_rows(40, seed=1),
    }
    models: dict[str, dict[str, str]] = {}
    for task in TASKS:
        upload = client.post(
            "/v1/datasets", data={"task": task}, files={"file": ("rows.jsonl", _jsonl(rows[task]))}
        )
        assert upload.status_code == 201, upload.text
        hyperparameters = {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3}
        if task == "qa":
            hyperparameters["max_length"] = 32  # long contexts become several windows
        models[task] = {}
        for kind, method in KINDS.items():
            spec: dict[str, Any] = {"task": task, "method": method}
            if method["type"] in DERIVED:
                spec["base_model"] = f"model:{models[task]['full']}"
            else:
                spec |= {
                    "base_model": "local/tiny-bert",
                    "train_dataset": upload.json()["id"],
                    "hyperparameters": hyperparameters,
                }
            job = client.post("/v1/jobs", json=spec)
            assert job.status_code == 201, job.text
            status = run_job(settings, job.json()["id"])
            read = client.get(f"/v1/jobs/{job.json()['id']}").json()
            assert status == "succeeded", read
            models[task][kind] = read["model_id"]
            assert client.get(f"/v1/models/{read['model_id']}").json()["artifact"] == kind
    return models


def served_copy(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> tuple[Settings, dict[str, dict[str, str]]]:
    """A migrated data dir holding the models of `train_served_models`, and their ids.

    They are trained once per test run, under a file lock in the run's temporary folder (shared by
    the pytest-xdist workers), and each caller gets its own copy: the modules that need them
    (schemathesis, hostile inputs) no longer train the same twelve models each."""
    from filelock import FileLock

    from app.db.migrate import upgrade
    from app.main import create_app
    from tests.conftest import RecordingQueue, auth, create_api_key

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    trained = shared / "tiny-served"
    with FileLock(str(shared / "tiny-served.lock")):
        if not (trained / "models.json").is_file():
            shutil.rmtree(trained, ignore_errors=True)
            conf = serving_settings(trained / "root")
            upgrade(conf)
            application = create_app(conf, queue=RecordingQueue())
            try:
                with TestClient(application, headers=auth(create_api_key(conf))) as client:
                    models = train_served_models(client, conf)
            finally:
                application.state.engine.dispose()
            (trained / "models.json").write_text(json.dumps(models))
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(trained / "root", root, dirs_exist_ok=True)
    return serving_settings(root, build=False), json.loads((trained / "models.json").read_text())
