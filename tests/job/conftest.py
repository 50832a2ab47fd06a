"""Job tests that need a trained model use the worker's tiny-model fixtures."""

from __future__ import annotations

from tests.worker.conftest import (  # noqa: F401  (pytest finds fixtures by name)
    tiny_models_dir,
    train_settings,
)
