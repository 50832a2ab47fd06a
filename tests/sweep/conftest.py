"""Sweep tests: the real app, the tiny model, and trials run in this process."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.tinymodel import sentiment_rows
from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    TINY_MODEL_ID,
    tiny_models_dir,
    train_settings,
)


@pytest.fixture(autouse=True)
def fresh_storages() -> Iterator[None]:
    """Each test's database gets its own Optuna storage; engines are closed after it."""
    from app.sweep.study import dispose_storages

    yield
    dispose_storages()


def upload_rows(client: TestClient, n: int, *, seed: int = 0) -> str:
    rows = sentiment_rows(n, seed=seed)
    lines = [f"{t},{label}\n" for t, label in zip(rows["text"], rows["label"], strict=True)]
    resp = client.post(
        "/v1/datasets",
        data={"task": "classification"},
        files={"file": ("rows.csv", io.BytesIO(("text,label\n" + "".join(lines)).encode()))},
    )
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


@pytest.fixture
def datasets(client: TestClient, train_settings: Any) -> tuple[str, str]:  # noqa: F811
    """(train, validation) dataset ids of the tiny sentiment rows."""
    return upload_rows(client, 32), upload_rows(client, 16, seed=1)


@pytest.fixture
def sweep_spec(datasets: tuple[str, str]) -> Callable[..., dict[str, Any]]:
    """A sweep body on the tiny model: two short epochs a trial unless told otherwise."""

    def spec(**overrides: Any) -> dict[str, Any]:
        train, validation = datasets
        body: dict[str, Any] = {
            "task": "classification",
            "base_model": TINY_MODEL_ID,
            "train_dataset": train,
            "validation_dataset": validation,
            "hyperparameters": {
                "learning_rate": {"loguniform": [1e-3, 3e-2]},
                "batch_size": {"choice": [8, 16]},
                "epochs": 2,
                "checkpoint_every": "no",
            },
            "max_trials": 3,
            "parallel": 2,
        }
        body.update(overrides)
        return body

    return spec


ENDED = ("succeeded", "failed", "cancelled")


def advance(settings: Any, queue: Any, **kwargs: Any) -> list[str]:
    """One pass of the relay's sweep driver, in a session of its own."""
    from app.db.session import make_engine, make_sessionmaker
    from app.sweep.driver import advance_sweeps

    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            return advance_sweeps(session, settings=settings, queue=queue, **kwargs)
    finally:
        engine.dispose()


def drive(client: TestClient, settings: Any, queue: Any, sweep_id: str) -> dict[str, Any]:
    """Run the sweep's queued trials here, one after another, advancing it after each, until
    it ends; its final view."""
    from worker.jobs import run_job

    for _ in range(50):
        sweep = client.get(f"/v1/sweeps/{sweep_id}").json()
        if sweep["status"] in ENDED:
            return dict(sweep)
        for trial in sweep["trials"]:
            if trial["job_status"] == "queued":
                run_job(settings, trial["job_id"])
        advance(settings, queue)
    raise AssertionError(f"sweep {sweep_id} did not end: {sweep}")
