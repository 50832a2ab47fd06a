"""AdaLoRA, prefix tuning and merged adapters, trained for real on the tiny BERT and served."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobStatus, Model
from app.ml.tasks.classification import ClassificationPredictRequest
from app.predict.predictor import Predictor, load_predictor
from tests.tinymodel import sentiment_rows
from worker.jobs import run_job

VALIDATION = sentiment_rows(24, seed=1)


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(**kw)
    status = run_job(settings, job_id)
    assert status == JobStatus.SUCCEEDED, db.get(Job, job_id).error_message  # type: ignore[union-attr]
    db.expire_all()
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def _files(settings: Any, model: Model) -> tuple[Path, set[str]]:
    path = settings.data_dir / model.storage_path
    return path, {p.name for p in path.iterdir()}


def _probabilities(predictor: Predictor, texts: list[str]) -> torch.Tensor:
    request = ClassificationPredictRequest(model=predictor.model_id, inputs=texts, top_k=None)
    results = predictor.predict(request)
    by_label = [{s.label: s.score for s in scores} for scores in results]
    return torch.tensor([[row[name] for name in predictor.label_names] for row in by_label])


def _served_accuracy(predictor: Predictor) -> float:
    probs = _probabilities(predictor, VALIDATION["text"])
    predicted = [predictor.label_names[i] for i in probs.argmax(-1).tolist()]
    hits = sum(p == gold for p, gold in zip(predicted, VALIDATION["label"], strict=True))
    return hits / len(predicted)


def test_adalora_reallocates_ranks_down_to_target_r(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    method = {"type": "adalora", "init_r": 6, "target_r": 2}
    model = _train(
        train_settings,
        db,
        add_job,
        method=method,
        validation=add_dataset(VALIDATION),
        epochs=8,
        learning_rate=2e-2,
    )
    assert (model.method, model.artifact) == ("adalora", "adapter")
    path, names = _files(train_settings, model)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names

    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and "classifier" in config["modules_to_save"]
    # 40 rows, 4 held out, batch 8: 5 steps an epoch, 40 in all; a tenth warms up, a fifth ends.
    assert (config["total_step"], config["tinit"], config["tfinal"]) == (40, 4, 8)
    meta = json.loads((path / "tuneserve.json").read_text())
    assert meta["method"]["total_step"] == 40 and meta["method"]["target_modules"] == [
        "query",
        "value",
    ]
    # The allocator ran: every matrix started at init_r = 6, and what is saved is the budget
    # the allocation ended with, target_r = 2 per matrix on average, spread unevenly.
    pattern = config["rank_pattern"]
    assert pattern is not None and len(pattern) == 4
    assert all(len(kept) == 6 for kept in pattern.values())
    weights = load_file(str(path / "adapter_model.safetensors"))
    ranks = {k: t.shape[0] for k, t in weights.items() if k.endswith("lora_E")}
    assert len(ranks) == 4 and sum(ranks.values()) == 2 * 4
    assert sorted(ranks.values()) == sorted(sum(kept) for kept in pattern.values())
    assert len(set(ranks.values())) > 1  # not LoRA with r = 2 everywhere
    for name, rank in ranks.items():
        assert weights[name.replace("lora_E", "lora_A")].shape == (rank, 32)
        assert weights[name.replace("lora_E", "lora_B")].shape == (32, rank)

    # Served (the pruned adapter merged into the base) as it was evaluated (masked, unmerged).
    # Frozen random weights learn little of this task here; NER (tests/ml) is where the
    # adapters are shown to learn.
    predictor = load_predictor(train_settings, model)
    assert type(predictor.model).__name__ == "BertForSequenceClassification"  # merged
    assert _served_accuracy(predictor) == pytest.approx(model.metrics["accuracy"])


def test_adalora_schedule_must_leave_steps_to_reallocate(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    # Without max_steps, submission cannot know the step count; the worker refuses to start.
    job_id = add_job(method={"type": "adalora", "tinit": 6, "tfinal": 4}, epochs=2)
    assert run_job(train_settings, job_id) == JobStatus.FAILED
    job = db.get(Job, job_id)
    assert job is not None and job.error_code == "invalid_input"
    assert job.error_message is not None
    assert "method.tinit" in job.error_message and "10 optimizer steps" in job.error_message


@pytest.mark.parametrize("projection", [False, True], ids=["prefix", "projected"])
def test_prefix_tuning_trains_and_serves_base_plus_prefix(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    projection: bool,
) -> None:
    method = {"type": "prefix_tuning", "num_virtual_tokens": 8, "prefix_projection": projection}
    model = _train(
        train_settings,
        db,
        add_job,
        method=method,
        validation=add_dataset(VALIDATION),
        epochs=8,
        learning_rate=2e-2,
    )
    assert (model.method, model.artifact) == ("prefix_tuning", "adapter")
    path, names = _files(train_settings, model)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING" and config["num_virtual_tokens"] == 8
    assert "classifier" in config["modules_to_save"]
    weights = load_file(str(path / "adapter_model.safetensors"))
    # The prefix (2 layers x key and value x hidden 32 per virtual token) and the trained head.
    assert weights["prompt_embeddings"].shape == (8, 2 * 2 * 32)
    assert any("classifier" in k for k in weights)
    meta = json.loads((path / "tuneserve.json").read_text())
    # The prefix takes 8 of the 64 positions of the tiny BERT.
    assert meta["max_length"] == 64 - 8
    params = meta["parameters"]
    # 8 x 128 prefix weights, the head (66) and the pooler (32 x 32 + 32); with a projection,
    # 8 x 32 embeddings and the MLP 32 -> 32 -> 128 train instead of the prefix (saved as the
    # MLP's output).
    prefix = 8 * 32 + (32 * 32 + 32) + (32 * 128 + 128) if projection else 8 * 128
    assert params["trainable"] == prefix + 66 + 32 * 32 + 32

    predictor = load_predictor(train_settings, model)
    # Not merged: the prefix lives in the peft model's forward.
    assert type(predictor.model).__name__ == "PeftModelForSequenceClassification"
    assert predictor.max_length == 56
    assert _served_accuracy(predictor) == pytest.approx(model.metrics["accuracy"])
    # The prefix's attention mask: padding a text in a batch with a longer one changes nothing.
    texts = ["good film", " ".join(["the very dull and boring story"] * 4)]
    alone = torch.cat([_probabilities(predictor, [t]) for t in texts])
    assert _probabilities(predictor, texts) == pytest.approx(alone, abs=1e-5)
    # The longest input the tokenizer allows still fits beside the prefix.
    long_text = " ".join(["good"] * 200)
    assert predictor.predict(ClassificationPredictRequest(model=model.id, inputs=[long_text]))

    # The trained prefix takes part: the same model without it (base + trained head) differs,
    # and segment ids reach the encoder.
    enc = predictor.tokenizer(["good film"], ["a plot"], return_tensors="pt")
    with torch.inference_mode():
        with_prefix = predictor.model(**enc).logits
        without = predictor.model.get_base_model()(**enc).logits
        one_segment = predictor.model(
            **{**enc, "token_type_ids": torch.zeros_like(enc["token_type_ids"])}
        ).logits
    assert not with_prefix.allclose(without, atol=1e-4)
    assert not with_prefix.allclose(one_segment, atol=1e-6)


@pytest.mark.parametrize(
    "method",
    [
        {"type": "lora", "r": 4},
        {"type": "ia3"},
        {"type": "adalora", "init_r": 6, "target_r": 2},
    ],
    ids=["lora", "ia3", "adalora"],
)
def test_merge_adapter_registers_a_full_model_that_predicts_the_same(
    train_settings,
    db: Session,
    add_job: Callable[..., str],
    add_dataset: Callable[..., str],
    client: Any,
    method: dict[str, Any],
) -> None:
    train, validation = add_dataset(), add_dataset(VALIDATION)
    spec = {"train": train, "validation": validation, "epochs": 3, "learning_rate": 2e-2}
    merged = _train(train_settings, db, add_job, method={**method, "merge_adapter": True}, **spec)
    adapter = _train(train_settings, db, add_job, method=method, **spec)

    assert (merged.artifact, adapter.artifact) == ("merged", "adapter")
    path, names = _files(train_settings, merged)
    assert {"config.json", "model.safetensors", "tuneserve.json"} <= names
    assert not any(n.startswith("adapter_") for n in names)
    assert json.loads((path / "tuneserve.json").read_text())["artifact"] == "merged"
    # A plain transformers model: no peft wrapper names, the trained head in place.
    weights = load_file(str(path / "model.safetensors"))
    assert not any("lora" in k or "ia3" in k or "base_model" in k for k in weights)
    assert "classifier.weight" in weights
    assert merged.size_bytes > adapter.size_bytes

    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(str(path))
    assert loaded.config.id2label == {0: "neg", 1: "pos"}

    # The same job spec and seed trained the same adapter: merged at registration, or applied
    # to the base at load time, it gives the same predictions.
    served_merged = load_predictor(train_settings, merged)
    served_adapter = load_predictor(train_settings, adapter)
    texts = [*VALIDATION["text"], "the plot", "good bad"]
    expected = _probabilities(served_adapter, texts)
    assert _probabilities(served_merged, texts) == pytest.approx(expected, abs=1e-5)
    # ...and the same as the adapter left unmerged on its base (peft's own forward).
    from peft import PeftModel

    from app.ml.loading import load_model

    base = load_model(
        served_adapter.task,
        train_settings.local_models_dir / "tiny-bert",
        label_names=["neg", "pos"],
    )
    adapter_dir = train_settings.data_dir / adapter.storage_path
    unmerged = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    enc = served_adapter.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = unmerged(**enc).logits.softmax(-1)
    assert _probabilities(served_merged, texts) == pytest.approx(probs, abs=1e-5)
    assert merged.metrics["accuracy"] == adapter.metrics["accuracy"]

    shown = client.get(f"/v1/models/{merged.id}").json()
    assert (shown["artifact"], shown["method"]) == ("merged", method["type"])
    assert client.get(f"/v1/models/{adapter.id}").json()["artifact"] == "adapter"
