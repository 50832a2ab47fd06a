"""Training controls on the tiny BERT: early stopping, label smoothing, "auto" values, precision."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import JobStatus, Model
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from tests.worker.test_runner import _events, _job
from worker.jobs import run_job


def _metric_events(db: Session, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in _events(db, job_id) if e.data and e.data.get("kind") == kind]


def flip_every(rows: dict[str, list[str]], n: int) -> dict[str, list[str]]:
    """Rows with every n-th label flipped: a validation set the model overfits against."""
    swap = {"pos": "neg", "neg": "pos"}
    labels = [swap[label] if i % n == 0 else label for i, label in enumerate(rows["label"])]
    return {"text": rows["text"], "label": labels}


def registered_eval_loss(settings: Any, model: Model, rows: dict[str, list[str]]) -> float:
    """The cross-entropy of the registered model's weights on `rows`."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(settings.data_dir / model.storage_path)
    network = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer(rows["text"], padding=True, return_tensors="pt")
    labels = torch.tensor([network.config.label2id[label] for label in rows["label"]])
    with torch.no_grad():
        return float(network(**inputs, labels=labels).loss)


# 8 epochs of 5 steps; the validation loss falls, then rises as the model fits the train set.
EARLY_STOPPING: dict[str, Any] = {
    "epochs": 8,
    "learning_rate": 1e-2,
    "checkpoints_kept": 1,  # the Trainer keeps the best checkpoint beside the newest one
    "early_stopping": {"metric": "loss", "patience": 2},
}


