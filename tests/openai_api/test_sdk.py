"""The official `openai` SDK against /openai/v1, in-process: files, jobs (a tiny model trained by
the worker's own code to `succeeded`, then /predict with `fine_tuned_model`), events, checkpoints,
cancel, pagination, metadata filters, and the SDK's exception classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlalchemy import update

from app.db.models import Job, JobStatus
from tests.conftest import create_api_key
from tests.openai_api.conftest import TINY_MODEL_ID, chat_jsonl, make_sdk
from tests.tinymodel import sentiment_rows
from worker.jobs import run_job

# Pinned so that the tiny model learns in one short run.
FAST = {"n_epochs": 2, "batch_size": 8}


def test_files_upload_list_retrieve_content_delete(sdk: OpenAI) -> None:
    content = chat_jsonl(sentiment_rows(8))
    created = sdk.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert created.object == "file"
    assert created.id.startswith("file_")
    assert (created.bytes, created.filename, created.purpose) == (
        len(content),
        "train.jsonl",
        "fine-tune",
    )
    assert sdk.files.retrieve(created.id) == created
    assert sdk.files.content(created.id).content == content  # byte for byte
    assert [f.id for f in sdk.files.list()] == [created.id]
    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(created.id)
    assert list(sdk.files.list()) == []


def test_files_paginate_both_ways(sdk: OpenAI, chat_file: Callable[..., str]) -> None:
    ids = [chat_file(4, name=f"f{i}.jsonl") for i in range(5)]
    newest_first = [f.id for f in sdk.files.list(limit=2)]  # the SDK follows has_more/after
    assert newest_first == ids[::-1]
    page = sdk.files.list(limit=2, order="asc")
    assert [f.id for f in page.data] == ids[:2] and page.has_more
    assert [f.id for f in page.get_next_page().data] == ids[2:4]
    assert list(sdk.files.list(purpose="batch")) == []


def test_a_job_trains_to_succeeded_and_its_model_predicts(
    train_settings: Any, client: TestClient, sdk: OpenAI, chat_file: Callable[..., str]
) -> None:
    training_file = chat_file(24)
    job = sdk.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": FAST}},
        suffix="sentiment",
        seed=3,
        metadata={"team": "search"},
    )
    assert job.object == "fine_tuning.job"
    assert (job.status, job.model, job.training_file, job.seed) == (
        "queued",
        TINY_MODEL_ID,
        training_file,
        3,
    )
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 8
    assert job.metadata == {"team": "search"}
    assert job.fine_tuned_model is None
    extras: dict[str, Any] = job.model_extra["tuneserve"]  # type: ignore[index]
    assert extras["task"] == "classification" and extras["suffix"] == "sentiment"

    assert run_job(train_settings, job.id) == JobStatus.SUCCEEDED
    done = sdk.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded"
    assert done.fine_tuned_model is not None and done.finished_at is not None
    assert done.hyperparameters.learning_rate_multiplier == 1.0  # the default rate, resolved

    events = list(sdk.fine_tuning.jobs.list_events(job.id, limit=5))  # all pages
    assert events[0].created_at >= events[-1].created_at  # newest first, as OpenAI lists them
    assert events[-1].message == "job queued"
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics, [e.message for e in events]
    train = next(e.data for e in metrics if e.data and "train_loss" in e.data)
    valid = next(e.data for e in metrics if e.data and "valid_loss" in e.data)
    assert isinstance(train["step"], int) and isinstance(train["train_loss"], float)
    assert isinstance(valid["valid_loss"], float) and "valid_accuracy" in valid

    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.fine_tuned_model_checkpoint for c in checkpoints] == [done.fine_tuned_model]
    assert checkpoints[0].step_number > 0 and checkpoints[0].metrics.valid_loss is not None

    answer = client.post(
        "/v1/predict/classification",
        json={"model": done.fine_tuned_model, "inputs": ["a great superb film"]},
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0][0]["label"] in ("pos", "neg")
    assert sdk.models.retrieve(done.fine_tuned_model).owned_by == "default"
    assert done.fine_tuned_model in [m.id for m in sdk.models.list()]


def test_auto_hyperparameters_and_the_learning_rate_multiplier(
    client: TestClient, sdk: OpenAI, chat_file: Callable[..., str]
) -> None:
    training_file = chat_file(24)
    auto = sdk.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training_file,
        hyperparameters={
            "n_epochs": "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
        },
    )
    assert auto.hyperparameters.n_epochs == "auto" and auto.hyperparameters.batch_size == "auto"
    native = client.get(f"/v1/jobs/{auto.id}").json()["hyperparameters"]
    assert native["epochs"] == "auto" and native["batch_size"] == "auto"
    assert native["learning_rate"] == 2e-4  # full fine-tuning's default

    lora = sdk.fine_tuning.jobs.create(
        model=TINY_MODEL_ID,
        training_file=training_file,
        hyperparameters={"learning_rate_multiplier": 0.5, "max_length": 64},
        extra_body={"method": {"type": "lora", "r": 4}},
    )
    native = client.get(f"/v1/jobs/{lora.id}").json()
    assert native["method"]["type"] == "lora" and native["method"]["r"] == 4
    assert native["hyperparameters"]["learning_rate"] == pytest.approx(1e-3)  # 0.5 x LoRA's 2e-3
    assert native["hyperparameters"]["max_length"] == 64
    assert lora.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)


def test_cancel(app: Any, sdk: OpenAI, chat_file: Callable[..., str]) -> None:
    job = sdk.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=chat_file())
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # again: the same
    events = sdk.fine_tuning.jobs.list_events(job.id).data
    assert [e.message for e in events] == ["job cancelled", "job queued"]

    ended = sdk.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=chat_file())
    with app.state.sessionmaker() as session:
        session.execute(update(Job).where(Job.id == ended.id).values(status=JobStatus.FAILED))
        session.commit()
    with pytest.raises(openai.ConflictError) as caught:
        sdk.fine_tuning.jobs.cancel(ended.id)
    assert "already failed" in caught.value.message


def test_list_paginates_and_filters_on_metadata(sdk: OpenAI, chat_file: Callable[..., str]) -> None:
    training_file = chat_file()
    made = [
        sdk.fine_tuning.jobs.create(
            model=TINY_MODEL_ID,
            training_file=training_file,
            metadata={"team": team, "run": str(i)},
        ).id
        for i, team in enumerate(["a", "b", "a", "a"])
    ]
    first = sdk.fine_tuning.jobs.list(limit=3)
    assert [j.id for j in first.data] == made[::-1][:3] and first.has_more
    assert [j.id for j in first.get_next_page().data] == made[:1]
    assert [j.id for j in sdk.fine_tuning.jobs.list(limit=1)] == made[::-1]  # every page
    team_a = [j.id for j in sdk.fine_tuning.jobs.list(metadata={"team": "a"})]
    assert team_a == [made[3], made[2], made[0]]
    both = sdk.fine_tuning.jobs.list(metadata={"team": "a", "run": "2"})
    assert [j.id for j in both] == [made[2]]
    assert list(sdk.fine_tuning.jobs.list(metadata={"team": "c"})) == []


def test_idempotency_key_replays_the_first_job(sdk: OpenAI, chat_file: Callable[..., str]) -> None:
    training_file = chat_file()
    headers = {"Idempotency-Key": "retry-1"}
    first = sdk.fine_tuning.jobs.with_raw_response.create(
        model=TINY_MODEL_ID, training_file=training_file, extra_headers=headers
    )
    again = sdk.fine_tuning.jobs.with_raw_response.create(
        model=TINY_MODEL_ID, training_file=training_file, extra_headers=headers
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.parse().id == first.parse().id
    assert again.parse().object == "fine_tuning.job"
    assert len(list(sdk.fine_tuning.jobs.list())) == 1
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=training_file, seed=9, extra_headers=headers
        )
    assert caught.value.code == "idempotency_key_reused"


def test_ner_file_in_our_format_with_task(client: TestClient, sdk: OpenAI) -> None:
    conll = (
        b"EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\n" * 3 + b"Peter B-PER\nBlackburn I-PER\n\n"
    )
    file = sdk.files.create(file=("train.conll", conll), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(
        model=TINY_MODEL_ID, training_file=file.id, extra_body={"task": "ner"}
    )
    assert job.model_extra["tuneserve"]["task"] == "ner"  # type: ignore[index]
    assert client.get(f"/v1/jobs/{job.id}").json()["task"] == "ner"


def test_error_classes(
    app: Any, migrated: Any, client: TestClient, sdk: OpenAI, chat_file: Callable[..., str]
) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        sdk.fine_tuning.jobs.retrieve("job_0000")
    assert not_found.value.body == {  # OpenAI's error shape
        "message": "job 'job_0000' does not exist",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }
    with pytest.raises(openai.BadRequestError) as bad_model:
        sdk.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=chat_file())
    assert bad_model.value.param == "model" and "gpt-4o-mini" in bad_model.value.message
    with pytest.raises(openai.BadRequestError) as bad_file:
        sdk.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file="file_missing")
    assert bad_file.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as bad_hp:
        sdk.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=chat_file(), hyperparameters={"n_epochs": 0}
        )
    assert bad_hp.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as dpo:
        sdk.fine_tuning.jobs.create(
            model=TINY_MODEL_ID, training_file=chat_file(), method={"type": "dpo"}
        )
    assert dpo.value.param == "method.type" and "supervised" in dpo.value.message

    with pytest.raises(openai.AuthenticationError):
        make_sdk(client, "tsk_not-a-key").files.list()
    reader = make_sdk(client, create_api_key(migrated, scopes=("predict",)))
    with pytest.raises(openai.PermissionDeniedError) as denied:
        reader.fine_tuning.jobs.list()
    assert "scope" in denied.value.message

    app.state.rate_limiter.rate, app.state.rate_limiter.burst = 1 / 60, 1.0
    limited = make_sdk(client, create_api_key(migrated))
    limited.models.list()
    with pytest.raises(openai.RateLimitError) as too_many:
        limited.models.list()
    assert too_many.value.response.headers["Retry-After"]


def test_a_row_that_does_not_fit_is_a_400_naming_line_and_field(
    sdk: OpenAI, chat_file: Callable[..., str]
) -> None:
    content = chat_jsonl(sentiment_rows(6)) + b'{"messages": [{"role": "user", "content": "x"}]}\n'
    file = sdk.files.create(file=("train.jsonl", content), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.fine_tuning.jobs.create(model=TINY_MODEL_ID, training_file=file.id)
    assert caught.value.param == "training_file"
    assert "line 7: messages[1]:" in caught.value.message, caught.value.message


def test_models_retrieve_and_delete(sdk: OpenAI) -> None:
    base = sdk.models.retrieve(TINY_MODEL_ID)  # an id with a slash in it
    assert (base.id, base.owned_by) == (TINY_MODEL_ID, "tuneserve")
    with pytest.raises(openai.PermissionDeniedError):
        sdk.models.delete(TINY_MODEL_ID)
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("mdl_missing")


def test_upload_refuses_other_purposes(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
    assert caught.value.param == "purpose"
