"""Resumable checkpoints: the Trainer writes them; a manifest written last marks them complete.

A checkpoint directory counts only once its manifest exists and every file it lists has the
listed size, so a directory torn by a crash mid-write is never resumed from. Checkpoints live in
<jobs>/<job id>/checkpoints across attempts, and go when the job ends.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from app.core.config import Settings
from app.core.storage import remove_tree
from worker.training.artifacts import job_dir

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.training.state import AttemptFence

MANIFEST = "tuneserve-checkpoint.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints_dir(settings: Settings, job_id: str) -> Path:
    return job_dir(settings, job_id) / "checkpoints"


def write_manifest(path: Path, *, step: int, epoch: float, metrics: dict[str, Any]) -> None:
    """Describe a checkpoint the Trainer has finished writing; the rename makes it count."""
    files = {
        str(f.relative_to(path)): f.stat().st_size
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    manifest = {"step": step, "epoch": epoch, "metrics": metrics, "files": files}
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


class CheckpointCallback(TrainerCallback):
    """After the Trainer saves a checkpoint: write its manifest, then tell the job's events."""

    def __init__(self, fence: AttemptFence) -> None:
        self.fence = fence
        self.last_metrics: dict[str, Any] = {}

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last_metrics = {
            k: v for k, v in (kw.get("metrics") or {}).items() if isinstance(v, int | float)
        }

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not path.is_dir():
            return
        epoch = float(state.epoch or 0.0)
        write_manifest(path, step=state.global_step, epoch=epoch, metrics=self.last_metrics)
        self.fence.log(
            f"checkpoint at step {state.global_step} (epoch {epoch:.2f})",
            checkpoint_step=state.global_step,
            epoch=epoch,
            metrics=self.last_metrics,
        )
