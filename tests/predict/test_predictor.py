"""Loading trained models (full and LoRA) for serving and predicting with them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import JobStatus, Model
from app.ml.tasks.classification import ClassificationPredictRequest, LabelScore, TextPair
from app.predict.predictor import load_predictor
from worker.jobs import run_job

TEXTS = ["a great superb film", "awful boring plot", "the story"]


def _train(settings, db: Session, add_job: Callable[..., str], **kw) -> Model:  # type: ignore[no-untyped-def]
    job_id = add_job(**kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def test_full_model_predicts_like_transformers(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    row = _train(train_settings, db, add_job, epochs=6, learning_rate=1e-2)
    predictor = load_predictor(train_settings, row)
    assert predictor.label_names == ["neg", "pos"] and predictor.max_length == 64
    assert not predictor.model.training

    results = predictor.predict(
        ClassificationPredictRequest(model=row.id, inputs=TEXTS, top_k=None)
    )
    pairs = ClassificationPredictRequest(
        model=row.id, inputs=[TextPair(text="good", text_pair="bad")], top_k=None
    )
    results += predictor.predict(pairs)
    assert len(results) == 4
    for scores in results:
        assert [type(s) for s in scores] == [LabelScore, LabelScore]
        assert scores[0].score >= scores[1].score
        assert sum(s.score for s in scores) == pytest.approx(1.0, abs=1e-5)
    assert results[0][0].label == "pos" and results[1][0].label == "neg"

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(train_settings.data_dir / row.storage_path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = AutoTokenizer.from_pretrained(path)(TEXTS[0], return_tensors="pt")
    with torch.inference_mode():
        probs = model(**enc).logits.softmax(-1)[0]
    assert results[0][0].score == pytest.approx(float(probs.max()), abs=1e-5)


def test_lora_model_loads_base_plus_adapter(
    train_settings, db: Session, add_job: Callable[..., str]
) -> None:
    row = _train(
        train_settings, db, add_job, method={"type": "lora", "r": 4}, epochs=2, learning_rate=1e-2
    )
    predictor = load_predictor(train_settings, row)
    # Adapters are merged into the base weights: a plain transformers model serves.
    assert type(predictor.model).__name__ == "BertForSequenceClassification"

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        str(train_settings.local_models_dir / "tiny-bert"), num_labels=2
    )
    unmerged = PeftModel.from_pretrained(base, str(train_settings.data_dir / row.storage_path))
    unmerged.eval()
    enc = predictor.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        expected = unmerged(**enc).logits
        got = predictor.model(**enc).logits
    assert torch.allclose(got, expected, atol=1e-5)

    results = predictor.predict(ClassificationPredictRequest(model=row.id, inputs=TEXTS))
    assert [len(r) for r in results] == [1, 1, 1]


def test_missing_files_are_unavailable(train_settings) -> None:  # type: ignore[no-untyped-def]
    from app.core.errors import Unavailable

    row = Model(id="mdl_gone", task="classification", method="full", storage_path="models/none")
    with pytest.raises(Unavailable, match="mdl_gone"):
        load_predictor(train_settings, row)
