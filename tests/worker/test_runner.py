"""The training runner for real on a tiny BERT: full and LoRA fine-tuning, cancel, failure."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.models import EventType, Job, JobEvent, JobStatus, Model
from tests.tinymodel import sentiment_rows
from worker.jobs import run_job


def _job(db: Session, job_id: str) -> Job:
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None
    return job


def _events(db: Session, job_id: str) -> list[JobEvent]:
    return list(db.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def _model_files(settings) -> list[str]:  # type: ignore[no-untyped-def]
    models = settings.models_dir
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_full_finetune_registers_a_transformers_model(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    # 60 validation rows: enough (50) for a verdict against the trivial baseline.
    validation = add_dataset(sentiment_rows(60, seed=1))
    job_id = add_job(validation=validation, epochs=6, learning_rate=1e-2)

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED

    job = _job(db, job_id)
    assert (job.status, job.attempt, job.error_code) == ("succeeded", 1, None)
    assert job.progress_total > 0 and job.progress_step == job.progress_total
    assert job.epoch == 6 and job.train_loss is not None and job.finished_at is not None
    assert job.metrics is not None
    expected = {"accuracy", "macro_f1", "per_class", "confusion_matrix", "eval_loss"}
    assert expected <= set(job.metrics)
    assert job.metrics["accuracy"] >= 0.9  # the two word lists are easy to tell apart
    # The train set's classes tie (20 each): the first label, neg, is predicted for every row.
    assert job.baseline_metrics == {"accuracy": 0.5, "macro_f1": pytest.approx(1 / 3)}
    assert job.quality == "better_than_baseline" and job.training_warnings is None

    events = _events(db, job_id)
    statuses = [e.data["status"] for e in events if e.type == EventType.STATUS and e.data]
    assert statuses == ["running", "succeeded"]
    logs = " | ".join(e.message for e in events if e.type == EventType.LOG)
    for needle in ("40 train rows, 60 validation rows", "2 labels", "parameters train", "hyperpar"):
        assert needle in logs
    assert "trivial baseline on the 60 validation rows: accuracy 0.5000" in logs
    assert not [e for e in events if e.type == EventType.WARNING]
    metric_events = [e.data for e in events if e.type == EventType.METRICS and e.data]
    assert [m["epoch"] for m in metric_events if m["kind"] == "eval"] == [1, 2, 3, 4, 5, 6]
    assert any(m["kind"] == "train" and m["loss"] is not None for m in metric_events)

    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert job.model_id == model.id and model.method == "full"
    assert model.label_names == ["neg", "pos"] and model.metrics == job.metrics
    assert model.baseline_metrics == job.baseline_metrics and model.quality == job.quality
    path = train_settings.data_dir / model.storage_path
    assert _model_files(train_settings) == [model.id]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tuneserve.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)

    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(str(path))
    assert loaded.config.id2label == {0: "neg", 1: "pos"}

    meta = json.loads((path / "tuneserve.json").read_text())
    assert meta["task"] == "classification" and meta["label_names"] == ["neg", "pos"]
    assert meta["base_model"]["id"] == "local/tiny-bert" and meta["method"]["type"] == "full"
    assert meta["seed"] == 7 and meta["hyperparameters"]["learning_rate"] == 1e-2
    assert meta["validation_dataset"]["id"] == validation and meta["metrics"] == job.metrics
    assert meta["baseline_metrics"] == job.baseline_metrics
    assert meta["quality"] == "better_than_baseline"
    assert meta["parameters"]["trainable"] == meta["parameters"]["total"] > 0
    assert {"torch", "transformers", "peft"} <= set(meta["versions"])
    assert "model.safetensors" in meta["files"] and len(meta["files"]["model.safetensors"]) == 64
    assert not (train_settings.jobs_dir / job_id).exists()


def test_lora_saves_adapter_with_head(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job(method={"type": "lora", "r": 4, "lora_alpha": 8}, learning_rate=1e-2)

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED

    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    path = train_settings.data_dir / model.storage_path
    names = {p.name for p in path.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tuneserve.json"} <= names
    assert "model.safetensors" not in names
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"query", "value"}
    assert "classifier" in adapter["modules_to_save"]
    meta = json.loads((path / "tuneserve.json").read_text())
    assert meta["method"]["type"] == "lora"
    assert meta["method"]["target_modules"] == ["query", "value"]
    assert 0 < meta["parameters"]["trainable"] < meta["parameters"]["total"]
    # 10% of 40 rows held out, stratified on the label.
    assert meta["validation_dataset"] == {
        "id": None,
        "sha256": None,
        "rows_used": 4,
        "kind": "stratified",
    }

    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        str(train_settings.local_models_dir / "tiny-bert"), num_labels=2
    )
    peft_model = PeftModel.from_pretrained(base, str(path))
    saved = load_file(str(path / "adapter_model.safetensors"))
    head_key = next(k for k in saved if "classifier" in k and k.endswith("weight"))
    head = peft_model.base_model.model.classifier.modules_to_save["default"].weight
    assert head.detach().equal(saved[head_key])


def test_duplicate_delivery_and_cancelled_job_do_nothing(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job(epochs=1)
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    before = len(_events(db, job_id))

    assert run_job(train_settings, job_id) is None

    job = _job(db, job_id)
    assert (job.status, job.attempt) == ("succeeded", 1)
    assert len(_events(db, job_id)) == before
    assert db.scalar(select(func.count()).select_from(Model)) == 1

    cancelled = add_job(epochs=1)
    db.execute(update(Job).where(Job.id == cancelled).values(status=JobStatus.CANCELLED))
    db.commit()
    assert run_job(train_settings, cancelled) is None
    assert _job(db, cancelled).attempt == 0


def test_cancel_during_training_registers_nothing(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job(epochs=100)
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(train_settings)
    factory = make_sessionmaker(engine)

    def cancel_once_running() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with factory() as session:
                job = session.get(Job, job_id)
                if job is not None and job.progress_step > 0:
                    session.execute(
                        update(Job).where(Job.id == job_id).values(cancel_requested=True)
                    )
                    session.commit()
                    return
            time.sleep(0.02)

    canceller = threading.Thread(target=cancel_once_running)
    canceller.start()
    started = time.monotonic()
    status = run_job(train_settings, job_id)
    canceller.join()
    engine.dispose()

    assert status == JobStatus.CANCELLED
    assert time.monotonic() - started < 30
    job = _job(db, job_id)
    assert job.status == "cancelled" and job.model_id is None and job.finished_at is not None
    assert 0 < job.progress_step < job.progress_total
    assert db.scalar(select(func.count()).select_from(Model)) == 0
    assert _model_files(train_settings) == []
    assert _events(db, job_id)[-1].data == {"status": "cancelled"}


def test_failure_marks_job_failed_and_cleans_up(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    broken = add_dataset(OSError("disk on fire"))
    job_id = add_job(train=broken)

    assert run_job(train_settings, job_id) == JobStatus.FAILED

    job = _job(db, job_id)
    assert job.status == "failed" and job.error_code == "training_error"
    assert job.error_message == "OSError: disk on fire"
    assert _events(db, job_id)[-1].data == {"status": "failed", "error_code": "training_error"}
    assert _model_files(train_settings) == []
    assert db.scalar(select(func.count()).select_from(Model)) == 0


def test_unknown_base_model_fails_with_its_name(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    job_id = add_job(base_model="local/gone")

    assert run_job(train_settings, job_id) == JobStatus.FAILED

    job = _job(db, job_id)
    assert job.error_code == "invalid_input"
    assert job.error_message is not None and "local/gone" in job.error_message
    assert "local/tiny-bert" in job.error_message


def test_no_stray_directories(train_settings, add_job: Callable[..., str]) -> None:
    job_id = add_job(epochs=1)
    run_job(train_settings, job_id)
    names = [p.name for p in Path(train_settings.models_dir).iterdir()]
    assert len(names) == 1 and not names[0].startswith(".")


def test_ia3_saves_adapter_with_head_and_serves_merged(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    from app.predict.predictor import load_predictor

    job_id = add_job(method={"type": "ia3"}, learning_rate=3e-2, epochs=4)
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    path = train_settings.data_dir / model.storage_path
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IA3"
    assert set(adapter["target_modules"]) == {"key", "value", "output.dense"}
    assert adapter["feedforward_modules"] == ["output.dense"]
    assert "classifier" in adapter["modules_to_save"]
    meta = json.loads((path / "tuneserve.json").read_text())
    assert meta["method"]["type"] == "ia3"
    params = meta["parameters"]
    # IA3 trains scaling vectors, the head and the pooler (1,122 weights in this tiny model):
    # far fewer weights than the whole model.
    assert 1122 < params["trainable"] < params["total"] / 10
    predictor = load_predictor(train_settings, model)
    assert predictor.model.__class__.__name__ == "BertForSequenceClassification"  # merged


def _mostly_positive(n: int, negatives: int) -> dict[str, list[str]]:
    rows = sentiment_rows(2 * n, seed=5)
    pos = [t for t, label in zip(rows["text"], rows["label"], strict=True) if label == "pos"][:n]
    neg = [t for t, label in zip(rows["text"], rows["label"], strict=True) if label == "neg"]
    texts = pos[: n - negatives] + neg[:negatives]
    return {"text": texts, "label": ["pos"] * (n - negatives) + ["neg"] * negatives}


def test_a_model_that_cannot_learn_is_registered_no_better_than_baseline(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    # 9 in 10 validation rows are pos, as the train set's majority: the baseline scores 0.9 and a
    # model needs 0.91. A learning rate of 1e-12 leaves the random head as it was, and with one
    # full batch a step and no dropout the training loss stays exactly where it started.
    train = add_dataset(_mostly_positive(40, 10))
    validation = add_dataset(_mostly_positive(60, 6))
    job_id = add_job(
        train=train,
        validation=validation,
        epochs=5,
        batch_size=40,
        learning_rate=1e-12,
        dropout=0.0,
    )

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    job = _job(db, job_id)
    assert job.baseline_metrics is not None and job.baseline_metrics["accuracy"] == 0.9
    assert job.metrics is not None and job.metrics["accuracy"] < 0.91
    assert job.quality == "no_better_than_baseline"
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert model.quality == "no_better_than_baseline"  # registered all the same

    warnings = [e for e in _events(db, job_id) if e.type == EventType.WARNING]
    assert [w.data["kind"] for w in warnings if w.data] == ["training_loss", "quality"]
    loss, quality = (w.message for w in warnings)
    assert "training loss did not fall" in loss and "learning rate" in loss
    assert f"accuracy {job.metrics['accuracy']:.4f} against the baseline's 0.9000" in quality
    for advice in ("more training data", "more epochs", "another method", "learning rate"):
        assert advice in quality
    assert warnings[1].data is not None and warnings[1].data["required"] == pytest.approx(0.91)
    # GET /jobs/{id} shows both among its warnings, after the submission's (none here).
    from app.job.schemas import JobRead

    read = JobRead.from_row(job)
    assert read.warnings == [loss, quality] and read.quality == "no_better_than_baseline"
    assert read.baseline_metrics == job.baseline_metrics
