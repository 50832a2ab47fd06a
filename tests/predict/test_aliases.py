"""Registry aliases: /predict follows an alias as it moves between models (and back)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.db.models import JobStatus
from tests.conftest import auth, create_api_key
from worker.jobs import run_job

TEXTS = ["a great superb film", "awful boring plot", "the story"]


def _train(settings: Any, db: Session, add_job: Callable[..., str], seed: int) -> str:
    job_id = add_job(seed=seed, epochs=2, learning_rate=1e-2)
    assert run_job(settings, job_id) == JobStatus.SUCCEEDED
    from sqlalchemy import select

    from app.db.models import Model

    return str(db.scalars(select(Model.id).where(Model.job_id == job_id)).one())


@pytest.fixture
def two_models(train_settings, db: Session, add_job: Callable[..., str]) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    return _train(train_settings, db, add_job, 1), _train(train_settings, db, add_job, 2)


def predict(client: TestClient, model: str) -> tuple[int, Any]:
    resp = client.post(
        "/v1/predict/classification", json={"model": model, "inputs": TEXTS, "top_k": None}
    )
    return resp.status_code, resp.json()


def test_predict_follows_an_alias_as_it_moves(
    client: TestClient, two_models: tuple[str, str]
) -> None:
    a, b = two_models
    _, direct_a = predict(client, a)
    _, direct_b = predict(client, b)
    # Different seeds, different models: the test can tell which one answered.
    assert direct_a["predictions"] != direct_b["predictions"]

    resp = client.put(f"/v1/models/{a}/aliases/production")
    assert resp.status_code == 200, resp.text
    assert resp.json() | {"created_at": None, "updated_at": None} == {
        "name": "production",
        "object": "alias",
        "model": a,
        "previous_model": None,
        "created_at": None,
        "updated_at": None,
    }
    status, via_alias = predict(client, "production")
    assert status == 200 and via_alias == direct_a

    moved = client.put(f"/v1/models/{b}/aliases/production").json()
    assert (moved["model"], moved["previous_model"]) == (b, a)
    status, via_alias = predict(client, "production")
    assert status == 200 and via_alias == direct_b  # the answering model is named in `model`

    # ... and back, to the model the last move left.
    back = client.put(f"/v1/models/{moved['previous_model']}/aliases/production").json()
    assert (back["model"], back["previous_model"]) == (a, b)
    assert predict(client, "production")[1] == direct_a

    assert client.get(f"/v1/models/{a}").json()["aliases"] == ["production"]
    assert client.get(f"/v1/models/{b}").json()["aliases"] == []
    listed = client.get("/v1/models").json()["data"]
    assert {m["id"]: m["aliases"] for m in listed} == {a: ["production"], b: []}
    assert [x["name"] for x in client.get("/v1/aliases").json()["data"]] == ["production"]
    assert client.get("/v1/aliases/production").json()["model"] == a

    assert client.delete("/v1/aliases/production").status_code == 200
    status, body = predict(client, "production")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert client.get(f"/v1/models/{a}").json()["aliases"] == []


def test_alias_rules(client: TestClient, two_models: tuple[str, str], migrated) -> None:  # type: ignore[no-untyped-def]
    a, _ = two_models
    for bad in ("mdl_x", "1st", "with space", "x" * 65, "ü"):
        resp = client.put(f"/v1/models/{a}/aliases/{bad}")
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.json()["error"]["details"]["field"] == "name"
    assert client.put("/v1/models/mdl_missing/aliases/prod").status_code == 404
    assert client.get("/v1/aliases/nothing").status_code == 404
    assert client.delete("/v1/aliases/nothing").status_code == 404

    # Moving an alias needs the train scope; a predict-only key may use it but not move it.
    predict_only = auth(create_api_key(migrated, scopes=("predict",)))
    assert client.put(f"/v1/models/{a}/aliases/prod").status_code == 200
    resp = client.put(f"/v1/models/{a}/aliases/prod2", headers=predict_only)
    assert resp.status_code == 403
    resp = client.post(
        "/v1/predict/classification",
        json={"model": "prod", "inputs": TEXTS},
        headers=predict_only,
    )
    assert resp.status_code == 200 and resp.json()["model"] == a

    # An alias of a classification model cannot serve another task; the message names both.
    resp = client.post("/v1/predict/ner", json={"model": "prod", "inputs": ["Angela Merkel"]})
    assert resp.status_code == 422
    assert "prod" in resp.json()["error"]["message"] and a in resp.json()["error"]["message"]

    # Aliases are per tenant: another tenant's "prod" is not found, and it may make its own.
    other = auth(create_api_key(migrated, tenant="other"))
    resp = client.post(
        "/v1/predict/classification", json={"model": "prod", "inputs": TEXTS}, headers=other
    )
    assert resp.status_code == 404
    assert client.get("/v1/aliases", headers=other).json()["data"] == []


def test_a_move_by_another_process_is_followed_within_the_lookup_window(
    client: TestClient,
    two_models: tuple[str, str],
    migrated,  # type: ignore[no-untyped-def]
) -> None:
    from app.db.session import make_engine, make_sessionmaker
    from app.registry import aliases

    a, b = two_models
    refs = client.app.state.model_refs  # type: ignore[attr-defined]
    now = [1000.0]
    refs.clock = lambda: now[0]
    assert client.put(f"/v1/models/{a}/aliases/production").status_code == 200
    assert predict(client, "production")[1]["model"] == a  # looked up, remembered

    # Another API process (or the CLI) moves the alias: this one's lookup is still remembered...
    engine = make_engine(migrated)
    try:
        with make_sessionmaker(engine)() as other:
            aliases.set_alias(other, tenant="default", model_id=b, name="production")
    finally:
        engine.dispose()
    assert predict(client, "production")[1]["model"] == a
    # ... until lookup_cache_seconds have passed; then the move is followed.
    now[0] += migrated.lookup_cache_seconds + 0.01
    assert predict(client, "production")[1]["model"] == b
    # A move through this process is followed at once.
    assert client.put(f"/v1/models/{a}/aliases/production").status_code == 200
    assert predict(client, "production")[1]["model"] == a


def _registered(settings: Any, model_id: str, *, quality: str | None, accuracy: float) -> str:
    """A model row as a job registers it (no files: aliases read only the row)."""
    from app.db.models import Model, new_id
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            session.add(
                Model(
                    id=model_id,
                    tenant_id="default",
                    task="classification",
                    base_model="local/tiny-bert",
                    method="full",
                    label_names=["neg", "pos"],
                    metrics={"accuracy": accuracy},
                    baseline_metrics={"accuracy": 0.5, "macro_f1": 1 / 3},
                    quality=quality,
                    job_id=new_id("job"),
                    train_dataset_id="ds_x",
                    storage_path=f"models/{model_id}",
                )
            )
            session.commit()
    finally:
        engine.dispose()
    return model_id


def test_an_alias_refuses_a_model_no_better_than_its_baseline_unless_forced(
    client: TestClient, migrated
) -> None:  # type: ignore[no-untyped-def]
    good = _registered(migrated, "mdl_good", quality="better_than_baseline", accuracy=0.9)
    weak = _registered(migrated, "mdl_weak", quality="no_better_than_baseline", accuracy=0.52)
    old = _registered(migrated, "mdl_old", quality=None, accuracy=0.52)  # from before verdicts
    assert client.put(f"/v1/models/{good}/aliases/production").status_code == 200

    # Neither moved nor created onto the weak model; the message names it, its metric, the
    # baseline's and what it needs.
    for name in ("production", "staging"):
        resp = client.put(f"/v1/models/{weak}/aliases/{name}")
        assert resp.status_code == 409, resp.text
        error = resp.json()["error"]
        assert error["code"] == "model_below_baseline"
        assert error["message"] == (
            "model 'mdl_weak' is no better than the trivial baseline: accuracy 0.5200 against "
            'the baseline\'s 0.5000 (it needs 0.5500); send {"force": true} to point alias '
            f"'{name}' at it anyway"
        )
    assert client.get("/v1/aliases/production").json()["model"] == good
    assert client.get("/v1/aliases/staging").status_code == 404
    # An explicit force: false is the same as none.
    resp = client.put(f"/v1/models/{weak}/aliases/production", json={"force": False})
    assert resp.status_code == 409

    # With force it goes through, in the usual shape; a model with no verdict needs no force.
    resp = client.put(f"/v1/models/{weak}/aliases/production", json={"force": True})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == weak and resp.json()["previous_model"] == good
    assert client.put(f"/v1/models/{old}/aliases/legacy").status_code == 200
    # Unknown body fields are refused, naming the field.
    resp = client.put(f"/v1/models/{good}/aliases/production", json={"forse": True})
    assert resp.status_code == 422 and "forse" in resp.text

    read = client.get(f"/v1/models/{weak}").json()
    assert read["quality"] == "no_better_than_baseline"
    assert read["baseline_metrics"] == {"accuracy": 0.5, "macro_f1": pytest.approx(1 / 3)}
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed[weak]["quality"] == "no_better_than_baseline"
    assert listed[old]["quality"] is None and listed[good]["parent_metrics"] is None
    # The OpenAPI document tells about the field and the 409.
    doc = client.get("/openapi.json").json()
    route = doc["paths"]["/v1/models/{model_id}/aliases/{name}"]["put"]
    assert "409" in route["responses"] and "force" in route["description"]
    force = doc["components"]["schemas"]["AliasPut"]["properties"]["force"]
    assert force["default"] is False and "no_better_than_baseline" in force["description"]
