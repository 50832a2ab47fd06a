"""Job submission, validation, listing, events and cancellation through the real API."""

from __future__ import annotations

import io
import json

import pytest
from fastapi.testclient import TestClient

BASE = "sentence-transformers/all-MiniLM-L6-v2"


def upload(client: TestClient, rows: list[tuple[str, str]], *, task: str = "classification") -> str:
    body = "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)
    resp = client.post(
        "/v1/datasets",
        data={"task": task},
        files={"file": ("rows.csv", io.BytesIO(body.encode()), "text/csv")},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


ROWS = [(f"good text {i}", "pos") for i in range(6)] + [(f"bad text {i}", "neg") for i in range(6)]


@pytest.fixture
def train_id(client: TestClient) -> str:
    return upload(client, ROWS)


def submit(client: TestClient, **spec: object) -> object:
    return client.post("/v1/jobs", json={"task": "classification", "base_model": BASE, **spec})


def test_submit_commits_then_enqueues_with_defaults(client, queue, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["status"] == "queued"
    assert job["method"] == {"type": "full", "train_top_layers": None}
    hp = job["hyperparameters"]
    assert hp["learning_rate"] > 0 and hp["epochs"] > 0 and hp["batch_size"] > 0
    assert job["seed"] == 42
    assert queue.enqueued == [job["id"]]
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_lora_defaults_follow_peft_names(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, method={"type": "lora", "r": 16})
    assert resp.status_code == 201, resp.text
    method = resp.json()["method"]
    assert method["type"] == "lora" and method["r"] == 16
    assert {"lora_alpha", "lora_dropout", "target_modules"} <= set(method)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"hyperparameters": {"epochs": 1, "bogus": 1}}, "bogus"),
        ({"method": {"type": "lora", "r": 0}}, "r"),
        ({"method": {"type": "magic"}}, "method"),
        ({"hyperparameters": {"learning_rate": 5}}, "learning_rate"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_spec_is_422_naming_the_field(client, queue, train_id, spec, field):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, **spec)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_input"
    assert field in err["message"]
    assert queue.enqueued == []


def test_unknown_dataset_base_model_and_task(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset="ds_missing")
    assert resp.status_code == 422 and "ds_missing" in resp.json()["error"]["message"]
    resp = client.post(
        "/v1/jobs",
        json={"task": "classification", "base_model": "nobody/nothing", "train_dataset": train_id},
    )
    assert resp.status_code == 422 and "nobody/nothing" in resp.json()["error"]["message"]
    resp = client.post(
        "/v1/jobs", json={"task": "summarize", "base_model": BASE, "train_dataset": train_id}
    )
    assert resp.status_code == 422 and "summarize" in resp.json()["error"]["message"]


def test_unknown_base_model_names_the_available_ones_and_how_to_add_more(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, base_model="nobody/nothing")
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["details"]["field"] == "base_model" and BASE in err["details"]["available"]
    message = err["message"]
    assert "'nobody/nothing'" in message and BASE in message
    assert "TUNESERVE_LOCAL_MODELS_DIR" in message and "TUNESERVE_ALLOWED_HUB_MODELS" in message


def test_validation_set_with_unseen_label_is_refused(client, train_id):  # type: ignore[no-untyped-def]
    val = upload(client, [("x", "pos"), ("y", "neutral")])
    resp = submit(client, train_dataset=train_id, validation_dataset=val)
    assert resp.status_code == 422
    assert "neutral" in resp.json()["error"]["message"]


def test_single_label_train_set_is_refused(client):  # type: ignore[no-untyped-def]
    one = upload(client, [(f"t{i}", "a") for i in range(8)])
    resp = submit(client, train_dataset=one)
    assert resp.status_code == 422
    assert "2 distinct labels" in resp.json()["error"]["message"]


def test_cancel_queued_job_never_runs(client, train_id):  # type: ignore[no-untyped-def]
    job = submit(client, train_dataset=train_id).json()
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "cancelled"]


def test_cancel_finished_job_is_conflict(client, app, train_id):  # type: ignore[no-untyped-def]
    from app.db.models import Job

    job = submit(client, train_dataset=train_id).json()
    with app.state.sessionmaker() as s:
        s.get(Job, job["id"]).status = "succeeded"
        s.commit()
    resp = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert resp.status_code == 409
    assert resp.json()["error"]["code"] == "conflict"


