"""Distillation (method distill) for real on tiny BERTs: the loss, the layers a student keeps, and
students of every task trained by the worker, registered beside their teacher and served."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import AutoModelForSequenceClassification, TrainingArguments

from app.core.errors import InvalidInput
from app.db.models import Job, JobEvent, JobStatus, Model
from app.ml.methods.distill import DistillMethod
from app.predict.predictor import load_predictor
from tests.predict.conftest import upload_rows
from tests.tinymodel import build_tiny_model_dir, sentiment_rows
from worker.jobs import run_job
from worker.training.methods import distill

TEACHER_BASE = "local/tiny-bert-4"  # 4 layers
SMALL_BASE = "local/tiny-bert"  # 2 layers, the same vocabulary
TEXTS = ["a great superb film", "awful boring plot", "lovely warm story"]


@pytest.fixture(scope="module")
def distill_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distill-models")
    build_tiny_model_dir(root / "tiny-bert")
    build_tiny_model_dir(root / "tiny-bert-4", layers=4)
    return root


@pytest.fixture
def settings4(train_settings: Any, distill_models_dir: Path) -> Any:
    """train_settings whose local base models are a 2-layer and a 4-layer tiny BERT."""
    train_settings.local_models_dir = distill_models_dir
    return train_settings


# --- the loss -------------------------------------------------------------------------------


def test_the_soft_target_term_is_zero_when_student_is_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 5)
    for t in (0.5, 1.0, 2.0, 8.0):
        assert distill.soft_target_loss(logits, logits.clone(), temperature=t).item() == 0.0
    other = torch.randn(4, 7, 5)
    assert distill.soft_target_loss(other, logits, temperature=2.0).item() > 0


def test_the_soft_target_term_is_t_squared_kl_of_the_softened_outputs() -> None:
    torch.manual_seed(1)
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    t = 3.0
    p = torch.softmax(teacher / t, -1)
    kl = (p * (p.log() - torch.log_softmax(student / t, -1))).sum(-1).mean()
    got = distill.soft_target_loss(student, teacher, temperature=t)
    assert got.item() == pytest.approx((t * t * kl).item(), rel=1e-5)
    # The gradient reaches the student only.
    s = student.clone().requires_grad_(True)
    distill.soft_target_loss(s, teacher, temperature=t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_ner_positions_without_a_gold_label_are_left_out() -> None:
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    labels = torch.tensor([[-100, 1, 0, -100, -100], [-100, 2, -100, -100, -100]])
    got = distill.distillation_term(
        {"logits": student}, {"logits": teacher}, temperature=2.0, labels=labels
    )
    keep = labels != -100
    want = distill.soft_target_loss(student[keep], teacher[keep], temperature=2.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # What the ignored positions hold does not matter.
    noisy = teacher.clone()
    noisy[~keep] = 100.0
    again = distill.distillation_term(
        {"logits": student}, {"logits": noisy}, temperature=2.0, labels=labels
    )
    assert again.item() == pytest.approx(got.item(), rel=1e-6)


def test_qa_distils_start_and_end_over_the_tokens() -> None:
    torch.manual_seed(3)
    s = {"start_logits": torch.randn(2, 9), "end_logits": torch.randn(2, 9)}
    t = {"start_logits": torch.randn(2, 9), "end_logits": torch.randn(2, 9)}
    got = distill.distillation_term(s, t, temperature=2.0)
    start = distill.soft_target_loss(s["start_logits"], t["start_logits"], temperature=2.0)
    end = distill.soft_target_loss(s["end_logits"], t["end_logits"], temperature=2.0)
    assert got.item() == pytest.approx(((start + end) / 2).item(), rel=1e-6)
    assert distill.distillation_term(s, s, temperature=2.0).item() == 0.0


def test_the_hidden_state_term_matches_each_layer_to_the_one_it_was_copied_from() -> None:
    torch.manual_seed(4)
    teacher = [torch.randn(2, 5, 8) for _ in range(5)]  # embeddings and 4 layers
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # A student of layers 0 and 3 whose outputs are those layers' own: nothing to learn.
    copied = [teacher[0], teacher[1], teacher[4]]
    term = distill.hidden_state_term(copied, teacher, layer_map=[0, 3], attention_mask=mask)
    assert term.item() == pytest.approx(0.0, abs=1e-6)
    # Length does not matter, direction does; padding is left out.
    scaled = [teacher[0], 3 * teacher[1], teacher[4].clone()]
    scaled[2][1, 3:] = torch.randn(2, 8)
    assert distill.hidden_state_term(
        scaled, teacher, layer_map=[0, 3], attention_mask=mask
    ).item() == pytest.approx(0.0, abs=1e-6)
    # Matched against the wrong layers, the distance is 1 - cos, averaged over layers and tokens.
    student = [teacher[0], teacher[2].clone().requires_grad_(True), teacher[4]]
    got = distill.hidden_state_term(student, teacher, layer_map=[0, 3], attention_mask=mask)
    cos = torch.nn.functional.cosine_similarity(teacher[2], teacher[1], dim=-1)[mask.bool()]
    assert got.item() == pytest.approx(((1 - cos).mean() / 2).item(), rel=1e-5)
    got.backward()
    assert student[1].grad is not None and student[1].grad.abs().sum() > 0
    with pytest.raises(Exception, match="line up"):
        distill.hidden_state_term(student[:2], teacher, layer_map=[0, 3])


def _teacher(path: Path, **kw: Any) -> distill.Teacher:
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
    model.eval()
    method = DistillMethod.model_validate({"type": "distill", "student": {"layers": 1}, **kw})
    return distill.Teacher(model, method, frozenset({"input_ids", "attention_mask"}))


def test_a_student_equal_to_its_teacher_trains_on_alpha_times_the_gold_loss(
    distill_models_dir: Path, tmp_path: Path
) -> None:
    from transformers import Trainer

    teacher = _teacher(distill_models_dir / "tiny-bert", alpha=0.3, temperature=2.0)
    student = copy.deepcopy(teacher.model)
    student.train()
    for module in student.modules():  # the same function as the teacher's (no dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    trainer = distill.trainer_class(Trainer, teacher)(model=student, args=args)
    batch = {
        "input_ids": torch.tensor([[2, 5, 20, 3], [2, 13, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        "labels": torch.tensor([1, 0]),
    }
    loss = trainer.compute_loss(student, dict(batch))
    gold = student(**batch).loss
    assert loss.item() == pytest.approx(0.3 * gold.item(), rel=1e-6)
    assert teacher.summary()["mean_soft_loss"] == 0.0
    assert "mean_hidden_loss" not in teacher.summary()
    # Matching hidden states adds nothing either: every layer is its teacher layer's copy.
    matching = _teacher(distill_models_dir / "tiny-bert", alpha=0.3, hidden_weight=2.0)
    matching.model, matching.layer_map = teacher.model, [0, 1]
    matched = distill.trainer_class(Trainer, matching)(model=student, args=args)
    assert matched.compute_loss(student, dict(batch)).item() == pytest.approx(
        0.3 * gold.item(), rel=1e-5
    )
    assert matching.summary()["mean_hidden_loss"] == pytest.approx(0.0, abs=1e-6)
    # A student of the second layer alone, matched with it, has a distance to close.
    pruned = copy.deepcopy(student)
    distill.prune_layers(pruned, [1])
    matching.layer_map = [1]
    assert matched.compute_loss(pruned, dict(batch)).item() > 0.3 * pruned(**batch).loss.item()
    assert matching.summary()["mean_hidden_loss"] > 0
    # Evaluation reports the gold loss alone.
    student.eval()
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(gold.item())


# --- the layers a student keeps ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "keep", "kept"),
    [
        (12, 6, [1, 3, 5, 7, 9, 11]),  # every other layer up to the top
        (6, 3, [1, 3, 5]),  # all-MiniLM-L6-v2 to 3
        (6, 4, [1, 2, 4, 5]),  # blocks of 1.5: ends at 1.5, 3, 4.5 and 6
        (6, 2, [2, 5]),
        (4, 2, [1, 3]),
        (4, 3, [0, 2, 3]),
        (4, 1, [3]),
        (2, 1, [1]),
    ],
)
def test_kept_layers_end_each_block_of_the_teachers(total: int, keep: int, kept: list[int]) -> None:
    assert distill.kept_layers(total, keep) == kept


@pytest.mark.parametrize("keep", [0, 4, 5])
def test_a_student_needs_between_one_and_fewer_than_all_layers(keep: int) -> None:
    with pytest.raises(InvalidInput) as err:
        distill.kept_layers(4, keep)
    assert err.value.details["field"] == "method.student.layers"


def test_a_pruned_student_is_the_teacher_with_fewer_layers(
    distill_models_dir: Path, tmp_path: Path
) -> None:
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(distill_models_dir / "tiny-bert-4"), num_labels=3
    )
    student = copy.deepcopy(teacher)
    distill.prune_layers(student, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    mine, theirs = student.state_dict(), teacher.state_dict()
    for name, tensor in mine.items():
        source = name.replace("encoder.layer.1.", "encoder.layer.3.")
        assert torch.equal(tensor, theirs[source]), name
    assert {n for n in mine if "classifier" in n} == {"classifier.weight", "classifier.bias"}
    # Saved, it is an ordinary 2-layer model that answers as the pruned one does.
    student.save_pretrained(str(tmp_path))
    loaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    batch = {"input_ids": torch.tensor([[2, 5, 20, 3]])}
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, student.eval()(**batch).logits)


# --- students trained by the worker ---------------------------------------------------------


def _job(client: TestClient, settings: Any, **spec: Any) -> dict[str, Any]:
    hp = {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0}
    body = {"task": "classification", "hyperparameters": hp, **spec}
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    status = run_job(settings, job_id)
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    assert status == JobStatus.SUCCEEDED, job["error"]
    return job


def _meta(settings: Any, model: dict[str, Any]) -> dict[str, Any]:
    path = settings.data_dir / "models" / model["id"] / "tuneserve.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _three_labels(n: int, seed: int) -> dict[str, list[str]]:
    """Sentiment rows plus a third class, "meh", so that label order is not alphabetical luck."""
    rows = sentiment_rows(n, seed=seed)
    meh = [f"the plot was {w}" for w in ("ok", "fine", "so so")] * (n // 6)
    return {"text": meh + rows["text"], "label": ["meh"] * len(meh) + rows["label"]}


def test_a_classification_student_keeps_layers_of_its_teacher_and_serves(
    settings4: Any, client: TestClient, db: Session
) -> None:
    validation = upload_rows(client, _three_labels(18, seed=1))
    teacher_job = _job(
        client,
        settings4,
        base_model=TEACHER_BASE,
        train_dataset=upload_rows(client, _three_labels(48, seed=0)),
        validation_dataset=validation,
        hyperparameters={"epochs": 1, "batch_size": 8, "learning_rate": 5e-3},
    )
    teacher = client.get(f"/v1/models/{teacher_job['model_id']}").json()
    assert teacher["label_names"] == ["meh", "neg", "pos"]

    # The student's datasets have two of the three labels: alone they would be ["neg", "pos"].
    method = {"type": "distill", "student": {"layers": 2}, "temperature": 2.0, "alpha": 0.5}
    job = _job(
        client,
        settings4,
        base_model=f"model:{teacher['id']}",
        train_dataset=upload_rows(client, sentiment_rows(40, seed=5)),
        validation_dataset=upload_rows(client, sentiment_rows(16, seed=6)),
        method=method,
    )
    assert job["method"] == {
        **method,
        "teacher": f"model:{teacher['id']}",
        "hidden_weight": 0.0,
        "transfer_dataset": None,
    }
    assert job["hyperparameters"]["learning_rate"] == 1e-2
    model = client.get(f"/v1/models/{job['model_id']}").json()

    # Lineage: the teacher is its parent; the labels are the teacher's, in its order.
    assert model["method"] == "distill" and model["artifact"] == "full"
    assert model["base_model"] == f"model:{teacher['id']}"
    assert model["parent_model"] == teacher["id"]
    assert model["label_names"] == teacher["label_names"]
    meta = _meta(settings4, model)
    record = meta["distillation"]
    assert record["teacher"]["id"] == teacher["id"] and record["teacher"]["layers"] == 4
    assert record["student"] == {"from": "teacher", "layers_kept": [1, 3], "teacher_layers": 4}
    assert (record["temperature"], record["alpha"]) == (2.0, 0.5)
    assert meta["base_model"]["parent"]["id"] == teacher["id"]

    # Evaluated like any model, with the teacher beside it on the same rows.
    assert {"accuracy", "macro_f1", "eval_loss"} <= set(model["metrics"])
    assert model["baseline_metrics"] and model["quality"]
    assert job["metrics"] == model["metrics"]
    assert model["parent_metrics"] == record["teacher_metrics"]
    assert {"accuracy", "macro_f1", "eval_loss"} <= set(model["parent_metrics"])
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all()
    said = " | ".join(e.message for e in events)
    assert "2 of its 4 layers ([1, 3])" in said and "teacher on the same validation rows" in said
    losses = next(e.data for e in events if e.data and "mean_soft_loss" in e.data)
    assert losses["mean_soft_loss"] > 0 and losses["mean_gold_loss"] > 0

    # An ordinary 2-layer model, served by /predict with the teacher's labels.
    config = json.loads((settings4.data_dir / "models" / model["id"] / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert list(config["id2label"].values()) == teacher["label_names"]
    predictor = load_predictor(settings4, db.get(Model, model["id"]))
    assert len(predictor.model.bert.encoder.layer) == 2
    resp = client.post(
        "/v1/predict/classification", json={"model": model["id"], "inputs": TEXTS, "top_k": 1}
    )
    assert resp.status_code == 200, resp.text
    assert all(p[0]["label"] in teacher["label_names"] for p in resp.json()["predictions"])


def test_a_student_learns_from_the_teachers_soft_targets_alone(
    settings4: Any, client: TestClient, db: Session
) -> None:
    validation = upload_rows(client, sentiment_rows(16, seed=1))
    teacher_job = _job(
        client,
        settings4,
        base_model=SMALL_BASE,
        train_dataset=upload_rows(client, sentiment_rows(40, seed=0)),
        validation_dataset=validation,
        hyperparameters={"epochs": 6, "batch_size": 8, "learning_rate": 1e-2},
    )
    assert teacher_job["metrics"]["accuracy"] == 1.0
    # alpha 0: the gold labels weigh nothing; the teacher's outputs are all it learns from. The
    # student's train set is labelled at random, so the gold labels would only mislead it, and
    # the student is the untrained base with a fresh head.
    rows = sentiment_rows(40, seed=2)
    rows["label"] = [("pos", "neg")[(i * 7) % 3 % 2] for i in range(len(rows["label"]))]
    job = _job(
        client,
        settings4,
        base_model=f"model:{teacher_job['model_id']}",
        train_dataset=upload_rows(client, rows),
        validation_dataset=validation,
        method={"type": "distill", "student": SMALL_BASE, "alpha": 0.0},
        hyperparameters={"epochs": 6, "batch_size": 8, "learning_rate": 1e-2},
    )
    assert job["metrics"]["accuracy"] >= 0.9, job["metrics"]
    resp = client.post(
        "/v1/predict/classification",
        json={"model": job["model_id"], "inputs": TEXTS, "top_k": 1},
    )
    assert resp.status_code == 200, resp.text
    assert [p[0]["label"] for p in resp.json()["predictions"]] == ["pos", "neg", "pos"]


def test_a_student_from_a_base_model_starts_with_a_fresh_head(
    settings4: Any, client: TestClient, db: Session
) -> None:
    validation = upload_rows(client, sentiment_rows(16, seed=1))
    teacher_job = _job(
        client,
        settings4,
        base_model=TEACHER_BASE,
        train_dataset=upload_rows(client, sentiment_rows(40, seed=0)),
        validation_dataset=validation,
    )
    teacher_id = teacher_job["model_id"]
    # One step at a tiny rate: the student is still what it started as.
    job = _job(
        client,
        settings4,
        base_model=f"model:{teacher_id}",
        train_dataset=upload_rows(client, sentiment_rows(24, seed=2)),
        validation_dataset=validation,
        method={"type": "distill", "student": SMALL_BASE, "alpha": 0.0},
        hyperparameters={"max_steps": 1, "learning_rate": 1e-9, "batch_size": 8},
    )
    model = db.get(Model, job["model_id"])
    assert model is not None and model.parent_model_id == teacher_id
    meta = _meta(settings4, {"id": model.id})
    assert meta["distillation"]["student"] == {"from": SMALL_BASE, "layers": 2}
    assert meta["head_weights"] == ["classifier.bias", "classifier.weight"]
    saved = AutoModelForSequenceClassification.from_pretrained(
        str(settings4.data_dir / model.storage_path)
    ).state_dict()
    base = AutoModelForSequenceClassification.from_pretrained(
        str(settings4.local_models_dir / "tiny-bert"), num_labels=2
    ).state_dict()
    teacher = AutoModelForSequenceClassification.from_pretrained(
        str(settings4.data_dir / "models" / teacher_id)
    ).state_dict()
    name = "bert.encoder.layer.1.output.dense.weight"
    assert torch.allclose(saved[name], base[name], atol=1e-6)
    assert not torch.allclose(saved[name], teacher[name], atol=1e-3)
    assert not torch.allclose(saved["classifier.weight"], teacher["classifier.weight"], atol=1e-3)
    assert model.label_names == ["neg", "pos"] and model.parent_metrics is not None
    # The teacher evaluated on the student's rows is the teacher its own job evaluated there.
    recorded = client.get(f"/v1/models/{teacher_id}").json()["metrics"]
    assert model.parent_metrics["accuracy"] == recorded["accuracy"]
    assert model.parent_metrics["eval_loss"] == pytest.approx(recorded["eval_loss"], abs=1e-5)


def _task_distill(
    settings: Any,
    db: Session,
    stored: dict[str, Any],
    *,
    task: str,
    rows: Any,
    method: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Model, Model]:
    """A teacher (full fine-tune of the 2-layer tiny BERT) and its 1-layer student."""
    from tests.worker.test_lineage import _run, _task_job, full_tiny_model

    teacher = full_tiny_model(settings, db, stored, task, rows, **options)
    student = _run(
        settings,
        db,
        _task_job(
            db,
            stored,
            task=task,
            base_model=f"model:{teacher.id}",
            rows=rows,
            method={
                "type": "distill",
                "student": {"layers": 1},
                "teacher": f"model:{teacher.id}",
                **(method or {}),
            },
            **options,
        ),
    )
    return teacher, student


def test_an_ner_student_learns_per_token_and_serves(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    from app.ml.tasks.ner import NerPredictRequest
    from tests.ml.test_ner_training import ner_rows, served_tags

    teacher, student = _task_distill(
        train_settings,
        db,
        stored_rows,
        task="ner",
        rows=ner_rows(40, seed=0),
        method={"hidden_weight": 1.0},
    )
    assert student.label_names == teacher.label_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert (student.method, student.parent_model_id) == ("distill", teacher.id)
    assert {"f1", "precision", "recall", "eval_loss"} <= set(student.metrics)
    assert student.parent_metrics is not None
    # Both evaluated on the same held-out rows: the teacher's figures are its own job's.
    assert student.parent_metrics["f1"] == teacher.metrics["f1"]
    meta = _meta(train_settings, {"id": student.id})
    assert meta["distillation"]["student"]["layers_kept"] == [1]
    # Its one layer learnt the token vectors of the teacher's second as well.
    assert meta["distillation"]["hidden_weight"] == 1.0
    losses = [
        e.data
        for e in db.scalars(select(JobEvent).where(JobEvent.job_id == student.job_id))
        if e.data and "mean_hidden_loss" in e.data
    ]
    assert len(losses) == 1 and losses[0]["mean_hidden_loss"] > 0
    predictor = load_predictor(train_settings, student)
    assert len(predictor.model.bert.encoder.layer) == 1
    tags = served_tags(predictor, ner_rows(3, seed=9))
    assert all(t in student.label_names for sentence in tags for t in sentence)
    (entities,) = predictor.predict(NerPredictRequest(model=student.id, inputs=["good film"]))
    assert isinstance(entities, list)


def test_a_qa_student_learns_start_and_end_and_serves(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    from app.ml.tasks.qa import QAPredictRequest
    from tests.ml.test_qa import synthetic_rows

    # The layer kept named by index: the teacher's first of two, not the last a count of 1 keeps.
    teacher, student = _task_distill(
        train_settings,
        db,
        stored_rows,
        task="qa",
        rows=synthetic_rows(32, seed=1),
        method={"student": {"layers": [0]}},
        doc_stride=8,
    )
    assert student.label_names == [] and student.parent_model_id == teacher.id
    assert _meta(train_settings, {"id": student.id})["distillation"]["student"] == {
        "from": "teacher",
        "layers_kept": [0],
        "teacher_layers": 2,
    }
    assert {"exact_match", "f1", "eval_loss"} <= set(student.metrics)
    assert student.parent_metrics is not None
    assert student.parent_metrics["f1"] == teacher.metrics["f1"]
    predictor = load_predictor(train_settings, student)
    assert type(predictor.model).__name__ == "BertForQuestionAnswering"
    assert len(predictor.model.bert.encoder.layer) == 1
    request = QAPredictRequest(
        model=student.id, inputs=[{"question": "which is good", "context": "the film was great"}]
    )
    (answers,) = predictor.predict(request)
    assert answers and isinstance(answers[0].answer, str)


def test_a_stored_job_keeping_all_the_teachers_layers_fails_naming_the_field(
    settings4: Any, client: TestClient, db: Session
) -> None:
    # Submission checks k against the teacher's config; a job row written otherwise fails in
    # the worker with the same field, and registers nothing.
    teacher_job = _job(
        client,
        settings4,
        base_model=SMALL_BASE,
        train_dataset=upload_rows(client, sentiment_rows(24, seed=0)),
    )
    job = db.get(Job, teacher_job["id"])
    assert job is not None
    spec = dict(job.spec)
    spec["method"] = {"type": "distill", "student": {"layers": 2}, "temperature": 2.0, "alpha": 0.5}
    from app.db.models import new_id

    row = Job(
        id=new_id("job"),
        tenant_id="default",
        task="classification",
        base_model=f"model:{teacher_job['model_id']}",
        train_dataset_id=job.train_dataset_id,
        spec=spec,
        status=JobStatus.QUEUED,
        attempt=0,
    )
    db.add(row)
    db.commit()
    assert run_job(settings4, row.id) == JobStatus.FAILED
    db.expire_all()
    failed = db.get(Job, row.id)
    assert failed is not None and failed.error_code == "invalid_input"
    assert "method.student.layers" in (failed.error_message or "")
    assert db.scalars(select(Model).where(Model.job_id == row.id)).first() is None


def test_a_student_trains_in_two_data_parallel_processes(
    settings4: Any, client: TestClient, db: Session
) -> None:
    # Each rank runs the teacher on its own shard's batches; the teacher's evaluation is shared
    # and gathered like the student's.
    validation = upload_rows(client, sentiment_rows(16, seed=1))
    teacher_job = _job(
        client,
        settings4,
        base_model=SMALL_BASE,
        train_dataset=upload_rows(client, sentiment_rows(40, seed=0)),
        validation_dataset=validation,
        hyperparameters={"epochs": 6, "batch_size": 8, "learning_rate": 1e-2},
    )
    job = _job(
        client,
        settings4,
        base_model=f"model:{teacher_job['model_id']}",
        train_dataset=upload_rows(client, sentiment_rows(40, seed=2)),
        validation_dataset=validation,
        method={"type": "distill", "student": {"layers": 1}},
        resources={"processes": 2},
    )
    assert job["hyperparameters"]["processes"] == 2
    model = db.get(Model, job["model_id"])
    assert model is not None and model.parent_metrics is not None
    # The teacher evaluated in two processes measures what it did in one (losses are means,
    # not multiplied by the process count).
    assert model.parent_metrics["accuracy"] == teacher_job["metrics"]["accuracy"]
    assert model.parent_metrics["eval_loss"] == pytest.approx(
        teacher_job["metrics"]["eval_loss"], rel=1e-4
    )
    assert _meta(settings4, {"id": model.id})["distillation"]["student"]["layers_kept"] == [1]
