"""Size and row limits: the upload is refused while it streams, and leaves nothing behind."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from tests.dataset.util import created, error, leftovers, upload

LIMIT = 1000


@pytest.fixture
def settings(tmp_path):  # type: ignore[no-untyped-def]
    # Replaces the shared fixture for this module: the app under test gets these limits.
    return Settings(
        data_dir=tmp_path / "data", redis_url=None, max_upload_bytes=LIMIT, max_dataset_rows=5
    )


def rows_csv(n: int, width: int = 1) -> bytes:
    return b"text,label\n" + b"".join(b"t" * width + b",%d\n" % (i % 2) for i in range(n))


def test_file_at_the_limit_is_accepted(client):  # type: ignore[no-untyped-def]
    content = rows_csv(4)
    content += b"x" * (LIMIT - len(content) - 3) + b",1\n"
    assert len(content) == LIMIT
    assert created(upload(client, content))["size_bytes"] == LIMIT


def test_file_over_the_limit_is_413(client, settings):  # type: ignore[no-untyped-def]
    content = rows_csv(4, width=300)
    assert len(content) > LIMIT
    err = error(upload(client, content), 413)
    assert err["code"] == "payload_too_large"
    assert str(LIMIT) in err["message"]
    assert leftovers(settings) == []


def test_huge_declared_body_is_refused_before_reading(client, settings):  # type: ignore[no-untyped-def]
    err = error(upload(client, b"x" * (2 * 1024 * 1024)), 413)
    assert "request body" in err["message"]
    assert leftovers(settings) == []


def test_too_many_rows_names_the_line(client, settings):  # type: ignore[no-untyped-def]
    err = error(upload(client, rows_csv(6)), 422)
    assert err["code"] == "too_many_rows"
    assert err["message"].startswith("line 7: ")
    assert leftovers(settings) == []


def test_overlong_text_cell_names_row_and_column(tmp_path):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.core.config import Settings
    from app.db.migrate import upgrade
    from app.main import create_app
    from tests.conftest import RecordingQueue, auth, create_api_key

    settings = Settings(data_dir=tmp_path / "d", max_text_chars=50)
    upgrade(settings)
    headers = auth(create_api_key(settings))
    body = "text,label\nshort,a\n" + "x" * 51 + ",b\n"
    with TestClient(create_app(settings, queue=RecordingQueue()), headers=headers) as client:
        resp = client.post(
            "/v1/datasets",
            data={"task": "classification"},
            files={"file": ("f.csv", body.encode(), "text/csv")},
        )
    assert resp.status_code == 422, resp.text
    assert "row 2" in resp.json()["error"]["message"]
    assert "'text'" in resp.json()["error"]["message"]
