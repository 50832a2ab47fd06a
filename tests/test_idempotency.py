"""Idempotency-Key on POST /v1/jobs and POST /v1/datasets: retries replay, reuse is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.idempotency import IdempotentRequest
from app.db.models import Dataset, IdempotencyRecord, Job
from tests.conftest import RecordingQueue, auth, create_api_key

BASE = "sentence-transformers/all-MiniLM-L6-v2"
CSV = b"text,label\n" + b"".join(f"good {i},pos\nbad {i},neg\n".encode() for i in range(6))


def post_dataset(
    client: TestClient, content: bytes = CSV, key: str | None = None, **fields: str
) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/v1/datasets",
        data={"task": "classification", **fields},
        files={"file": ("rows.csv", content)},
        headers=headers,
    )


def post_job(client: TestClient, spec: dict[str, Any], key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/jobs", json=spec, headers=headers)


def count(app: Any, model: Any) -> int:
    with app.state.sessionmaker() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    resp = post_dataset(client)
    assert resp.status_code == 201, resp.text
    return {"task": "classification", "base_model": BASE, "train_dataset": resp.json()["id"]}


def test_job_retry_replays_the_first_response_and_creates_nothing(client, app, queue, spec):  # type: ignore[no-untyped-def]
    first = post_job(client, spec, key="job-1")
    assert first.status_code == 201, first.text
    assert "Idempotent-Replayed" not in first.headers
    # The job moves on; a retry still gets the first answer, as Stripe does.
    client.post(f"/v1/jobs/{first.json()['id']}/cancel")
    again = post_job(client, spec, key="job-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert again.json()["status"] == "queued"
    assert count(app, Job) == 1
    assert queue.enqueued == [first.json()["id"]]


def test_job_body_is_compared_as_canonical_json(client, app, spec):  # type: ignore[no-untyped-def]
    first = post_job(client, {**spec, "seed": 7}, key="k")
    reordered = dict(reversed(list({**spec, "seed": 7}.items())))
    again = post_job(client, reordered, key="k")
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert count(app, Job) == 1


def test_same_key_with_a_different_body_is_422(client, app, spec):  # type: ignore[no-untyped-def]
    assert post_job(client, spec, key="k").status_code == 201
    resp = post_job(client, {**spec, "seed": 1}, key="k")
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert err["code"] == "idempotency_key_reused"
    assert "already used for a different request" in err["message"]
    assert count(app, Job) == 1


def test_without_a_key_or_with_new_keys_every_request_creates(client, app, spec):  # type: ignore[no-untyped-def]
    ids = {post_job(client, spec).json()["id"] for _ in range(2)}
    ids |= {post_job(client, spec, key=k).json()["id"] for k in ("a", "b")}
    assert len(ids) == 4 and count(app, Job) == 4


def test_keys_are_scoped_per_tenant_and_route(client, app, migrated, spec):  # type: ignore[no-untyped-def]
    assert post_job(client, spec, key="shared").status_code == 201
    # The same key on the other route is another key.
    assert post_dataset(client, key="shared").status_code == 201
    other = TestClient(app, headers=auth(create_api_key(migrated, tenant="other")))
    ds = post_dataset(other, key="shared")
    assert ds.status_code == 201 and "Idempotent-Replayed" not in ds.headers
    job = post_job(other, {**spec, "train_dataset": ds.json()["id"]}, key="shared")
    assert job.status_code == 201 and "Idempotent-Replayed" not in job.headers
    assert count(app, Job) == 2 and count(app, Dataset) == 3


def test_key_length_is_limited_to_255(client, spec):  # type: ignore[no-untyped-def]
    assert post_job(client, spec, key="k" * 255).status_code == 201
    resp = post_job(client, spec, key="k" * 256)
    assert resp.status_code == 422
    assert "Idempotency-Key" in resp.json()["error"]["message"]
    assert post_dataset(client, key="d" * 256).status_code == 422


def test_a_refused_request_is_not_remembered(client, app, spec):  # type: ignore[no-untyped-def]
    bad = post_job(client, {**spec, "train_dataset": "ds_missing"}, key="fix-me")
    assert bad.status_code == 422
    fixed = post_job(client, spec, key="fix-me")
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed.headers
    bad_upload = post_dataset(client, b"text\nonly text\n", key="fix-upload")
    assert bad_upload.status_code == 422
    assert post_dataset(client, key="fix-upload").status_code == 201
    assert count(app, IdempotencyRecord) == 2


def test_a_job_over_the_cap_is_not_remembered(client, app, spec):  # type: ignore[no-untyped-def]
    app.state.settings.max_active_jobs_per_tenant = 1
    assert post_job(client, spec, key="one").status_code == 201
    refused = post_job(client, spec, key="two")
    assert refused.status_code == 429
    # Once a slot frees, the same key goes through.
    client.post(f"/v1/jobs/{post_job(client, spec, key='one').json()['id']}/cancel")
    assert post_job(client, spec, key="two").status_code == 201


def test_dataset_retry_replays_and_stores_one_copy(client, app, settings):  # type: ignore[no-untyped-def]
    first = post_dataset(client, key="up-1", name="sst")
    assert first.status_code == 201, first.text
    again = post_dataset(client, key="up-1", name="sst")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert count(app, Dataset) == 1
    assert [p.name for p in (settings.data_dir / "datasets").iterdir()] == [first.json()["id"]]
    assert list((settings.data_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "change",
    [
        {"content": CSV + b"one more,pos\n"},
        {"name": "another name"},
        {"strict": "true"},
    ],
)
def test_dataset_key_reused_for_another_upload_is_422(client, app, change):  # type: ignore[no-untyped-def]
    assert post_dataset(client, key="up").status_code == 201
    resp = post_dataset(client, key="up", **change)
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "idempotency_key_reused"
    assert count(app, Dataset) == 1


def test_openapi_documents_the_header(client):  # type: ignore[no-untyped-def]
    doc = client.get("/openapi.json").json()
    for path in ("/v1/jobs", "/v1/datasets"):
        op = doc["paths"][path]["post"]
        (param,) = [p for p in op["parameters"] if p["name"] == "Idempotency-Key"]
        assert param["in"] == "header" and not param.get("required", False)
        assert param["schema"]["anyOf"][0]["maxLength"] == 255
        assert "retries" in param["description"]
        assert "Idempotent-Replayed" in op["responses"]["201"]["headers"]


def _gate_first_check(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the first request right after its idempotency check found nothing."""
    original: Callable[[IdempotentRequest, Any], None] = IdempotentRequest.replay_if_seen
    checked, go = threading.Event(), threading.Event()
    calls = 0
    lock = threading.Lock()

    def gated(self: IdempotentRequest, session: Any) -> None:
        nonlocal calls
        original(self, session)
        with lock:
            calls += 1
            first = calls == 1
        if first:
            checked.set()
            assert go.wait(30)

    monkeypatch.setattr(IdempotentRequest, "replay_if_seen", gated)
    return checked, go


