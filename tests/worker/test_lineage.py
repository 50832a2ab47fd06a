"""Continued training (`base_model: "model:<id>"`) for real on the tiny BERT: a child starts from
its parent's weights, head and labels, and records its lineage."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent, JobStatus, Model
from app.ml.tasks import get_task
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job

HEAD = ["classifier.bias", "classifier.weight"]


def _train(settings: Any, db: Session, add_job: Callable[..., str], **kw: Any) -> Model:
    job_id = add_job(**kw)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def _failure(db: Session, job_id: str) -> str:
    db.expire_all()
    job = db.get(Job, job_id)
    return f"{job.error_code}: {job.error_message}" if job else "no job"


def _meta(settings: Any, row: Model) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (settings.data_dir / row.storage_path / "tuneserve.json").read_text()
    )
    return data


def _starting_model(settings: Any, db: Session, parent: Model) -> tuple[Any, list[str]]:
    """What the worker starts a child of `parent` from."""
    from app.ml.lineage import load_starting_model
    from app.registry.lineage import resolve_job_base

    base = resolve_job_base(
        db,
        settings=settings,
        tenant="default",
        task="classification",
        base_model=f"model:{parent.id}",
    )
    assert base.lineage is not None
    labels = list(base.lineage.label_names)
    return load_starting_model(get_task("classification"), base, label_names=labels)


def _neutral_rows(n: int, label: str = "meh") -> dict[str, list[str]]:
    return {
        "text": [f"the movie was {w}" for w in ("ok", "fine", "so so")] * n,
        "label": [label] * 3 * n,
    }


def test_full_child_starts_from_the_parent_and_records_it(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    validation = add_dataset(sentiment_rows(12, seed=1))
    parent = _train(
        train_settings, db, add_job, validation=validation, epochs=6, learning_rate=1e-2
    )
    # The parent learned something a fresh head does not know (a fresh head's loss is ~ln 2).
    assert parent.metrics["eval_loss"] < 0.4

    # The child's starting weights are the parent's, every one of them, its head included.
    from transformers import AutoModelForSequenceClassification

    start, head = _starting_model(train_settings, db, parent)
    saved = AutoModelForSequenceClassification.from_pretrained(
        str(train_settings.data_dir / parent.storage_path)
    ).state_dict()
    assert set(start.state_dict()) == set(saved)
    for name, tensor in start.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert head == HEAD and all(p.requires_grad for p in start.parameters())

    # End to end: a child that barely moves (one step at a tiny learning rate) evaluates on the
    # same validation set as its parent did, so the worker started it from the parent.
    still = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(16, seed=5)),
        validation=validation,
        max_steps=1,
        learning_rate=1e-9,
    )
    assert still.metrics["eval_loss"] == pytest.approx(parent.metrics["eval_loss"], abs=1e-4)
    assert still.metrics["accuracy"] == parent.metrics["accuracy"]

    # A child that trains on new data records its lineage on the row and in its metadata.
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(24, seed=9)),
        validation=validation,
        epochs=2,
        learning_rate=1e-3,
    )
    assert (child.base_model, child.parent_model_id) == (f"model:{parent.id}", parent.id)
    assert child.artifact == "full" and child.label_names == ["neg", "pos"]
    assert child.metrics["accuracy"] >= 0.9
    meta = _meta(train_settings, child)
    assert meta["base_model"] == {
        "id": f"model:{parent.id}",
        "source": "model",
        "model_type": "bert",
        "root": TINY_MODEL_ID,
        "parent": {"id": parent.id, "storage_path": parent.storage_path},
    }
    assert meta["head_weights"] == HEAD
    assert meta["parameters"]["trainable"] == meta["parameters"]["total"]
    parent_meta = _meta(train_settings, parent)
    assert parent_meta["base_model"]["root"] == TINY_MODEL_ID and parent.parent_model_id is None
    assert "parent" not in parent_meta["base_model"]


def test_child_keeps_the_parent_label_order_and_refuses_unknown_labels(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    rows = sentiment_rows(30)
    neutral = _neutral_rows(4)
    three = {k: rows[k] + neutral[k] for k in ("text", "label")}
    parent = _train(train_settings, db, add_job, train=add_dataset(three), epochs=1)
    assert parent.label_names == ["meh", "neg", "pos"]

    # Data with two of the three labels: the head keeps its three outputs, in the parent's order.
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(20, seed=3)),
        method={"type": "head_only"},
        epochs=1,
    )
    assert child.label_names == ["meh", "neg", "pos"]
    config = json.loads((train_settings.data_dir / child.storage_path / "config.json").read_text())
    assert config["id2label"] == {"0": "meh", "1": "neg", "2": "pos"}

    # The worker checks again what submission checks: a label the parent lacks fails the job.
    other = add_dataset({"text": rows["text"], "label": ["neg", "odd"] * 15})
    job_id = add_job(base_model=f"model:{parent.id}", train=other, epochs=1)
    assert run_job(train_settings, job_id) == JobStatus.FAILED
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.error_code == "invalid_input"
    assert "odd" in (job.error_message or "") and parent.id in (job.error_message or "")


def test_head_only_child_trains_the_inherited_head_and_nothing_else(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    parent = _train(train_settings, db, add_job, epochs=2, learning_rate=1e-2)
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(20, seed=4)),
        method={"type": "head_only"},
        epochs=2,
        learning_rate=1e-2,
    )
    # The head was found from the parent's record, so it trains (a child with no head to train
    # would have been refused: "nothing would train"), with the pooler above the blocks.
    assert _meta(train_settings, child)["parameters"]["trainable"] == 32 * 2 + 2 + 32 * 32 + 32

    from safetensors.torch import load_file

    before = load_file(str(train_settings.data_dir / parent.storage_path / "model.safetensors"))
    after = load_file(str(train_settings.data_dir / child.storage_path / "model.safetensors"))
    assert set(before) == set(after)
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == sorted([*HEAD, "bert.pooler.dense.bias", "bert.pooler.dense.weight"])


def test_lora_child_of_a_full_parent_keeps_the_head_in_modules_to_save(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    parent = _train(train_settings, db, add_job, epochs=2, learning_rate=1e-2)
    child = _train(
        train_settings,
        db,
        add_job,
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(20, seed=6)),
        method={"type": "lora", "r": 4},
        epochs=1,
    )
    assert child.artifact == "adapter" and child.parent_model_id == parent.id
    path = train_settings.data_dir / child.storage_path
    adapter = json.loads((path / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"]
    from safetensors.torch import load_file

    assert any("classifier" in k for k in load_file(str(path / "adapter_model.safetensors")))
    # The head it trains is the one its parent recorded (nothing was new when it loaded).
    events = db.scalars(select(JobEvent.data).where(JobEvent.job_id == child.job_id)).all()
    assert any(e and e.get("new_weights") == HEAD for e in events)


def test_interrupted_child_resumes_from_its_checkpoint(
    train_settings, db: Session, add_job: Callable[..., str], add_dataset: Callable[..., str]
) -> None:
    from worker.training.callbacks import JobProgressCallback

    parent = _train(train_settings, db, add_job, method={"type": "lora", "r": 4}, epochs=1)
    job_id = add_job(
        base_model=f"model:{parent.id}",
        train=add_dataset(sentiment_rows(32, seed=8)),
        method={"type": "lora", "r": 4},
        epochs=2,
        checkpoint_every=2,
    )
    original = JobProgressCallback.on_step_end

    def dies_at_step_5(self: Any, args: Any, state: Any, control: Any, **kw: Any) -> None:
        original(self, args, state, control, **kw)
        if state.global_step == 5:
            raise KeyboardInterrupt("the worker is stopping")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(JobProgressCallback, "on_step_end", dies_at_step_5)
        run_job(train_settings, job_id)

    assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    messages = db.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert any("resuming from checkpoint-4 (step 4" in m for m in messages)
    child = db.scalars(select(Model).where(Model.job_id == job_id)).one()
    assert child.parent_model_id == parent.id and child.base_model == f"model:{parent.id}"


def task_rows(
    db: Session, stored: dict[str, Any], task: str, rows: dict[str, list[Any]], *, sha256: str
) -> str:
    """A dataset row of any task whose rows (held in memory) the runner loads; its id."""
    from app.db.models import Dataset, new_id

    dataset_id = new_id("ds")
    db.add(
        Dataset(
            tenant_id="default",
            id=dataset_id,
            name="rows.jsonl",
            task=task,
            format="jsonl",
            num_rows=len(next(iter(rows.values()))),
            columns=list(rows),
            sha256=sha256,
            size_bytes=1,
            storage_path=f"datasets/{dataset_id}",
        )
    )
    stored[dataset_id] = rows
    return dataset_id


def _task_job(
    db: Session,
    stored: dict[str, Any],
    *,
    task: str,
    base_model: str,
    rows: dict[str, list[Any]],
    method: dict[str, Any],
    **options: Any,
) -> str:
    """A queued job of any task on rows held in memory (a 25% held-out validation split)."""
    from app.db.models import new_id
    from app.job.schemas import Hyperparameters, JobSpec

    dataset_id = task_rows(db, stored, task, rows, sha256="0" * 64)
    hp = Hyperparameters(
        epochs=2, batch_size=8, learning_rate=1e-2, max_length=32, validation_split=0.25
    )
    spec = JobSpec(method=method, hyperparameters=hp, task_options=options, seed=3)  # type: ignore[arg-type]
    job_id = new_id("job")
    db.add(
        Job(
            tenant_id="default",
            id=job_id,
            task=task,
            base_model=base_model,
            train_dataset_id=dataset_id,
            spec=spec.model_dump(mode="json"),
            status=JobStatus.QUEUED,
        )
    )
    db.commit()
    return job_id


def _run(settings: Any, db: Session, job_id: str) -> Model:
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED, _failure(db, job_id)
    return db.scalars(select(Model).where(Model.job_id == job_id)).one()


def full_tiny_model(
    settings: Any, db: Session, stored: dict[str, Any], task: str, rows: Any, **options: Any
) -> Model:
    """A full fine-tune of the tiny model of `task` on `rows`, trained for real and registered."""
    job_id = _task_job(
        db, stored, task=task, base_model=TINY_MODEL_ID, rows=rows, method={"type": "full"},
        **options,
    )  # fmt: skip
    return _run(settings, db, job_id)


def test_ner_and_qa_children_keep_their_heads(
    train_settings, db: Session, stored_rows: dict[str, Any]
) -> None:
    from tests.ml.test_ner_training import ner_rows
    from tests.ml.test_qa import synthetic_rows

    # NER: a child whose data has persons only keeps the parent's five tags, in its order.
    parent = _run(
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
    assert parent.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    persons = ner_rows(60, seed=1)
    keep = [i for i, tags in enumerate(persons["tags"]) if not any("LOC" in t for t in tags)]
    persons = {k: [v[i] for i in keep] for k, v in persons.items()}
    child = _run(
        train_settings,
        db,
        _task_job(
            db,
            stored_rows,
            task="ner",
            base_model=f"model:{parent.id}",
            rows=persons,
            method={"type": "lora", "r": 4},
        ),
    )
    assert child.label_names == parent.label_names and child.parent_model_id == parent.id
    assert _meta(train_settings, child)["head_weights"] == HEAD

    # QA has no labels; a head_only child of a LoRA parent trains the span head it inherited.
    qa_parent = _run(
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
    qa_child = _run(
        train_settings,
        db,
        _task_job(
            db,
            stored_rows,
            task="qa",
            base_model=f"model:{qa_parent.id}",
            rows=synthetic_rows(24, seed=2),
            method={"type": "head_only"},
            doc_stride=8,
        ),
    )
    assert qa_child.label_names == [] and qa_child.parent_model_id == qa_parent.id
    meta = _meta(train_settings, qa_child)
    assert meta["head_weights"] == ["qa_outputs.bias", "qa_outputs.weight"]
    assert meta["parameters"]["trainable"] == 32 * 2 + 2
