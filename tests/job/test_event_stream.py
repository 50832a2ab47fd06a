"""GET /v1/jobs/{id}/events as Server-Sent Events: order, resume, the end event, refusals."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import auth, create_api_key
from tests.job.test_jobs_api import submit, upload

SSE = {"Accept": "text/event-stream"}
ROWS = [(f"good text {i}", "pos") for i in range(6)] + [(f"bad text {i}", "neg") for i in range(6)]


def parse(body: str) -> list[dict[str, Any]]:
    """SSE messages as dicts of their fields (data parsed as JSON); comments and retry dropped."""
    messages = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        if "event" in fields:
            messages.append(fields)
    return messages


def add_events(app, job_id: str, *messages: str, status: str | None = None) -> None:  # type: ignore[no-untyped-def]
    from app.db.models import EventType, Job, JobEvent

    with app.state.sessionmaker() as s:
        for i, message in enumerate(messages):
            s.add(JobEvent(job_id=job_id, type=EventType.METRICS, message=message, data={"i": i}))
        if status is not None:
            s.get(Job, job_id).status = status
        s.commit()


@pytest.fixture
def job_id(client: TestClient) -> str:
    job = submit(client, train_dataset=upload(client, ROWS)).json()
    return str(job["id"])


def test_an_ended_job_streams_every_event_then_end(client, app, job_id):  # type: ignore[no-untyped-def]
    add_events(app, job_id, "step 1", "step 2", status="succeeded")
    resp = client.get(f"/v1/jobs/{job_id}/events", headers=SSE)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    messages = parse(resp.text)
    assert [m["event"] for m in messages] == ["status", "metrics", "metrics", "end"]
    assert [m["data"].get("message") for m in messages[1:3]] == ["step 1", "step 2"]
    assert messages[-1]["data"] == {"status": "succeeded"}
    # Each message's id is its event's id, and the JSON is what the paged route returns.
    page = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    assert [m["data"] for m in messages[:-1]] == page
    assert [m["id"] for m in messages[:-1]] == [str(e["id"]) for e in page]


def test_last_event_id_resumes_after_it(client, app, job_id):  # type: ignore[no-untyped-def]
    add_events(app, job_id, "a", "b", "c", status="failed")
    page = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
    second = page[2]["id"]  # status, a, [b], c
    resp = client.get(f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": str(second)})
    messages = parse(resp.text)
    assert [m["data"].get("message") for m in messages[:-1]] == ["c"]
    assert messages[-1]["data"] == {"status": "failed"}
    # `after` does the same for a first connection; Last-Event-ID wins when both are sent.
    resp = client.get(f"/v1/jobs/{job_id}/events", params={"after": page[0]["id"]}, headers=SSE)
    assert [m["data"].get("message") for m in parse(resp.text)[:-1]] == ["a", "b", "c"]
    resp = client.get(
        f"/v1/jobs/{job_id}/events",
        params={"after": page[0]["id"]},
        headers={**SSE, "Last-Event-ID": str(page[3]["id"])},
    )
    assert [m["event"] for m in parse(resp.text)] == ["end"]


def test_a_running_job_streams_events_as_they_come(client, app, job_id):  # type: ignore[no-untyped-def]
    from app.db.models import Job

    with app.state.sessionmaker() as s:
        s.get(Job, job_id).status = "running"
        s.commit()

    def later() -> None:
        for n in range(3):
            time.sleep(0.4)
            add_events(app, job_id, f"live {n}")
        time.sleep(0.4)
        add_events(app, job_id, "last", status="cancelled")

    writer = threading.Thread(target=later)
    writer.start()
    resp = client.get(f"/v1/jobs/{job_id}/events", headers=SSE)
    writer.join()
    messages = parse(resp.text)
    live = [m["data"]["message"] for m in messages if m["event"] == "metrics"]
    assert live == ["live 0", "live 1", "live 2", "last"]
    assert messages[-1] == {"event": "end", "data": {"status": "cancelled"}}


@pytest.mark.parametrize("value", ["abc", "-1", "1e3", str(2**31)])
def test_a_bad_last_event_id_is_400_naming_the_header(client, job_id, value):  # type: ignore[no-untyped-def]
    resp = client.get(f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": value})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["details"]["field"] == "Last-Event-ID" and "Last-Event-ID" in err["message"]


def test_missing_and_foreign_jobs_are_404_before_any_stream(app, migrated, client, job_id):  # type: ignore[no-untyped-def]
    resp = client.get("/v1/jobs/job_nope/events", headers=SSE)
    assert resp.status_code == 404 and resp.headers["content-type"] == "application/json"
    other = create_api_key(migrated, tenant="other")
    with TestClient(app, headers=auth(other)) as stranger:
        resp = stranger.get(f"/v1/jobs/{job_id}/events", headers=SSE)
    assert resp.status_code == 404 and job_id in resp.json()["error"]["message"]


def test_json_stays_the_default(client, job_id):  # type: ignore[no-untyped-def]
    for accept in (None, "application/json", "*/*", "text/event-streams"):
        headers = {"Accept": accept} if accept else {}
        resp = client.get(f"/v1/jobs/{job_id}/events", headers=headers)
        assert resp.headers["content-type"] == "application/json", accept
        assert resp.json()["data"][0]["type"] == "status"
