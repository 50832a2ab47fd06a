"""Export jobs for real on the tiny BERT: submitted through the API, run by the worker, the ONNX
model registered beside its parent's evaluation on the same rows, and served by ONNX Runtime;
plus the graph of every task answering as its torch model does."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobStatus, Model
from app.ml.loading import load_model, load_tokenizer
from app.ml.runtimes import ONNX_FILE
from app.ml.tasks import get_task
from app.ml.tasks.serving import feature_rows
from app.predict.onnx import onnx_runner
from app.predict.predictor import _pad_values, load_predictor, plain_runner
from app.predict.runtime import run_rows
from tests.tinymodel import NEUTRAL, POSITIVE, build_tiny_model_dir, sentiment_rows
from worker.jobs import run_job
from worker.training import onnx_export

EASY = {"a great superb film": "pos", "awful boring plot": "neg", "lovely warm story": "pos"}


def _failure(db: Session, job_id: str) -> str:
    db.expire_all()
    job = db.get(Job, job_id)
    return f"{job.error_code}: {job.error_message}" if job else "no job"


def _export(client: Any, parent: Model, **method: Any) -> str:
    body = {
        "task": "classification",
        "base_model": f"model:{parent.id}",
        "method": {"type": "export", **method},
    }
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _scores(client: Any, model_id: str) -> list[list[dict[str, Any]]]:
    resp = client.post(
        "/v1/predict/classification", json={"model": model_id, "inputs": list(EASY), "top_k": None}
    )
    assert resp.status_code == 200, resp.text
    return list(resp.json()["predictions"])


@pytest.mark.parametrize(("quantization", "artifact"), [("none", "onnx"), ("int8", "onnx_int8")])
def test_export_job_registers_an_onnx_model_measured_beside_its_parent(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client,
    quantization: str,
    artifact: str,
) -> None:
    # A LoRA parent: merged before export.
    parent_job = add_job(
        method={"type": "lora", "r": 4, "lora_dropout": 0.0},
        train=add_dataset(sentiment_rows(80, seed=3)),
        epochs=3,
        learning_rate=1e-2,
    )
    assert run_job(train_settings, parent_job) == JobStatus.SUCCEEDED, _failure(db, parent_job)
    parent = db.scalars(select(Model).where(Model.job_id == parent_job)).one()

    job_id = _export(client, parent, quantization=quantization)
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    job = client.get(f"/v1/jobs/{job_id}").json()
    read = client.get(f"/v1/models/{job['model_id']}").json()
    assert read["artifact"] == artifact and read["method"] == "export"
    assert read["runtime"] == artifact
    assert read["parent_model"] == parent.id
    metrics, parent_metrics = read["metrics"], read["parent_metrics"]
    # The parent evaluated as it was when trained (merged), the export on the same rows.
    assert parent_metrics["accuracy"] == parent.metrics["accuracy"]
    if quantization == "none":
        assert metrics["accuracy"] == parent_metrics["accuracy"]
    assert read["baseline_metrics"] == parent.baseline_metrics
    events = db.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id)).all()
    evals = {e["precision"]: e for e in events if e and e.get("kind") == "eval"}
    assert evals.keys() == {"fp32", artifact}
    exported = next(e for e in events if e and "fused_operators" in e)
    # The tiny BERT's attention, embeddings and layer norms fused by ONNX Runtime's optimizer.
    assert exported["fused_operators"].get("Attention", 0) >= 1, exported

    # Its directory: the graph, the tokenizer, the metadata; no torch weights.
    row = db.get(Model, read["id"])
    assert row is not None
    files = {p.name for p in (train_settings.data_dir / row.storage_path).iterdir()}
    assert {ONNX_FILE, "tuneserve.json"} <= files
    assert not any(f.endswith(".safetensors") for f in files)

    # Served by ONNX Runtime, answering like the parent.
    served = load_predictor(train_settings, row)
    assert served.runtime == artifact and served.model is None
    got, want = _scores(client, row.id), _scores(client, parent.id)
    tolerance = 1e-4 if quantization == "none" else 0.05
    for a, b in zip(got, want, strict=True):
        assert [x["label"] for x in a] == [x["label"] for x in b] or quantization == "int8"
        scores_a = {x["label"]: x["score"] for x in a}
        scores_b = {x["label"]: x["score"] for x in b}
        assert all(abs(scores_a[k] - scores_b[k]) <= tolerance for k in scores_b), (a, b)
    if quantization == "int8":
        # Run a row at a time: each input's scores are those it gets alone, whatever its batch.
        for text, together in zip(EASY, got, strict=True):
            resp = client.post(
                "/v1/predict/classification",
                json={"model": row.id, "inputs": [text], "top_k": None},
            )
            assert resp.json()["predictions"] == [together]
    metrics_text = client.get("/metrics").text
    assert f'runtime="{artifact}"' in metrics_text

    # An export is no base: neither trained, quantized nor exported again.
    again = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": f"model:{row.id}",
            "method": {"type": "export"},
        },
    )
    assert again.status_code == 422 and "export of" in again.text


def test_export_refuses_training_fields_and_catalog_bases(client) -> None:
    body = {"task": "classification", "base_model": "tiny-bert", "method": {"type": "export"}}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 422 and "export needs base_model model:<id>" in resp.text
    bad = client.post(
        "/v1/jobs", json=body | {"method": {"type": "export", "quantization": "int4"}}
    )
    assert bad.status_code == 422 and "quantization" in bad.text


LABELS = {"classification": ["neg", "pos"], "ner": ["O", "B-PER", "I-PER", "B-LOC"], "qa": []}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-bert")


@pytest.mark.parametrize("task_name", ["classification", "ner", "qa"])
@pytest.mark.parametrize("int8", [False, True])
def test_every_tasks_graph_answers_as_its_torch_model(
    tiny_dir: Path, tmp_path: Path, task_name: str, int8: bool
) -> None:
    task = get_task(task_name)
    model = load_model(task, tiny_dir, label_names=LABELS[task_name]).eval()
    tokenizer = load_tokenizer(tiny_dir)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(NEUTRAL + POSITIVE, k=rng.randint(1, 40))) for _ in range(24)]
    pairs = list(reversed(texts)) if task_name == "qa" else None
    rows = feature_rows(tokenizer(texts, pairs, truncation=True, max_length=64))
    sample = {k: v for k, v in tokenizer(texts[:2], padding=True, return_tensors="pt").items()}
    exported = tmp_path / "exported.onnx"
    outputs = onnx_export.export_graph(model, sample, exported, per_token=task.per_token_outputs)
    assert outputs == (["start_logits", "end_logits"] if task_name == "qa" else ["logits"])
    onnx_export.optimize_graph(exported, model.config)
    graph_dir = tmp_path / "graph"
    graph_dir.mkdir()
    if int8:
        onnx_export.quantize_graph(exported, graph_dir / ONNX_FILE)
    else:
        exported.rename(graph_dir / ONNX_FILE)
    pads = _pad_values(tokenizer)
    runtime = "onnx_int8" if int8 else "onnx"
    onnx, size = onnx_runner(
        graph_dir, label="t", task=task, pad_values=pads, runtime=runtime, threads=1
    )
    assert size > 0
    torch_runner = plain_runner("t", task, model, tokenizer)
    none: list[str | None] = [None] * len(rows)
    # Batched differently (rows of other lengths padded together) and still the same answers.
    got = run_rows(onnx, rows, none, max_tokens=256, max_rows=5)
    want = run_rows(torch_runner, rows, none, max_tokens=4096, max_rows=64)
    tolerance = 0.1 if int8 else 1e-4
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for name in b:
            assert a[name].shape == b[name].shape
            assert np.abs(a[name] - b[name]).max() <= tolerance, (name, task_name)
