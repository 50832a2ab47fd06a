"""Predictor tests train tiny models with the worker's fixtures first."""

from __future__ import annotations

from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    add_dataset,
    add_job,
    db,
    stored_rows,
    tiny_models_dir,
    train_settings,
)
