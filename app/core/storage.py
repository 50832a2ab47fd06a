"""Paths under the data directory. Names are ids we made, never client file names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from app.core.config import Settings


def resolve(settings: Settings, relative: str) -> Path:
    """An absolute path for a storage path recorded in the database."""
    return (settings.data_dir / relative).resolve()


def atomic_move_dir(tmp: Path, final: Path) -> None:
    """Publish a fully written directory under its final name in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