def test_early_stopping_stops_and_registers_the_best_checkpoint(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    validation_rows = flip_every(sentiment_rows(12, seed=1), 3)
    job_id = add_job(validation=add_dataset(validation_rows), **EARLY_STOPPING)

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED

    job = _job(db, job_id)
    evals = _metric_events(db, job_id, "eval")
    assert job.progress_total == 40 and job.progress_step == evals[-1]["step"] < 40
    assert [e["epoch"] for e in evals] == list(range(1, len(evals) + 1))  # one per checkpoint
    best = min(evals, key=lambda e: e["eval_loss"])
    last = evals[-1]
    assert best["step"] < last["step"] and best["eval_loss"] < last["eval_loss"]
    # Stopped after `patience` evaluations without a better loss.
    assert last["step"] - best["step"] == 2 * 5

    # The job and the model carry the best evaluation, not the last one.
    best_metrics = {k: v for k, v in best.items() if k not in ("kind", "step", "epoch")}
    assert job.metrics == best_metrics
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert model.metrics == best_metrics
    # ... and the registered weights are the best checkpoint's.
    loss = registered_eval_loss(train_settings, model, validation_rows)
    assert loss == pytest.approx(best["eval_loss"], abs=1e-4)
    assert loss != pytest.approx(last["eval_loss"], abs=1e-2)

    logs = [e.message for e in _events(db, job_id) if e.type == "log"]
    assert any(m.startswith(f"stopped early at step {last['step']} of 40") for m in logs), logs
    assert any(m.startswith(f"restored checkpoint-{best['step']}, the best by loss") for m in logs)
    meta = json.loads((train_settings.data_dir / model.storage_path / "tuneserve.json").read_text())
    assert meta["training"]["stopped_early"] is True
    assert meta["training"]["restored_checkpoint_step"] == best["step"]
    assert meta["metrics"] == best_metrics


def test_label_smoothing_changes_the_training_loss(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    train, validation = add_dataset(), add_dataset(sentiment_rows(12, seed=1))
    losses = {}
    for smoothing in (0.0, 0.2):
        job_id = add_job(
            train=train,
            validation=validation,
            epochs=6,
            learning_rate=1e-2,
            label_smoothing=smoothing,
        )
        assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
        losses[smoothing] = [e["loss"] for e in _metric_events(db, job_id, "train")]
        assert _job(db, job_id).metrics["accuracy"] >= 0.9  # type: ignore[index]
    assert losses[0.0][0] != losses[0.2][0]  # the same weights at step 1, another loss
    # With 2 labels and 0.2 smoothing the targets are (0.9, 0.1), whose entropy no prediction
    # can beat; without smoothing the loss falls well below it.
    floor = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert min(losses[0.2]) > floor - 1e-4
    assert losses[0.0][-1] < floor / 2


def test_precision_the_device_lacks_fails_the_job_naming_the_device(
    train_settings, db: Session, add_job: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from app.ml import device

    monkeypatch.setattr(device, "select_device", lambda: torch.device("cpu"))
    job_id = add_job(mixed_precision="fp16")

    assert run_job(train_settings, job_id) == JobStatus.FAILED

    job = _job(db, job_id)
    assert job.error_code == "unsupported_precision"
    assert job.error_message == (
        "hyperparameters.mixed_precision: fp16 mixed precision needs a CUDA GPU; "
        "this worker trains on cpu"
    )


def test_auto_values_are_resolved_and_shown_on_the_job_and_model(client, train_settings) -> None:  # type: ignore[no-untyped-def]
    rows = sentiment_rows(40)
    lines = [f"{t},{label}\n" for t, label in zip(rows["text"], rows["label"], strict=True)]
    body = "text,label\n" + "".join(lines)
    upload = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": ("rows.csv", io.BytesIO(body.encode()), "text/csv")},
    )
    assert upload.status_code == 201, upload.text
    auto = {"epochs": "auto", "batch_size": "auto", "max_length": "auto", "learning_rate": "auto"}
    submitted = client.post(
        "/v1/jobs",
        json={
            "task": "classification",
            "base_model": TINY_MODEL_ID,
            "train_dataset": upload.json()["id"],
            "hyperparameters": {**auto, "max_steps": 2},
        },
    )
    assert submitted.status_code == 201, submitted.text
    job = submitted.json()
    assert {k: job["hyperparameters"][k] for k in auto} == auto  # not resolved yet
    assert job["hyperparameters"]["mixed_precision"] == "auto" and job["parameters"] is None

    assert run_job(train_settings, job["id"]) == JobStatus.SUCCEEDED

    read = client.get(f"/v1/jobs/{job['id']}").json()
    hp = read["hyperparameters"]
    # 36 train rows after the 10% split: 20 epochs (the most), at most 36 / 8 rows a batch.
    assert (hp["epochs"], hp["batch_size"], hp["learning_rate"]) == (20, 4, 2e-4)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(train_settings.local_models_dir / "tiny-bert"))
    longest = max(len(ids) for ids in tokenizer(rows["text"])["input_ids"])
    assert hp["max_length"] == 8 * math.ceil(longest / 8) < 64
    assert (hp["mixed_precision"], hp["device"], hp["max_steps"]) == ("no", "cpu", 2)
    params = read["parameters"]
    assert params["trainable"] == params["total"] > 0
    model = client.get(f"/v1/models/{read['model_id']}").json()
    assert model["parameters"] == params and model["hyperparameters"] == hp


def test_early_stopping_restores_an_adapter_checkpoint(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    import torch

    from app.predict.predictor import load_predictor

    validation_rows = flip_every(sentiment_rows(12, seed=1), 3)
    job_id = add_job(
        validation=add_dataset(validation_rows),
        method={"type": "lora", "r": 4},
        **{**EARLY_STOPPING, "learning_rate": 3e-2},
    )
    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
    evals = _metric_events(db, job_id, "eval")
    best = min(evals, key=lambda e: e["eval_loss"])
    assert best["step"] < evals[-1]["step"] == _job(db, job_id).progress_step < 40

    # Served as registered (the adapter merged into its base): the best checkpoint's loss.
    model = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert model.metrics["eval_loss"] == best["eval_loss"]
    predictor = load_predictor(train_settings, model)
    inputs = predictor.tokenizer(validation_rows["text"], padding=True, return_tensors="pt")
    labels = torch.tensor([model.label_names.index(x) for x in validation_rows["label"]])
    with torch.no_grad():
        loss = float(predictor.model(**inputs, labels=labels).loss)
    assert loss == pytest.approx(best["eval_loss"], abs=1e-5)
