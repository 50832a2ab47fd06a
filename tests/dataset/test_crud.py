"""List (newest first, by cursor), get and delete datasets; no deleting one that a job uses."""

from __future__ import annotations

import pytest

from app.db.models import Job, new_id
from tests.dataset.util import created, dataset_dir, error, upload

CSV = b"text,label\ngood,pos\nbad,neg\n"


def test_get_returns_what_create_returned(client):  # type: ignore[no-untyped-def]
    body = created(upload(client, CSV, name="first"))
    resp = client.get(f"/v1/datasets/{body['id']}")
    assert resp.status_code == 200
    assert resp.json() == body


def test_get_unknown_is_404_naming_the_id(client):  # type: ignore[no-untyped-def]
    err = error(client.get("/v1/datasets/ds_missing"), 404)
    assert err["code"] == "not_found"
    assert "ds_missing" in err["message"]


def test_list_pages_newest_first(client):  # type: ignore[no-untyped-def]
    ids = [created(upload(client, CSV, name=f"set {i}"))["id"] for i in range(5)]
    newest_first = ids[::-1]
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/datasets", params=params).json()
        assert len(page["data"]) <= 2
        seen += [d["id"] for d in page["data"]]
        pages += 1
        after = page["next_cursor"]
        if after is None:
            break
    assert seen == newest_first
    assert pages == 3
    default = client.get("/v1/datasets").json()
    assert [d["id"] for d in default["data"]] == newest_first
    assert default["next_cursor"] is None
    assert default["data"][0]["object"] == "dataset"


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"after": "%%%"}])
def test_list_rejects_bad_parameters(client, params):  # type: ignore[no-untyped-def]
    err = error(client.get("/v1/datasets", params=params), 422)
    assert err["code"] == "invalid_input"


def test_delete_removes_row_and_files(client, settings):  # type: ignore[no-untyped-def]
    body = created(upload(client, CSV))
    assert dataset_dir(settings, body["id"]).is_dir()
    resp = client.delete(f"/v1/datasets/{body['id']}")
    assert resp.status_code == 204
    assert resp.content == b""
    assert not dataset_dir(settings, body["id"]).exists()
    assert error(client.get(f"/v1/datasets/{body['id']}"), 404)["code"] == "not_found"
    assert error(client.delete(f"/v1/datasets/{body['id']}"), 404)["code"] == "not_found"


@pytest.mark.parametrize("role", ["train", "validation"])
def test_delete_refused_while_a_job_uses_it(client, app, settings, role):  # type: ignore[no-untyped-def]
    train = created(upload(client, CSV))["id"]
    other = created(upload(client, CSV))["id"]
    job_id = new_id("job")
    with app.state.sessionmaker() as session:
        session.add(
            Job(
                tenant_id="default",
                id=job_id,
                task="classification",
                base_model="some/model",
                train_dataset_id=train if role == "train" else other,
                validation_dataset_id=train if role == "validation" else None,
                spec={},
            )
        )
        session.commit()
    err = error(client.delete(f"/v1/datasets/{train}"), 409)
    assert err["code"] == "conflict"
    assert job_id in err["message"] and train in err["message"]
    assert dataset_dir(settings, train).is_dir()
    assert client.get(f"/v1/datasets/{train}").status_code == 200
