"""Fixtures for training tests: a tiny local base model, datasets held in memory, job rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.tinymodel import build_tiny_model_dir, sentiment_rows

TINY_MODEL_ID = "local/tiny-bert"


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base-models")
    build_tiny_model_dir(root / "tiny-bert")
    return root


@pytest.fixture
def train_settings(migrated, tiny_models_dir: Path):  # type: ignore[no-untyped-def]
    """Migrated settings that list the tiny model, one training thread, fast cancel polling."""
    migrated.local_models_dir = tiny_models_dir
    migrated.training_threads = 1
    migrated.cancel_poll_seconds = 0.05
    return migrated


@pytest.fixture
def db(train_settings) -> Iterator[Session]:  # type: ignore[no-untyped-def]
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(train_settings)
    session = make_sessionmaker(engine)()
    yield session
    session.close()
    engine.dispose()


@pytest.fixture
def stored_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Rows by dataset id, served to the runner in place of the dataset service's files."""
    import datasets

    from worker.training import data

    store: dict[str, Any] = {}

    def load_rows(settings: Any, dataset_row: Any) -> datasets.Dataset:
        value = store[dataset_row.id]
        if isinstance(value, BaseException):
            raise value
        return datasets.Dataset.from_dict(value)

    monkeypatch.setattr(data, "load_rows", load_rows)
    return store


@pytest.fixture
def add_dataset(db: Session, stored_rows: dict[str, Any]) -> Callable[..., str]:
    """Insert a Dataset row whose rows the runner will load; returns its id."""
    from app.db.models import Dataset, new_id

    def add(rows: dict[str, list[Any]] | BaseException | None = None) -> str:
        rows = sentiment_rows(40) if rows is None else rows
        dataset_id = new_id("ds")
        columns = list(rows) if isinstance(rows, dict) else ["text", "label"]
        db.add(
            Dataset(
                tenant_id="default",
                id=dataset_id,
                name=f"{dataset_id}.tsv",
                task="classification",
                format="tsv",
                num_rows=len(rows["text"]) if isinstance(rows, dict) else 0,
                columns=columns,
                sha256="0" * 64,
                size_bytes=1,
                storage_path=f"datasets/{dataset_id}",
            )
        )
        db.commit()
        stored_rows[dataset_id] = rows
        return dataset_id

    return add


@pytest.fixture
def add_job(db: Session, add_dataset: Callable[..., str]) -> Callable[..., str]:
    """Insert a queued classification job on the tiny model; returns its id."""
    from app.db.models import Job, JobStatus, new_id
    from app.job.schemas import Hyperparameters, JobSpec

    def add(
        *,
        method: dict[str, Any] | None = None,
        train: str | None = None,
        validation: str | None = None,
        base_model: str = TINY_MODEL_ID,
        seed: int = 7,
        **hyperparameters: Any,
    ) -> str:
        # Pinned, so a change of the service defaults does not change what these tests train.
        hp = {
            "epochs": 2,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "warmup_ratio": 0.06,
            **hyperparameters,
        }
        spec = JobSpec(
            method=method or {"type": "full"},  # type: ignore[arg-type]
            hyperparameters=Hyperparameters(**hp),
            seed=seed,
        )
        job_id = new_id("job")
        db.add(
            Job(
                tenant_id="default",
                id=job_id,
                task="classification",
                base_model=base_model,
                train_dataset_id=train or add_dataset(),
                validation_dataset_id=validation,
                spec=spec.model_dump(mode="json"),
                status=JobStatus.QUEUED,
                attempt=0,
            )
        )
        db.commit()
        return job_id

    return add
