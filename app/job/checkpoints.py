"""Checkpoint manifests: written last, they mark a Trainer checkpoint complete.

A checkpoint directory counts only once its manifest exists and every file it lists has the
listed size, so a directory torn by a crash mid-write is never resumed from (nor listed).
Checkpoints live in <jobs>/<job id>/checkpoints across a job's attempts and go when it ends.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.storage import remove_tree


def job_dir(settings: Settings, job_id: str) -> Path:
    """A job's working files (its checkpoints), kept across attempts until the job ends."""
    return settings.jobs_dir / job_id


def checkpoints_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "checkpoints"


MANIFEST = "tuneserve-checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def write_manifest(
    path: Path,
    *,
    step: int,
    epoch: float,
    metrics: dict[str, Any],
    elapsed_s: float | None = None,
) -> None:
    """Describe a checkpoint the Trainer has finished writing; the rename makes it count.
    `elapsed_s`: seconds of training behind it, from which a resumed attempt counts on."""
    files = {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    manifest = {
        "step": step,
        "epoch": epoch,
        "metrics": metrics,
        "files": files,
        "elapsed_s": elapsed_s,
    }
    tmp = path / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MANIFEST)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest of a complete checkpoint, or None (missing, unreadable, or files differ)."""
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
        if not files:
            return None
        for name, size in files.items():
            if (path / name).stat().st_size != size:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def complete_checkpoints(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Complete checkpoints under `root`, oldest step first."""
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else ():
        match = _NAME.match(path.name)
        manifest = read_manifest(path) if match and path.is_dir() else None
        if manifest is not None:
            found.append((path, manifest))
    return sorted(found, key=lambda pair: int(pair[1]["step"]))


def latest_complete(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint; torn ones (no manifest) are removed on the way."""
    complete = complete_checkpoints(root)
    keep = {path for path, _ in complete}
    for path in root.glob("checkpoint-*") if root.is_dir() else ():
        if path not in keep:
            remove_tree(path)
    return complete[-1] if complete else None


def saved_at(path: Path) -> datetime:
    return datetime.fromtimestamp((path / MANIFEST).stat().st_mtime, tz=UTC)
