"""NER training for real on the tiny BERT (full and each peft method), then serving it."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Job, JobStatus, Model, new_id
from app.job.schemas import Hyperparameters, JobSpec
from app.ml.tasks.ner import NerPredictRequest, TokensInput
from app.ml.tasks.ner_serving import Entity, TokenTag
from app.ml.tasks.ner_tags import ner_metrics
from app.predict.predictor import load_predictor
from tests.tinymodel import NEGATIVE, NEUTRAL, POSITIVE
from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    TINY_MODEL_ID,
    db,
    stored_rows,
    tiny_models_dir,
    train_settings,
)
from worker.jobs import run_job

# Persons come from one word list, locations from another, the rest is filler. An entity's first
# and second words come from different halves of its list, so a word alone tells its tag.
ENTITY_WORDS = {"PER": (POSITIVE[:4], POSITIVE[4:]), "LOC": (NEGATIVE[:4], NEGATIVE[4:])}


def ner_rows(n: int, *, seed: int) -> dict[str, list[list[str]]]:
    """`n` sentences of filler words with one- and two-word PER/LOC entities, in IOB2."""
    rng = random.Random(seed)
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    for _ in range(n):
        words: list[str] = []
        labels: list[str] = []
        for _ in range(rng.randint(1, 3)):
            words += [rng.choice(NEUTRAL) for _ in range(rng.randint(1, 3))]
            labels += ["O"] * (len(words) - len(labels))
            kind = rng.choice(sorted(ENTITY_WORDS))
            first, second = ENTITY_WORDS[kind]
            words.append(rng.choice(first))
            labels.append(f"B-{kind}")
            if rng.random() < 0.5:
                words.append(rng.choice(second))
                labels.append(f"I-{kind}")
        tokens.append(words)
        tags.append(labels)
    return {"tokens": tokens, "tags": tags}


@pytest.fixture
def add_ner_dataset(
    db: Session,  # noqa: F811
    stored_rows: dict[str, Any],  # noqa: F811
) -> Callable[..., str]:
    def add(rows: dict[str, list[list[str]]]) -> str:
        dataset_id = new_id("ds")
        db.add(
            Dataset(
                tenant_id="default",
                id=dataset_id,
                name="rows.conll",
                task="ner",
                format="conll",
                num_rows=len(rows["tokens"]),
                columns=["tokens", "tags"],
                sha256="0" * 64,
                size_bytes=1,
                storage_path=f"datasets/{dataset_id}",
            )
        )
        db.commit()
        stored_rows[dataset_id] = rows
        return dataset_id

    return add


@pytest.fixture
def train_ner(
    train_settings: Any,  # noqa: F811
    db: Session,  # noqa: F811
    add_ner_dataset: Callable[..., str],
) -> Callable[..., Model]:
    """Run an NER job on the tiny model in-process; its Model row."""

    def train(
        validation: dict[str, list[list[str]]],
        *,
        method: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> Model:
        hp = {"epochs": 8, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0}
        spec = JobSpec(
            method=method or {"type": "full"},  # type: ignore[arg-type]
            hyperparameters=Hyperparameters(**{**hp, **hyperparameters}),
            task_options=task_options or {},
            seed=7,
        )
        job = Job(
            tenant_id="default",
            id=new_id("job"),
            task="ner",
            base_model=TINY_MODEL_ID,
            train_dataset_id=add_ner_dataset(ner_rows(80, seed=0)),
            validation_dataset_id=add_ner_dataset(validation),
            spec=spec.model_dump(mode="json"),
            status=JobStatus.QUEUED,
            attempt=0,
        )
        db.add(job)
        db.commit()
        assert run_job(train_settings, job.id) == JobStatus.SUCCEEDED, db.get(Job, job.id)
        db.expire_all()
        return db.scalars(select(Model).where(Model.job_id == job.id)).one()

    return train


def served_tags(predictor: Any, rows: dict[str, list[list[str]]]) -> list[list[str]]:
    request = NerPredictRequest(model="m", inputs=[TokensInput(tokens=t) for t in rows["tokens"]])
    results = predictor.predict(request)
    assert all(isinstance(t, TokenTag) for r in results for t in r)
    return [[t.tag for t in r] for r in results]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ({"type": "full"}, {}),
        ({"type": "lora", "r": 4}, {"label_all_tokens": True}),
        ({"type": "ia3"}, {}),
        ({"type": "adalora", "init_r": 6, "target_r": 2}, {}),
        ({"type": "prefix_tuning", "num_virtual_tokens": 8}, {}),
    ],
)
def test_train_then_serve(
    train_settings: Any,  # noqa: F811
    train_ner: Callable[..., Model],
    method: dict[str, Any],
    options: dict[str, Any],
) -> None:
    validation = ner_rows(30, seed=1)
    # Adapters on a randomly initialised tiny model need more steps and a larger rate.
    extra = {
        "full": {},
        "lora": {"epochs": 20, "learning_rate": 3e-2},
        "ia3": {"epochs": 20, "learning_rate": 1e-1},
        "adalora": {"epochs": 20, "learning_rate": 1e-1},
        "prefix_tuning": {"epochs": 20, "learning_rate": 1e-1},
    }[str(method["type"])]
    row = train_ner(validation, method=method, task_options=options, **extra)
    assert row.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    metrics = row.metrics
    assert {"precision", "recall", "f1", "accuracy", "per_type", "eval_loss"} <= set(metrics)
    assert set(metrics["per_type"]) == {"LOC", "PER"}
    assert metrics["f1"] >= 0.8, metrics

    predictor = load_predictor(train_settings, row)
    # The served tags of the validation sentences give the F1 the job reported: evaluation
    # matched its (length-grouped, shuffled) predictions back to the right sentences.
    served = ner_metrics(validation["tags"], served_tags(predictor, validation))
    assert served["f1"] == pytest.approx(metrics["f1"], abs=1e-9)
    assert served["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)

    # Odd spacing and case: offsets still slice the input exactly.
    text = "the   film was Good  superb and it was awful"
    (entities,) = predictor.predict(NerPredictRequest(model=row.id, inputs=[text]))
    assert all(isinstance(e, Entity) for e in entities)
    for e in entities:
        assert text[e.start : e.end] == e.text and 0 < e.score <= 1
    assert [(e.label, e.text) for e in entities] == [("PER", "Good  superb"), ("LOC", "awful")]


def test_label_smoothing_skips_ignored_sub_tokens(
    train_settings: Any,  # noqa: F811
    db: Session,  # noqa: F811
    train_ner: Callable[..., Model],
) -> None:
    """Sub-tokens, [CLS], [SEP] and padding carry label -100; smoothing must leave them out."""
    row = train_ner(ner_rows(30, seed=1), label_smoothing=0.1)
    assert row.metrics["f1"] >= 0.8, row.metrics
    job = db.get(Job, row.job_id)
    assert job is not None and job.train_loss is not None
    # Smoothing was applied: 5 labels smoothed by 0.1 make targets (0.92, 0.02 x 4), whose
    # entropy no prediction beats (unsmoothed, this run ends below 0.01).
    floor = -(0.92 * math.log(0.92) + 4 * 0.02 * math.log(0.02))
    assert floor - 1e-4 < job.train_loss < floor + 0.2
