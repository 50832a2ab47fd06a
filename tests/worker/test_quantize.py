"""Quantize jobs for real on the tiny BERT: submitted through the API, run by the worker, the int8
model registered beside its parent's evaluation on the same rows, and served quantized."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobStatus, Model
from app.predict.predictor import load_predictor
from tests.tinymodel import sentiment_rows
from worker.jobs import run_job

# Easy inputs: words of one sentiment only.
EASY = {"a great superb film": "pos", "awful boring plot": "neg", "lovely warm story": "pos"}
QUANTIZE = {"type": "quantize", "scheme": "int8_dynamic"}


def _failure(db: Session, job_id: str) -> str:
    db.expire_all()
    job = db.get(Job, job_id)
    return f"{job.error_code}: {job.error_message}" if job else "no job"


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(**kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def _meta(settings: Any, row: Model) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (settings.data_dir / row.storage_path / "tuneserve.json").read_text()
    )
    return data


def _quantize(client: Any, parent: Model, **spec: Any) -> str:
    body = {"task": "classification", "base_model": f"model:{parent.id}", "method": QUANTIZE}
    resp = client.post("/v1/jobs", json=body | spec)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _logits(predictor: Any, texts: list[str]) -> torch.Tensor:
    enc = predictor.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits: torch.Tensor = predictor.model(**enc).logits
    return logits


def test_quantize_job_registers_an_int8_model_measured_beside_its_parent(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client,
) -> None:
    # A parent evaluated on a split held out of its train set (seeded, stratified).
    parent = _train(
        train_settings,
        db,
        add_job,
        train=add_dataset(sentiment_rows(80, seed=3)),
        epochs=3,
        learning_rate=5e-3,
    )
    parent_meta = _meta(train_settings, parent)
    assert parent_meta["validation_dataset"]["kind"] == "stratified"

    job_id = _quantize(client, parent)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["train_dataset"] == parent.train_dataset_id and job["validation_dataset"] is None
    assert job["seed"] == 7  # the parent's, with which its split is drawn again
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)

    # Registered only now, with both evaluations side by side in the API.
    job = client.get(f"/v1/jobs/{job_id}").json()
    read = client.get(f"/v1/models/{job['model_id']}").json()
    assert read["artifact"] == "int8_dynamic" and read["method"] == "quantize"
    assert read["parent_model"] == parent.id and read["base_model"] == f"model:{parent.id}"
    assert read["label_names"] == parent.label_names
    metrics, baseline = read["metrics"], read["parent_metrics"]
    assert {"accuracy", "eval_loss"} <= set(metrics) and {"accuracy", "eval_loss"} <= set(baseline)
    assert job["metrics"] == metrics
    assert "model_preparation_time" not in metrics  # Trainer bookkeeping, not a metric
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[read["id"]]["parent_metrics"] == baseline
    assert listed[parent.id]["parent_metrics"] is None
    # The trivial baseline is the parent's (same rows), with a verdict of its own: 8 held-out
    # rows are too few to tell.
    assert parent.baseline_metrics is not None and set(parent.baseline_metrics) == {
        "accuracy",
        "macro_f1",
    }
    assert read["baseline_metrics"] == parent.baseline_metrics == job["baseline_metrics"]
    assert listed[read["id"]]["baseline_metrics"] == parent.baseline_metrics
    assert read["quality"] == job["quality"] == "too_few_validation_rows"
    assert any("too few" in w for w in job["warnings"])

    # The baseline is the parent on exactly its own validation rows: same count, same loss.
    row = db.get(Model, read["id"])
    assert row is not None
    meta = _meta(train_settings, row)
    assert meta["validation_dataset"]["rows_used"] == parent_meta["validation_dataset"]["rows_used"]
    assert meta["validation_dataset"]["kind"] == "stratified"
    assert baseline["accuracy"] == parent.metrics["accuracy"]
    assert baseline["eval_loss"] == pytest.approx(parent.metrics["eval_loss"], abs=1e-5)
    assert metrics["accuracy"] == pytest.approx(baseline["accuracy"], abs=0.2)
    assert meta["parent_metrics"] == baseline and meta["metrics"] == metrics
    assert meta["baseline_metrics"] == parent.baseline_metrics
    assert meta["quality"] == "too_few_validation_rows"
    assert meta["quantization"]["parent"]["id"] == parent.id
    assert meta["quantization"]["quantized_layers"] == 14  # 2 x 6 per layer, pooler, classifier
    # No weights of its own: the tokenizer and the metadata only.
    files = {p.name for p in (train_settings.data_dir / row.storage_path).iterdir()}
    assert "tuneserve.json" in files and not any(f.endswith(".safetensors") for f in files)
    assert "config.json" not in files

    # Both evaluations and their speed are in the job's events.
    events = db.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id)).all()
    evals = {e["precision"]: e for e in events if e and e.get("kind") == "eval"}
    assert evals.keys() == {"fp32", "int8"}
    assert all(e["samples_per_second"] > 0 for e in evals.values())
    assert evals["int8"]["accuracy"] == metrics["accuracy"]
    summary = next(e for e in events if e and "speedup" in e)
    assert (
        summary["speedup"] > 0
        and summary["validation_rows"] == meta["validation_dataset"]["rows_used"]
    )

    # Served: the parent's weights quantized, answering like the fp32 parent.
    served, fp32 = load_predictor(train_settings, row), load_predictor(train_settings, parent)
    linear = [m for m in served.model.modules() if type(m) is torch.nn.Linear]
    quantized = [
        m for m in served.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    ]
    assert linear == [] and len(quantized) == 14
    # Its memory counts the packed int8 weights (which are not parameters): each linear weight
    # takes one byte per value instead of four; the rest stays fp32.
    packed = sum(m.weight().numel() for m in quantized)
    assert served.weight_bytes == pytest.approx(fp32.weight_bytes - 3 * packed, abs=packed / 20)
    texts = list(EASY)
    got, expected = _logits(served, texts), _logits(fp32, texts)
    assert not torch.equal(got, expected)  # really int8...
    assert torch.allclose(got.softmax(-1), expected.softmax(-1), atol=0.05)  # ...and close
    resp = client.post(
        "/v1/predict/classification", json={"model": row.id, "inputs": texts, "top_k": 1}
    )
    assert resp.status_code == 200, resp.text
    labels = [p[0]["label"] for p in resp.json()["predictions"]]
    assert labels == list(EASY.values())


def test_an_adapter_parent_is_merged_and_compared_on_its_validation_dataset(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client,
) -> None:
    validation = add_dataset(sentiment_rows(16, seed=1))
    parent = _train(
        train_settings,
        db,
        add_job,
        method={"type": "lora", "r": 4, "lora_dropout": 0.0},
        validation=validation,
        epochs=3,
        learning_rate=1e-2,
    )
    job_id = _quantize(client, parent)
    assert client.get(f"/v1/jobs/{job_id}").json()["validation_dataset"] == validation
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    row = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert row.validation_dataset_id == validation and row.parent_metrics is not None
    assert row.baseline_metrics == parent.baseline_metrics is not None
    assert _meta(train_settings, row)["validation_dataset"]["rows_used"] == 16
    # The merged adapter evaluates as the adapter did while training (merging is exact to fp32
    # rounding).
    assert row.parent_metrics["accuracy"] == parent.metrics["accuracy"]
    assert row.parent_metrics["eval_loss"] == pytest.approx(parent.metrics["eval_loss"], abs=1e-4)
    served = load_predictor(train_settings, row)
    assert type(served.model).__name__ == "BertForSequenceClassification"
    assert not any(type(m) is torch.nn.Linear for m in served.model.modules())


def test_rows_that_differ_from_the_parents_fail_the_job_and_register_nothing(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client,
) -> None:
    parent = _train(train_settings, db, add_job, epochs=1)
    job_id = _quantize(client, parent)
    # The parent says it was evaluated on other rows than the ones its split gives again.
    path = train_settings.data_dir / parent.storage_path / "tuneserve.json"
    meta = json.loads(path.read_text())
    meta["validation_dataset"]["rows_used"] += 1
    path.write_text(json.dumps(meta))

    assert run_job(train_settings, job_id) == JobStatus.FAILED
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["error"]["code"] == "validation_rows_mismatch" and job["model_id"] is None
    assert db.scalars(select(Model).where(Model.job_id == job_id)).first() is None
    assert [p.name for p in train_settings.models_dir.iterdir()] == [parent.id]


def _quantize_row(db: Session, parent: Model) -> str:
    """A queued quantize job of `parent`, as submission would store it (its seed and split)."""
    from app.db.models import new_id
    from app.job.schemas import Hyperparameters, JobSpec

    parent_job = db.get(Job, parent.job_id)
    assert parent_job is not None
    was = JobSpec.model_validate(parent_job.spec)
    spec = JobSpec(
        method=QUANTIZE,  # type: ignore[arg-type]
        hyperparameters=Hyperparameters(validation_split=was.hyperparameters.validation_split),
        task_options=was.task_options,
        seed=was.seed,
    )
    job_id = new_id("job")
    db.add(
        Job(
            tenant_id="default",
            id=job_id,
            task=parent.task,
            base_model=f"model:{parent.id}",
            train_dataset_id=parent.train_dataset_id,
            spec=spec.model_dump(mode="json"),
            status=JobStatus.QUEUED,
        )
    )
    db.commit()
    return job_id


def test_ner_and_qa_models_are_compared_with_their_own_evaluation(
    train_settings, db: Session, stored_rows: dict[str, Any]
) -> None:
    from tests.ml.test_ner_training import ner_rows
    from tests.ml.test_qa import synthetic_rows
    from tests.worker.conftest import TINY_MODEL_ID
    from tests.worker.test_lineage import _run, _task_job

    ner = _run(
        train_settings,
        db,
        _task_job(
            db,
            stored_rows,
            task="ner",
            base_model=TINY_MODEL_ID,
            rows=ner_rows(40, seed=0),
            method={"type": "full"},
        ),
    )
    # QA's evaluation maps features back to rows by position (document stride), and its parent
    # here is an adapter, merged before quantizing.
    qa = _run(
        train_settings,
        db,
        _task_job(
            db,
            stored_rows,
            task="qa",
            base_model=TINY_MODEL_ID,
            rows=synthetic_rows(24, seed=1),
            method={"type": "lora", "r": 4},
            doc_stride=8,
        ),
    )
    for parent, keys in ((ner, {"f1", "precision", "recall"}), (qa, {"exact_match", "f1"})):
        row = _run(train_settings, db, _quantize_row(db, parent))
        assert row.artifact == "int8_dynamic" and row.parent_metrics is not None
        assert keys <= set(row.metrics) and keys <= set(row.parent_metrics)
        assert row.parent_metrics["f1"] == parent.metrics["f1"]
        assert row.parent_metrics["eval_loss"] == pytest.approx(
            parent.metrics["eval_loss"], abs=1e-4
        )
        # The task's own baseline on the same rows: the parent's again.
        assert parent.baseline_metrics is not None and keys <= set(parent.baseline_metrics)
        assert row.baseline_metrics == parent.baseline_metrics
        assert row.quality == parent.quality == "too_few_validation_rows"
