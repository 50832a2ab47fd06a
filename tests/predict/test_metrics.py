"""/metrics: who may read it, and what it counts (routes, models, cache, jobs)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import JobStatus, Model
from tests.conftest import auth, create_api_key
from worker.jobs import run_job


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(found.get((name, frozenset(labels.items())), 0.0))


def test_metrics_need_an_operator_key(
    app, client: TestClient, anon_client: TestClient, migrated
) -> None:  # type: ignore[no-untyped-def]
    assert anon_client.get("/metrics").status_code == 401
    predict_only = auth(create_api_key(migrated, scopes=("predict",)))
    assert anon_client.get("/metrics", headers=predict_only).status_code == 403
    # Metrics cover every tenant: another tenant's admin may not read them...
    other_admin = auth(create_api_key(migrated, tenant="other"))
    assert anon_client.get("/metrics", headers=other_admin).status_code == 403
    other_reader = auth(create_api_key(migrated, tenant="other", scopes=("metrics:read",)))
    assert anon_client.get("/metrics", headers=other_reader).status_code == 403
    # ... the operator's admin and metrics:read keys may.
    reader = auth(create_api_key(migrated, scopes=("metrics:read",)))
    assert anon_client.get("/metrics", headers=reader).status_code == 200
    assert client.get("/metrics").status_code == 200
    app.state.settings.metrics_public = True
    assert anon_client.get("/metrics").status_code == 200


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    before = samples(client)
    for _ in range(3):
        assert client.get("/v1/models/mdl_missing").status_code == 404
    assert client.get("/v1/models").status_code == 200
    assert client.get("/no/such/route").status_code == 404
    huge = client.post("/v1/jobs", content=b"x" * (17 * 1024 * 1024))
    assert huge.status_code == 413
    after = samples(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "tuneserve_http_requests_total"
    assert delta(total, method="GET", route="/v1/models/{model_id}", status="404") == 3
    assert delta(total, method="GET", route="/v1/models", status="200") == 1
    assert delta(total, method="GET", route="unmatched", status="404") == 1
    # The body limit answers before routing; it is counted too.
    assert (
        delta(total, method="POST", route="unmatched", status="413")
        + delta(total, method="POST", route="/v1/jobs", status="413")
        == 1
    )
    count = "tuneserve_http_request_duration_seconds_count"
    assert delta(count, method="GET", route="/v1/models/{model_id}") == 3


def test_models_cache_and_jobs(
    app, client: TestClient, train_settings, db: Session, add_job: Callable[..., str]
) -> None:  # type: ignore[no-untyped-def]
    models = []
    for seed in (1, 2):
        job_id = add_job(seed=seed, epochs=1)
        assert run_job(train_settings, job_id) == JobStatus.SUCCEEDED
        models.append(db.scalars(select(Model.id).where(Model.job_id == job_id)).one())
    add_job()  # one queued
    app.state.predictors.capacity = 1
    body = {"inputs": ["good film", "bad film"]}
    for model in (models[0], models[0], models[1]):
        resp = client.post("/v1/predict/classification", json={"model": model, **body})
        assert resp.status_code == 200, resp.text
    found = samples(client)

    for model, n in ((models[0], 2), (models[1], 1)):
        labels = {"task": "classification", "model": model}
        assert value(found, "tuneserve_predict_inputs_total", **labels) == 2 * n
        labels["runtime"] = "torch"  # the runtime that answered (full models: torch)
        assert value(found, "tuneserve_predict_requests_total", outcome="ok", **labels) == n
        assert value(found, "tuneserve_predict_duration_seconds_count", **labels) == n
    events = {
        e: value(found, "tuneserve_model_cache_events_total", event=e)
        for e in ("hit", "load", "eviction")
    }
    assert events == {"hit": 1, "load": 2, "eviction": 1}
    # Only the second model is loaded now; its weights are counted.
    assert value(found, "tuneserve_loaded_models") == 1
    assert value(found, "tuneserve_loaded_model_bytes", model=models[1]) > 10_000
    assert value(found, "tuneserve_loaded_model_bytes", model=models[0]) == 0
    assert value(found, "tuneserve_jobs", status="succeeded") == 2
    assert value(found, "tuneserve_jobs", status="queued") == 1
    assert value(found, "tuneserve_database_up") == 1