def test_list_paginates_newest_first(client, train_id):  # type: ignore[no-untyped-def]
    ids = [submit(client, train_dataset=train_id).json()["id"] for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2} | ({"after": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    assert client.get("/v1/jobs", params={"after": "garbage!"}).status_code == 422


def test_missing_job_is_404(client):  # type: ignore[no-untyped-def]
    resp = client.get("/v1/jobs/job_nope")
    assert resp.status_code == 404
    assert "job_nope" in resp.json()["error"]["message"]


def test_queue_down_keeps_the_job_and_the_relay_publishes_it_later(app, client, queue, train_id):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from app.db.models import JobMessage
    from app.job.outbox import publish_pending

    def broken(job_id: str, queue_name: str = "training") -> None:
        raise ConnectionError("redis refused")

    working = queue.enqueue
    queue.enqueue = broken
    resp = submit(client, train_dataset=train_id)
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "queued"
    with app.state.sessionmaker() as session:
        message = session.scalars(select(JobMessage).where(JobMessage.job_id == job_id)).one()
        assert message.sent_at is None and "redis refused" in (message.last_error or "")
        assert publish_pending(session, queue) == 0  # still down: still owed
        queue.enqueue = working
        assert publish_pending(session, queue) == 1
        assert publish_pending(session, queue) == 0  # sent once, not again
        session.refresh(message)
        assert message.sent_at is not None
    assert queue.enqueued == [job_id]


def test_task_options_are_validated_by_the_task(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, task_options={"doc_stride": 64})
    assert resp.status_code == 422
    assert "task_options.doc_stride" in resp.json()["error"]["message"]
    ok = submit(client, train_dataset=train_id)
    assert ok.json()["task_options"] == {}


def test_head_only_and_top_layers_are_validated(client, train_id):  # type: ignore[no-untyped-def]
    ok = submit(client, train_dataset=train_id, method={"type": "head_only"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["hyperparameters"]["learning_rate"] == 1e-2
    assert ok.json()["method"]["pooling"] == "auto"
    cls = submit(client, train_dataset=train_id, method={"type": "head_only", "pooling": "cls"})
    assert cls.status_code == 201 and cls.json()["method"]["pooling"] == "cls"
    other = submit(client, train_dataset=train_id, method={"type": "head_only", "pooling": "max"})
    assert other.status_code == 422 and "method.pooling" in other.json()["error"]["message"]
    top = submit(client, train_dataset=train_id, method={"type": "full", "train_top_layers": 2})
    assert top.status_code == 201 and top.json()["method"]["train_top_layers"] == 2
    # all-MiniLM-L6-v2 has 6 layers.
    too_many = submit(
        client, train_dataset=train_id, method={"type": "full", "train_top_layers": 7}
    )
    assert too_many.status_code == 422
    assert "method.train_top_layers" in too_many.json()["error"]["message"]
    assert "6 layers" in too_many.json()["error"]["message"]
    unknown = submit(client, train_dataset=train_id, method={"type": "dora"})
    assert unknown.status_code == 422 and "method" in unknown.json()["error"]["message"]
    zero = submit(client, train_dataset=train_id, method={"type": "full", "train_top_layers": 0})
    assert zero.status_code == 422 and "train_top_layers" in zero.json()["error"]["message"]


@pytest.mark.parametrize(
    ("hyperparameters", "field"),
    [
        ({"learning_rate": 5}, "hyperparameters.learning_rate"),
        ({"max_steps": 0}, "hyperparameters.max_steps"),
        ({"gradient_accumulation_steps": 0}, "hyperparameters.gradient_accumulation_steps"),
        ({"dropout": 1.0}, "hyperparameters.dropout"),
        ({"max_grad_norm": -1}, "hyperparameters.max_grad_norm"),
        ({"warmup_steps": -1}, "hyperparameters.warmup_steps"),
        ({"label_smoothing": 1.0}, "hyperparameters.label_smoothing"),
        ({"early_stopping": {"patience": 0}}, "hyperparameters.early_stopping.patience"),
        ({"early_stopping": {"threshold": -1}}, "hyperparameters.early_stopping.threshold"),
        ({"mixed_precision": "fp8"}, "hyperparameters.mixed_precision"),
        ({"batch_size": "big"}, "hyperparameters.batch_size"),
        ({"epochs": "auto-ish"}, "hyperparameters.epochs"),
    ],
)
def test_bad_hyperparameters_are_422_naming_the_field(client, train_id, hyperparameters, field):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, hyperparameters=hyperparameters)
    assert resp.status_code == 422
    assert field in resp.json()["error"]["message"]


def test_training_controls_are_resolved_and_shown(client, train_id):  # type: ignore[no-untyped-def]
    hp = {"max_steps": 100, "gradient_accumulation_steps": 4, "warmup_steps": 10, "dropout": 0.2}
    job = submit(client, train_dataset=train_id, hyperparameters=hp).json()
    assert {k: job["hyperparameters"][k] for k in hp} == hp
    assert job["hyperparameters"]["max_grad_norm"] == 1.0


def test_ia3_method_is_accepted_with_its_learning_rate(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, method={"type": "ia3"})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["method"]["type"] == "ia3" and job["hyperparameters"]["learning_rate"] == 1e-2
    bad = submit(client, train_dataset=train_id, method={"type": "ia3", "target_modules": []})
    assert bad.status_code == 422 and "method.target_modules" in bad.json()["error"]["message"]


def test_checkpoints_list_only_complete_ones(client, settings, train_id):  # type: ignore[no-untyped-def]
    from app.job.checkpoints import checkpoints_dir, write_manifest

    job_id = submit(client, train_dataset=train_id).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"] == []
    root = checkpoints_dir(settings, job_id)
    for step in (10, 20):
        path = root / f"checkpoint-{step}"
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"w" * step)
        (path / "optimizer.pt").write_bytes(b"o" * 3)
        write_manifest(path, step=step, epoch=step / 10, metrics={"eval_loss": 0.5})
    torn = root / "checkpoint-30"
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"half")
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["step"], c["epoch"], c["size_bytes"]) for c in listed] == [
        (10, 1.0, 13),
        (20, 2.0, 23),
    ]
    assert listed[0]["metrics"] == {"eval_loss": 0.5}
    assert client.get("/v1/jobs/job_nope/checkpoints").status_code == 404


