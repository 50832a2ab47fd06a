"""Regressions for the 5xx answers and odd error shapes that schemathesis and probing found.

Each was a 500 (or a body outside the one error shape); each is now a 4xx in that shape.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.conftest import RecordingQueue, auth, create_api_key

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))


def error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    return body["error"]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """An admin client on each backend: PostgreSQL refuses NUL in text, SQLite does not."""
    from app.db.migrate import upgrade
    from app.main import create_app

    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_server").create_database()
    settings = Settings(data_dir=tmp_path / "data", database_url=url, redis_url=None)
    upgrade(settings)
    application = create_app(settings, queue=RecordingQueue())
    # raise_server_exceptions=False: a 500 must show as a 500, as a client would see it.
    with TestClient(
        application, headers=auth(create_api_key(settings)), raise_server_exceptions=False
    ) as client:
        yield client
    application.state.engine.dispose()


def _job(client: TestClient) -> str:
    ds = client.post("/v1/datasets", data={"task": "classification"}, files={"file": ("a", CSV)})
    spec = {"task": "classification", "base_model": BASE, "train_dataset": ds.json()["id"]}
    job_id: str = client.post("/v1/jobs", json=spec).json()["id"]
    return job_id


def test_event_cursor_past_the_integer_range_is_422(api: TestClient) -> None:
    # Was an OverflowError (SQLite) or a DataError (PostgreSQL, 32-bit ids): a 500.
    job_id = _job(api)
    for after in (2**31, 2**63, 10**30):
        err = error(api.get(f"/v1/jobs/{job_id}/events", params={"after": after}), 422)
        assert "after" in err["message"]
    assert api.get(f"/v1/jobs/{job_id}/events", params={"after": 2**31 - 1}).status_code == 200


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+01:00"])
@pytest.mark.parametrize("path", ["/v1/datasets", "/v1/jobs", "/v1/models", "/v1/keys"])
def test_page_cursor_at_the_ends_of_the_calendar_is_422(
    api: TestClient, stamp: str, path: str
) -> None:
    # Such a stamp cannot be moved to UTC (OverflowError while binding it): was a 500.
    cursor = base64.urlsafe_b64encode(f"{stamp}|ds_x".encode()).decode()
    assert error(api.get(path, params={"after": cursor}), 422)["code"] == "invalid_input"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/datasets/ds%00x", 404),
        ("DELETE", "/v1/datasets/ds%00x", 404),
        ("GET", "/v1/jobs/job%00x", 404),
        ("GET", "/v1/jobs/job%00x/events", 404),
        ("POST", "/v1/jobs/job%00x/cancel", 404),
        ("GET", "/v1/models/mdl%00x", 404),
        ("DELETE", "/v1/keys/key%00x", 404),
        ("GET", "/v1/models?task=ner%00", 422),
    ],
)
def test_nul_in_an_id_or_filter_is_a_4xx(
    api: TestClient, method: str, path: str, status: int
) -> None:
    # PostgreSQL cannot compare text holding NUL: these were 500s there.
    error(api.request(method, path), status)


def test_nul_in_bodies_cursors_and_keys_is_a_4xx(api: TestClient) -> None:
    spec = {"task": "classification", "base_model": BASE, "train_dataset": "ds\x00"}
    assert "train_dataset" in error(api.post("/v1/jobs", json=spec), 422)["message"]
    error(api.post("/v1/predict/classification", json={"model": "m\x00", "inputs": ["x"]}), 404)
    assert (
        "name"
        in error(api.post("/v1/keys", json={"scopes": ["predict"], "name": "\x00"}), 422)["message"]
    )
    cursor = base64.urlsafe_b64encode(b"2026-01-01T00:00:00+00:00|ds_\x00").decode()
    error(api.get("/v1/datasets", params={"after": cursor}), 422)
    spec["train_dataset"] = "ds_x"
    resp = api.post("/v1/jobs", json=spec, headers={"Idempotency-Key": "k\x00"})
    assert "Idempotency-Key" in error(resp, 422)["message"]


def test_unknown_task_filter_is_422(api: TestClient) -> None:
    err = error(api.get("/v1/models", params={"task": "summarize"}), 422)
    assert "summarize" in err["message"] and "classification" in err["message"]
    assert api.get("/v1/models", params={"task": "ner"}).json()["data"] == []


def test_framework_errors_have_the_one_error_shape(api: TestClient) -> None:
    # These came from Starlette/FastAPI as {"detail": ...}.
    err = error(api.get("/v1/nothing-here"), 404)
    assert err["code"] == "not_found" and "/v1/nothing-here" in err["message"]
    resp = api.put("/v1/jobs")
    assert error(resp, 405)["code"] == "method_not_allowed"
    assert resp.headers["Allow"] == "POST" or "GET" in resp.headers["Allow"]
    bad = api.post(
        "/v1/jobs", content=b'{"task": "\xff"}', headers={"content-type": "application/json"}
    )
    assert error(bad, 400)["code"] == "bad_request"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/openai/v1/fine_tuning/jobs", {"model": 5, "training_file": "file_x"}),
        ("POST", "/openai/v1/fine_tuning/jobs", {"training_file": "file_x"}),
        ("POST", "/openai/v1/fine_tuning/jobs", b'{"model": '),
        ("GET", "/openai/v1/fine_tuning/jobs?limit=0", None),
        ("GET", "/openai/v1/fine_tuning/jobs/job_x/events?limit=x", None),
        ("GET", "/openai/v1/files?order=sideways", None),
    ],
)
def test_openai_routes_answer_invalid_input_as_400_in_their_shape(
    api: TestClient, method: str, path: str, body: Any
) -> None:
    # OpenAI answers invalid parameters with 400 (the SDK's BadRequestError), never 422: the
    # OpenAPI document must not promise a 422 there (below).
    raw = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = api.request(method, path, **raw)
    assert resp.status_code == 400, resp.text
    assert set(resp.json()) == {"error"}, resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}, resp.text
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_openapi_documents_the_error_statuses(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's 422 shape
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            if path == "/healthz":
                continue
            assert {"401", "429", "503"} <= codes, (method, path, codes)
            if "{" in path or path.startswith("/v1/predict/"):
                assert "404" in codes, (method, path)
            if path.startswith("/openai/"):
                # OpenAI's error shape; invalid input is a 400 there, never a 422.
                error_ref = "#/components/schemas/OpenAIErrorResponse"
                assert "400" in codes and "422" not in codes, (method, path, codes)
            else:
                error_ref = "#/components/schemas/ErrorResponse"
            for code in sorted(c for c in codes if c[0] in "45"):  # each error, in its shape
                schema = operation["responses"][code]["content"]["application/json"]["schema"]
                assert schema["$ref"] == error_ref, (method, path, code)
