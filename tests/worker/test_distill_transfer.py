"""Distillation with a transfer set: rows the teacher labels (their own labels are not read),
which the student trains on beside the train set, for each task."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import datasets
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent
from app.ml.loading import load_model, read_model_metadata
from app.ml.methods.distill import DistillMethod
from app.ml.tasks import get_task
from app.predict.predictor import load_predictor
from tests.ml.test_ner_training import ner_rows
from tests.ml.test_qa import synthetic_rows
from tests.tinymodel import sentiment_rows
from tests.worker.test_lineage import _run, _task_job, full_tiny_model, task_rows
from worker.training.methods import distill

# Labels the teacher's must replace: every text's opposite, every word O, every answer the
# context's first word (as a user puts placeholders on text nobody labelled).
FLIP = {"pos": "neg", "neg": "pos"}


def _classification() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    transfer = sentiment_rows(24, seed=7)
    return sentiment_rows(40, seed=0), {**transfer, "label": [FLIP[x] for x in transfer["label"]]}


def _ner() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    transfer = ner_rows(24, seed=7)
    return ner_rows(40, seed=0), {**transfer, "tags": [["O"] * len(t) for t in transfer["tags"]]}


def _qa() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    transfer = synthetic_rows(24, seed=7)
    first = [{"text": [c.split()[0]], "answer_start": [0]} for c in transfer["context"]]
    return synthetic_rows(32, seed=1), {**transfer, "answers": first}


ROWS: dict[str, Callable[[], tuple[dict[str, list[Any]], dict[str, list[Any]]]]] = {
    "classification": _classification,
    "ner": _ner,
    "qa": _qa,
}
LABELS = {"classification": "label", "ner": "tags", "qa": "answers"}


class _Fence:
    """What label_transfer_set needs of a job's fence: its log, and a cancel check."""

    def __init__(self) -> None:
        self.said: list[str] = []

    def log(self, message: str, **data: Any) -> None:
        self.said.append(message)

    def raise_if_cancelled(self) -> None:
        return None


@pytest.mark.parametrize("task", sorted(ROWS))
def test_a_student_trains_on_the_transfer_set_as_its_teacher_labels_it(
    task: str, train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    spec = get_task(task)
    options = {"doc_stride": 8} if task == "qa" else {}
    train_rows, transfer_rows = ROWS[task]()
    teacher = full_tiny_model(train_settings, db, stored_rows, task, train_rows, **options)
    transfer_id = task_rows(db, stored_rows, task, transfer_rows, sha256="1" * 64)
    db.commit()
    method = {
        "type": "distill",
        "student": {"layers": 1},
        "teacher": f"model:{teacher.id}",
        "transfer_dataset": transfer_id,
    }
    student = _run(
        train_settings,
        db,
        _task_job(
            db,
            stored_rows,
            task=task,
            base_model=f"model:{teacher.id}",
            rows=train_rows,
            method=method,
            **options,
        ),
    )
    n_transfer = len(next(iter(transfer_rows.values())))
    meta = read_model_metadata(train_settings.data_dir / "models" / student.id)
    assert meta["distillation"]["transfer_set"] == {"dataset": transfer_id, "rows": n_transfer}
    events = db.scalars(select(JobEvent).where(JobEvent.job_id == student.job_id)).all()
    said = " | ".join(e.message for e in events)
    assert f"transfer set: {n_transfer} rows labelled by the teacher" in said, said
    # It trained on the train split (75%: validation_split 0.25) and every transfer row: 2
    # epochs of batches of 8 (a QA row may give several features, one per document window).
    n_train = len(next(iter(train_rows.values())))
    n_train -= round(n_train * 0.25)
    job = db.get(Job, student.job_id)
    assert job is not None
    steps = 2 * math.ceil((n_train + n_transfer) / 8)
    assert job.progress_total >= steps if task == "qa" else job.progress_total == steps

    # The labels are the teacher's, as its /predict answers the same rows; the placeholders the
    # dataset held are not read.
    rows = datasets.Dataset.from_dict(transfer_rows)
    served = load_predictor(train_settings, teacher)
    request = spec.predict_request.model_validate(
        {"model": teacher.id, "inputs": spec.transfer_inputs(rows)}
    )
    expected = spec.with_predicted_labels(rows, served.predict(request))
    path = train_settings.data_dir / "models" / teacher.id
    serving = read_model_metadata(path)
    state = distill.Teacher(
        load_model(spec, path),
        DistillMethod.model_validate(method),
        frozenset(),
        model_id=teacher.id,
        serving={k: serving.get(k) for k in ("max_length", "task_options")},
    )
    fence = _Fence()
    labelled = distill.label_transfer_set(
        fence,  # type: ignore[arg-type]
        spec,
        state,
        served.tokenizer,
        rows,
        label_names=list(teacher.label_names or []),
    )
    column = LABELS[task]
    assert labelled[column][:] == expected[column][:]
    assert labelled[column][:] != rows[column][:]
    assert labelled.column_names == rows.column_names
    assert any("the teacher labels its 24 rows" in s for s in fence.said), fence.said


def _failed_student(
    settings: Any, db: Session, stored: dict[str, Any], transfer_id: str | None = None
) -> str:
    """A classification student whose transfer set is `transfer_id` (default: none that
    exists): the job must fail; its error message."""
    from app.db.models import JobStatus
    from worker.jobs import run_job

    train_rows, _ = _classification()
    teacher = full_tiny_model(settings, db, stored, "classification", train_rows)
    transfer = transfer_id or "ds_0000000000000000"
    job_id = _task_job(
        db,
        stored,
        task="classification",
        base_model=f"model:{teacher.id}",
        rows=train_rows,
        method={"type": "distill", "student": {"layers": 1}, "transfer_dataset": transfer},
    )
    assert run_job(settings, job_id) == JobStatus.FAILED
    db.expire_all()
    job = db.get(Job, job_id)
    assert job is not None and job.error_message is not None, job
    return job.error_message


def test_a_transfer_set_gone_before_the_job_ran_fails_it_naming_the_field(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    message = _failed_student(train_settings, db, stored_rows)
    assert message.startswith("method.transfer_dataset: "), message
    assert "no longer exists" in message, message


def test_a_transfer_row_the_teacher_cannot_be_asked_about_fails_the_job_naming_it(
    train_settings: Any, db: Session, stored_rows: dict[str, Any]
) -> None:
    # The second row has no visible character (a zero-width space): /predict refuses such a text.
    transfer = {"text": ["a fine film", "\u200b", "dull"], "label": ["x", "x", "x"]}
    transfer_id = task_rows(db, stored_rows, "classification", transfer, sha256="2" * 64)
    message = _failed_student(train_settings, db, stored_rows, transfer_id)
    assert message.startswith("method.transfer_dataset: row 2: "), message