def qa_upload(client: TestClient) -> str:
    context = "Paris is the capital of France."
    answer = {"text": ["Paris"], "answer_start": [0]}
    rows = [
        {"id": f"q{i}", "question": f"What is the capital, take {i}?", "context": context}
        | {"answers": answer}
        for i in range(6)
    ]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    resp = client.post(
        "/v1/datasets",
        data={"task": "qa"},
        files={"file": ("rows.jsonl", io.BytesIO(body), "application/jsonl")},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def test_label_smoothing_is_refused_for_a_task_without_labels(client, queue, train_id):  # type: ignore[no-untyped-def]
    qa = qa_upload(client)
    smoothed = {"label_smoothing": 0.1}
    resp = client.post(
        "/v1/jobs",
        json={"task": "qa", "base_model": BASE, "train_dataset": qa, "hyperparameters": smoothed},
    )
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["details"]["field"] == "hyperparameters.label_smoothing"
    assert "hyperparameters.label_smoothing" in err["message"] and "'qa'" in err["message"]
    assert queue.enqueued == []
    ok = submit(client, train_dataset=train_id, hyperparameters=smoothed)
    assert ok.status_code == 201 and ok.json()["hyperparameters"]["label_smoothing"] == 0.1


def test_early_stopping_metric_must_be_one_the_task_reports(client, train_id):  # type: ignore[no-untyped-def]
    def stop(**hp: object) -> object:
        return submit(client, train_dataset=train_id, hyperparameters=hp)

    resp = stop(early_stopping={"metric": "f1"})  # NER and QA report f1; classification does not
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["details"]["field"] == "hyperparameters.early_stopping.metric"
    assert "'f1'" in err["message"] and "['accuracy', 'macro_f1', 'loss']" in err["message"]

    filled = stop(early_stopping={"patience": 3}).json()["hyperparameters"]["early_stopping"]
    assert filled == {"metric": "accuracy", "patience": 3, "threshold": 0.0}
    assert stop(early_stopping={"metric": "loss"}).status_code == 201

    never = stop(early_stopping={"metric": "loss"}, checkpoint_every="no")
    assert never.status_code == 422
    assert never.json()["error"]["details"]["field"] == "hyperparameters.checkpoint_every"
    assert "early_stopping" in never.json()["error"]["message"]
    assert stop(early_stopping={}, checkpoint_every=50).status_code == 201


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_needs_a_gpu_worker(client, settings, monkeypatch, train_id, precision):  # type: ignore[no-untyped-def]
    import torch

    from app.ml import device

    def submit_precision() -> object:
        hp = {"mixed_precision": precision}
        return submit(client, train_dataset=train_id, hyperparameters=hp)

    # "auto": the API judges by the device torch sees here (made a CPU for this test).
    monkeypatch.setattr(device, "select_device", lambda: torch.device("cpu"))
    for worker_device in ("auto", "cpu"):
        settings.worker_device = worker_device
        resp = submit_precision()
        assert resp.status_code == 422, resp.text
        err = resp.json()["error"]
        assert err["code"] == "unsupported_precision"
        assert err["details"]["field"] == "hyperparameters.mixed_precision"
        assert f"{precision} needs a CUDA GPU and the workers train on cpu" in err["message"]
    settings.worker_device = "cuda"  # workers on GPUs the API cannot see
    resp = submit_precision()
    assert resp.status_code == 201, resp.text
    assert resp.json()["hyperparameters"]["mixed_precision"] == precision
    # It needs a GPU: it goes to the gpu queue, unless it names another.
    assert resp.json()["resources"] == {"queue": "gpu", "processes": 1}
    settings.worker_device = "cpu"
    for fine in ("no", "auto"):
        hp = {"mixed_precision": fine}
        assert submit(client, train_dataset=train_id, hyperparameters=hp).status_code == 201


def test_auto_values_are_shown_as_asked_until_training_starts(client, app, train_id):  # type: ignore[no-untyped-def]
    from app.db.models import Job

    auto = {"epochs": "auto", "batch_size": "auto", "max_length": "auto", "learning_rate": "auto"}
    job = submit(client, train_dataset=train_id, hyperparameters=auto).json()
    assert {k: job["hyperparameters"][k] for k in auto} == auto
    assert job["hyperparameters"]["mixed_precision"] == "auto" and job["parameters"] is None
    # What a worker writes when training starts replaces them.
    resolved = {**job["hyperparameters"], "epochs": 5.0, "batch_size": 16, "device": "cpu"}
    with app.state.sessionmaker() as s:
        row = s.get(Job, job["id"])
        row.resolved_hyperparameters = resolved
        row.parameters = {"trainable": 10, "total": 100}
        s.commit()
    read = client.get(f"/v1/jobs/{job['id']}").json()
    assert read["hyperparameters"] == resolved
    assert read["parameters"] == {"trainable": 10, "total": 100}
    listed = client.get("/v1/jobs").json()["data"]
    assert next(j for j in listed if j["id"] == job["id"])["parameters"]["total"] == 100


def test_adalora_and_prefix_tuning_are_accepted_with_resolved_defaults(client, train_id):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, method={"type": "adalora", "init_r": 16})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["method"] == {
        "type": "adalora",
        "init_r": 16,
        "target_r": 8,
        "lora_alpha": 64.0,  # 4 * init_r, stored
        "lora_dropout": 0.1,
        "target_modules": None,
        "tinit": None,  # a tenth and a fifth of the job's steps, known when it runs
        "tfinal": None,
        "delta_t": 1,
        "orth_reg_weight": 0.5,
        "merge_adapter": False,
    }
    assert job["hyperparameters"]["learning_rate"] == 1e-2
    # peft's spelling of delta_t is accepted too.
    alias = submit(client, train_dataset=train_id, method={"type": "adalora", "deltaT": 10})
    assert alias.status_code == 201 and alias.json()["method"]["delta_t"] == 10

    prefix = submit(client, train_dataset=train_id, method={"type": "prefix_tuning"})
    assert prefix.status_code == 201, prefix.text
    assert prefix.json()["method"] == {
        "type": "prefix_tuning",
        "num_virtual_tokens": 50,
        "prefix_projection": False,
        "encoder_hidden_size": None,
    }
    assert prefix.json()["hyperparameters"]["learning_rate"] == 1e-2
    projected = {"type": "prefix_tuning", "prefix_projection": True, "encoder_hidden_size": 64}
    assert submit(client, train_dataset=train_id, method=projected).status_code == 201


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ({"type": "adalora", "init_r": 8, "target_r": 8}, "target_r (8) must be less than init_r"),
        ({"type": "adalora", "target_r": 16}, "target_r (16) must be less than init_r (12)"),
        ({"type": "adalora", "init_r": 0}, "method.init_r"),
        ({"type": "adalora", "target_r": 0}, "method.target_r"),
        ({"type": "adalora", "lora_alpha": 0}, "method.lora_alpha"),
        ({"type": "adalora", "lora_dropout": 1}, "method.lora_dropout"),
        ({"type": "adalora", "target_modules": []}, "method.target_modules"),
        ({"type": "adalora", "tinit": -1}, "method.tinit"),
        ({"type": "adalora", "tfinal": -1}, "method.tfinal"),
        ({"type": "adalora", "delta_t": 0}, "method.delta_t"),
        ({"type": "adalora", "orth_reg_weight": -0.1}, "method.orth_reg_weight"),
        ({"type": "adalora", "r": 8}, "method.r"),
        ({"type": "prefix_tuning", "num_virtual_tokens": 0}, "method.num_virtual"),
        ({"type": "prefix_tuning", "num_virtual_tokens": 513}, "method.num_virtual"),
        ({"type": "prefix_tuning", "encoder_hidden_size": 64}, "only used with prefix_projection"),
        ({"type": "prefix_tuning", "merge_adapter": True}, "method.merge_adapter"),
        ({"type": "full", "merge_adapter": True}, "method.merge_adapter"),
        ({"type": "lora", "merge_adapter": "maybe"}, "method.merge_adapter"),
    ],
)
def test_bad_method_options_are_422_naming_the_field(client, queue, train_id, method, field):  # type: ignore[no-untyped-def]
    resp = submit(client, train_dataset=train_id, method=method)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["code"] == "invalid_input" and field in err["message"], err["message"]
    assert queue.enqueued == []


