"""JSON request bodies over the configured limit get a 413 in the service's error shape."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db.migrate import upgrade
from app.main import create_app
from tests.conftest import RecordingQueue, auth, create_api_key


def test_oversized_json_body_is_413(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", max_request_bytes=1000)
    upgrade(settings)
    headers = auth(create_api_key(settings))
    with TestClient(create_app(settings, queue=RecordingQueue()), headers=headers) as client:
        big = {"model": "mdl_x", "inputs": ["word " * 400]}
        resp = client.post("/v1/predict/classification", json=big)
        assert resp.status_code == 413
        assert resp.json()["error"]["code"] == "payload_too_large"
        small = client.post("/v1/predict/classification", json={"model": "mdl_x", "inputs": ["hi"]})
        assert small.status_code == 404  # under the limit: reaches the route, unknown model
