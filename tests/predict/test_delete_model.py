"""DELETE /v1/models/{id}: the row and files go, /predict forgets the model at once, and a model
that an alias, an active job or another model needs is refused (409) naming what holds it."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.db.models import JobStatus
from app.db.session import make_engine, make_sessionmaker
from tests.conftest import auth, create_api_key
from tests.predict.conftest import upload_rows
from tests.tinymodel import sentiment_rows
from tests.worker.conftest import TINY_MODEL_ID
from worker.jobs import run_job
from worker.training.state import AttemptFence, claim_job

LORA = {"type": "lora", "r": 4, "lora_dropout": 0.0}
QUANTIZE = {"type": "quantize", "scheme": "int8_dynamic"}
PREDICT = "/v1/predict/classification"
TEXTS = ["a great superb film", "awful boring plot"]


def _submit(client: TestClient, **spec: Any) -> str:
    body = {"task": "classification", "hyperparameters": {"epochs": 1, "batch_size": 8}, **spec}
    if spec.get("method") == QUANTIZE:
        del body["hyperparameters"]
    resp = client.post("/v1/jobs", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _model(client: TestClient, settings: Any, **spec: Any) -> dict[str, Any]:
    """Submit a job through the API, run it in the worker; the model it registered."""
    job_id = _submit(client, **spec)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    model_id = client.get(f"/v1/jobs/{job_id}").json()["model_id"]
    model: dict[str, Any] = client.get(f"/v1/models/{model_id}").json()
    return model


def _predict(client: TestClient, model: str) -> Any:
    return client.post(PREDICT, json={"model": model, "inputs": TEXTS})


def _in_use(resp: Any) -> str:
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_in_use", error
    message: str = error["message"]
    return message


def test_delete_removes_the_model_its_files_and_its_predictor(
    train_settings, client: TestClient
) -> None:
    data = train_settings.data_dir
    train = upload_rows(client, sentiment_rows(24))
    gone = _model(client, train_settings, base_model=TINY_MODEL_ID, train_dataset=train)
    kept = _model(client, train_settings, base_model=TINY_MODEL_ID, train_dataset=train, seed=3)
    assert _predict(client, gone["id"]).status_code == 200  # loaded and cached
    kept_answer = _predict(client, kept["id"]).json()
    predictors = client.app.state.predictors  # type: ignore[attr-defined]
    assert set(predictors.keys()) == {gone["id"], kept["id"]}

    # Another tenant's key: the model does not exist for it. A key without `train` may not.
    other = create_api_key(train_settings, tenant="acme")
    assert client.delete(f"/v1/models/{gone['id']}", headers=auth(other)).status_code == 404
    reader = create_api_key(train_settings, scopes=("models:read", "predict"))
    resp = client.delete(f"/v1/models/{gone['id']}", headers=auth(reader))
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "missing_scope"
    assert (data / "models" / gone["id"]).is_dir()

    resp = client.delete(f"/v1/models/{gone['id']}")
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert client.get(f"/v1/models/{gone['id']}").status_code == 404
    assert not (data / "models" / gone["id"]).exists()
    assert predictors.keys() == [kept["id"]]
    resp = _predict(client, gone["id"])
    assert resp.status_code == 404 and gone["id"] in resp.json()["error"]["message"]
    # Deleting again: it is gone.
    assert client.delete(f"/v1/models/{gone['id']}").status_code == 404

    # Nothing else went: the other model, both jobs, the dataset.
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [kept["id"]]
    assert (data / "models" / kept["id"]).is_dir()
    assert _predict(client, kept["id"]).json() == kept_answer
    for job_id in (gone["job_id"], kept["job_id"]):
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{gone['job_id']}").json()["model_id"] == gone["id"]
    assert client.get(f"/v1/datasets/{train}").status_code == 200


def test_a_model_in_use_is_refused_naming_each_holder(train_settings, client: TestClient) -> None:
    data = train_settings.data_dir
    train = upload_rows(client, sentiment_rows(24))
    parent = _model(client, train_settings, base_model=TINY_MODEL_ID, train_dataset=train)
    base = f"model:{parent['id']}"
    adapter = _model(client, train_settings, base_model=base, train_dataset=train, method=LORA)
    int8 = _model(client, train_settings, base_model=base, method=QUANTIZE)
    # A full child holds its own weights: it does not hold its parent.
    full = _model(client, train_settings, base_model=base, train_dataset=train)
    assert {adapter["artifact"], int8["artifact"], full["artifact"]} == {
        "adapter",
        "int8_dynamic",
        "full",
    }
    assert client.put(f"/v1/models/{parent['id']}/aliases/production").status_code == 200
    queued = _submit(client, base_model=base, train_dataset=train)
    running = _submit(client, base_model=base, train_dataset=train)
    engine = make_engine(train_settings)
    sessions = make_sessionmaker(engine)
    with sessions() as session:  # a worker claims it (and then runs long)
        assert claim_job(session, job_id=running, worker="test") == 1
        session.commit()

    message = _in_use(client.delete(f"/v1/models/{parent['id']}"))
    assert "alias 'production' points at it" in message
    assert f"queued job '{queued}' uses it as its base model" in message
    assert f"running job '{running}' uses it as its base model" in message
    assert f"model '{adapter['id']}' (adapter) needs its files to load" in message
    assert f"model '{int8['id']}' (int8_dynamic) needs its files to load" in message
    assert "move its aliases" in message and "cancel those jobs" in message
    assert full["id"] not in message
    assert (data / "models" / parent["id"]).is_dir()

    # Each holder let go in turn; the refusal names only what still holds the model.
    assert client.delete(f"/v1/models/{int8['id']}").status_code == 204
    assert client.delete(f"/v1/models/{adapter['id']}").status_code == 204
    assert client.delete("/v1/aliases/production").status_code == 200
    assert client.post(f"/v1/jobs/{queued}/cancel").status_code == 200
    message = _in_use(client.delete(f"/v1/models/{parent['id']}"))
    assert running in message and queued not in message and "alias" not in message
    assert adapter["id"] not in message and int8["id"] not in message
    client.post(f"/v1/jobs/{running}/cancel")  # the running job is asked to stop...
    assert _in_use(client.delete(f"/v1/models/{parent['id']}"))  # ... and holds it until it does
    fence = AttemptFence(sessions, job_id=running, attempt=1)
    assert fence.finish(JobStatus.CANCELLED, "job cancelled")
    engine.dispose()

    assert client.delete(f"/v1/models/{parent['id']}").status_code == 204
    assert not (data / "models" / parent["id"]).exists()
    # The full child serves without its parent.
    assert _predict(client, full["id"]).status_code == 200


def test_delete_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/models/{model_id}", "/v1/jobs/{job_id}"):
        operation = paths[path]["delete"]
        assert operation["description"].count("\n") == 0 and operation["description"]
        assert {"204", "404", "409"} <= set(operation["responses"])
