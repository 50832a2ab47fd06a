"""Predictor tests train tiny models with the worker's fixtures first."""

from __future__ import annotations

import io

from fastapi.testclient import TestClient

from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    add_dataset,
    add_job,
    db,
    stored_rows,
    tiny_models_dir,
    train_settings,
)


def upload_rows(client: TestClient, rows: dict[str, list[str]]) -> str:
    """Upload {"text": [...], "label": [...]} as a classification CSV; the new dataset id."""
    body = "text,label\n" + "".join(
        f"{t},{lab}\n" for t, lab in zip(rows["text"], rows["label"], strict=True)
    )
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": ("rows.csv", io.BytesIO(body.encode()), "text/csv")},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])