def _race(send: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """Two requests with one key: the first passes its check, the second commits meanwhile."""
    checked, go = _gate_first_check(monkeypatch)
    slow: list[Any] = []
    thread = threading.Thread(target=lambda: slow.append(send()))
    thread.start()
    assert checked.wait(30)
    fast = send()
    go.set()
    thread.join(60)
    assert slow, "the held request did not finish"
    return fast, slow[0]


@dataclass
class Env:
    client: TestClient
    app: Any
    settings: Settings
    queue: RecordingQueue
    spec: dict[str, Any]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """The app on a migrated database of each backend (a fresh PostgreSQL database per test)."""
    from app.db.migrate import upgrade
    from app.main import create_app

    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_server").create_database()
    settings = Settings(data_dir=tmp_path / "data", database_url=url, redis_url=None)
    upgrade(settings)
    queue = RecordingQueue()
    application = create_app(settings, queue=queue)
    with TestClient(application, headers=auth(create_api_key(settings))) as client:
        resp = post_dataset(client)
        assert resp.status_code == 201, resp.text
        spec = {"task": "classification", "base_model": BASE, "train_dataset": resp.json()["id"]}
        yield Env(client, application, settings, queue, spec)
    application.state.engine.dispose()


def test_racing_job_requests_create_one_job(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _race(lambda: post_job(env.client, env.spec, key="race"), monkeypatch)
    assert fast.status_code == slow.status_code == 201, (fast.text, slow.text)
    assert "Idempotent-Replayed" not in fast.headers
    assert slow.headers["Idempotent-Replayed"] == "true"
    assert slow.json() == fast.json()
    assert count(env.app, Job) == 1
    assert env.queue.enqueued == [fast.json()["id"]]


def test_racing_job_requests_with_different_bodies(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = iter([{**env.spec, "seed": 1}, {**env.spec, "seed": 2}])
    fast, slow = _race(lambda: post_job(env.client, next(bodies), key="race"), monkeypatch)
    assert fast.status_code == 201
    assert slow.status_code == 422, slow.text
    assert slow.json()["error"]["code"] == "idempotency_key_reused"
    assert count(env.app, Job) == 1


def test_racing_uploads_keep_one_dataset_and_its_files(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = _race(lambda: post_dataset(env.client, key="race"), monkeypatch)
    assert fast.status_code == slow.status_code == 201, (fast.text, slow.text)
    assert slow.headers["Idempotent-Replayed"] == "true"
    assert slow.json() == fast.json()
    assert count(env.app, Dataset) == 2  # the fixture's and this one
    # The loser published its files before its commit failed; they are gone again.
    stored = {p.name for p in (env.settings.data_dir / "datasets").iterdir()}
    assert stored == {env.spec["train_dataset"], fast.json()["id"]}
    assert list((env.settings.data_dir / "tmp").iterdir()) == []
