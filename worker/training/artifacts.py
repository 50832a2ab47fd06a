"""Model directories: written under a temporary name, hashed, described, then renamed into place."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.storage import atomic_move_dir, remove_tree
from app.ml.loading import METADATA_FILE

METADATA_VERSION = 1
_LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "tuneserve")


@dataclass(frozen=True)
class WrittenModel:
    path: Path
    # Relative to the data directory, as recorded on the Model row.
    storage_path: str
    size_bytes: int
    files: dict[str, str]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries that trained the model, for reproducing it."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_dir(settings: Settings, model_id: str) -> Path:
    return settings.models_dir / model_id


def temp_dir(settings: Settings, model_id: str) -> Path:
    return settings.models_dir / f".tmp-{model_id}"


def discard(settings: Settings, model_id: str) -> None:
    """Remove a model directory and its temporary twin (an unregistered model leaves nothing)."""
    remove_tree(temp_dir(settings, model_id))
    remove_tree(model_dir(settings, model_id))


def write_model_dir(
    settings: Settings, *, model_id: str, save: Callable[[Path], None], meta: dict[str, Any]
) -> WrittenModel:
    """Save into models/.tmp-<id>, add tuneserve.json with file hashes, rename to models/<id>."""
    tmp = temp_dir(settings, model_id)
    final = model_dir(settings, model_id)
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        save(tmp)
        files = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        body = {"format_version": METADATA_VERSION, **meta, "files": files}
        (tmp / METADATA_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
        size = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        atomic_move_dir(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    relative = final.relative_to(settings.data_dir).as_posix()
    return WrittenModel(path=final, storage_path=relative, size_bytes=size, files=files)
