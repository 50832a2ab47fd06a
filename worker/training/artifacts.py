"""Model directories: written locally, hashed, described, then published to the store."""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.storage import remove_tree
from app.core.store import get_store, sha256_file
from app.ml.loading import METADATA_FILE

log = logging.getLogger("tuneserve.artifacts")
METADATA_VERSION = 1
_LIBRARIES = ("torch", "transformers", "peft", "datasets", "accelerate", "tokenizers", "tuneserve")


@dataclass(frozen=True)
class WrittenModel:
    # The store key, as recorded on the Model row.
    storage_path: str
    size_bytes: int
    files: dict[str, str]


def library_versions() -> dict[str, str]:
    """Versions of the libraries that trained the model, for reproducing it."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_key(model_id: str) -> str:
    return f"models/{model_id}"


def temp_dir(settings: Settings, model_id: str) -> Path:
    """Where this worker builds a model's files before publishing them to the store."""
    return get_store(settings).workdir(f"models/.tmp-{model_id}")


def discard(settings: Settings, model_id: str) -> None:
    """Remove a model's files and its temporary twin (an unregistered model leaves nothing)."""
    remove_tree(temp_dir(settings, model_id))
    try:
        get_store(settings).delete(model_key(model_id))
    except Exception:  # best effort: a tree no row names is never read
        log.warning("could not remove the unregistered model %s from the store", model_id)


def write_model_dir(
    settings: Settings, *, model_id: str, save: Callable[[Path], None], meta: dict[str, Any]
) -> WrittenModel:
    """Save into a temporary directory, add tuneserve.json with file hashes, publish the whole
    directory to the store as models/<id> (visible there only once complete)."""
    tmp = temp_dir(settings, model_id)
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    try:
        save(tmp)
        files = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        body = {"format_version": METADATA_VERSION, **meta, "files": files}
        (tmp / METADATA_FILE).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
        size = get_store(settings).publish(tmp, model_key(model_id))
    except BaseException:
        remove_tree(tmp)
        raise
    return WrittenModel(storage_path=model_key(model_id), size_bytes=size, files=files)
