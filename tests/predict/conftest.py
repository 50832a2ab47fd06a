"""Predictor tests train tiny models with the worker's fixtures first."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

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


def same_answers(got: Any, want: Any) -> None:
    """Equal predictions: labels, texts and offsets exactly; scores within 1e-4 (batching pads
    inputs to other lengths, which changes float sums in the last digits)."""
    if isinstance(want, BaseModel):
        assert type(got) is type(want)
        same_answers(got.model_dump(), want.model_dump())
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (got, want)
        for key in want:
            same_answers(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for a, b in zip(got, want, strict=True):
            same_answers(a, b)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-4)
    else:
        assert got == want