def test_adalora_schedule_must_fit_max_steps(client, train_id):  # type: ignore[no-untyped-def]
    method = {"type": "adalora", "tinit": 60, "tfinal": 40}
    resp = submit(client, train_dataset=train_id, method=method, hyperparameters={"max_steps": 100})
    assert resp.status_code == 422
    message = resp.json()["error"]["message"]
    assert message.startswith("method.tinit: tinit + tfinal (100) must be less than")
    assert "hyperparameters.max_steps (100)" in message
    fits = submit(client, train_dataset=train_id, method=method, hyperparameters={"max_steps": 101})
    assert fits.status_code == 201, fits.text


@pytest.mark.parametrize("method_type", ["lora", "ia3", "adalora"])
def test_mergeable_adapters_take_merge_adapter(client, train_id, method_type):  # type: ignore[no-untyped-def]
    plain = submit(client, train_dataset=train_id, method={"type": method_type})
    assert plain.json()["method"]["merge_adapter"] is False
    method = {"type": method_type, "merge_adapter": True}
    merged = submit(client, train_dataset=train_id, method=method)
    assert merged.status_code == 201, merged.text
    assert merged.json()["method"]["merge_adapter"] is True


def test_jobs_go_to_the_queue_they_name(client, queue, train_id):  # type: ignore[no-untyped-def]
    plain = submit(client, train_dataset=train_id).json()
    assert plain["resources"] == {"queue": "training", "processes": 1}
    named = submit(client, train_dataset=train_id, resources={"queue": "big-gpus"}).json()
    assert named["resources"] == {"queue": "big-gpus", "processes": 1}
    assert queue.queues == {plain["id"]: "training", named["id"]: "big-gpus"}
    for bad in ("", "GPU", "a b", "x" * 41, "../q"):
        resp = submit(client, train_dataset=train_id, resources={"queue": bad})
        assert resp.status_code == 422, bad
        assert "resources.queue" in resp.json()["error"]["message"]
    resp = submit(client, train_dataset=train_id, resources={"gpus": 2})
    assert resp.status_code == 422 and "resources.gpus" in resp.json()["error"]["message"]


def test_processes_are_validated(client, train_id):  # type: ignore[no-untyped-def]
    two = submit(client, train_dataset=train_id, resources={"processes": 2})
    assert two.status_code == 201, two.text
    assert two.json()["resources"] == {"queue": "training", "processes": 2}
    for bad in (0, -1, 17, 2.5, "two"):
        resp = submit(client, train_dataset=train_id, resources={"processes": bad})
        assert resp.status_code == 422, bad
        assert "resources.processes" in resp.json()["error"]["message"], resp.text
    parent = two.json()["id"]  # any id: the spec is refused before the parent is looked up
    resp = submit(
        client,
        base_model=f"model:{parent}",
        method={"type": "quantize"},
        resources={"processes": 2},
    )
    assert resp.status_code == 422 and "resources.processes" in resp.json()["error"]["message"]
