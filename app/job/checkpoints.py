"""Checkpoint manifests: written last, they mark a Trainer checkpoint complete.

A checkpoint directory counts only once its manifest exists and every file it lists has the
listed size, so a directory torn by a crash mid-write is never resumed from (nor listed).
The Trainer writes checkpoints into the worker's working directory for the job; each complete one
is published to the store under jobs/<job id>/checkpoints/checkpoint-<step> (with a local store,
the working directory is that tree: nothing is copied), so an attempt on another machine resumes
from the newest. They go when the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.config import Settings
from app.core.store import NotInStore, Store, get_store

log = logging.getLogger("tuneserve.checkpoints")


def job_key(job_id: str) -> str:
    """A job's files in the store (its checkpoints), kept across attempts until the job ends."""
    return f"jobs/{job_id}"


def checkpoints_key(job_id: str) -> str:
    return f"{job_key(job_id)}/checkpoints"


def job_dir(settings: Settings, job_id: str) -> Path:
    """This process's working directory for a job (with a local store, its tree in the store)."""
    return get_store(settings).workdir(job_key(job_id))


def checkpoints_dir(settings: Settings, job_id: str) -> Path:
    """Where the Trainer writes the job's checkpoints on this machine."""
    return get_store(settings).workdir(checkpoints_key(job_id))


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
            shutil.rmtree(path, ignore_errors=True)
    return complete[-1] if complete else None


@dataclass(frozen=True)
class StoredCheckpoint:
    key: str
    manifest: dict[str, Any]
    saved_at: datetime
    size_bytes: int


def stored_checkpoints(store: Store, job_id: str) -> list[StoredCheckpoint]:
    """The job's complete checkpoints in the store, oldest step first."""
    found = []
    for tree in store.trees(checkpoints_key(job_id)):
        if not _NAME.match(tree.key.rsplit("/", 1)[-1]):
            continue
        try:
            text = store.read_text(tree.key, MANIFEST)
            manifest = json.loads(text)
            listed = sum(int(n) for n in manifest["files"].values())
        except (NotInStore, OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # still being written (a local store), or torn
        # Every listed file at its size, nothing half-written beside them.
        if not manifest["files"] or tree.size_bytes != listed + len(text.encode()):
            continue
        found.append(StoredCheckpoint(tree.key, manifest, tree.published_at, tree.size_bytes))
    return sorted(found, key=lambda c: int(c.manifest["step"]))


def publish(store: Store, job_id: str, path: Path) -> None:
    """Publish a complete checkpoint; drop the store's copies of those the Trainer has rotated out
    of the working directory (it keeps the newest few, and the best when it tracks one)."""
    store.publish(path, f"{checkpoints_key(job_id)}/{path.name}", keep=True)
    for old in stored_checkpoints(store, job_id):
        if not (path.parent / old.key.rsplit("/", 1)[-1]).is_dir():
            store.delete(old.key)


def fetch_newest(store: Store, job_id: str, root: Path) -> None:
    """Bring the store's newest complete checkpoint into `root` (this worker's working directory
    for the job) unless it is there already: an attempt on another machine resumes from it."""
    stored = stored_checkpoints(store, job_id)
    if not stored:
        return
    newest = stored[-1]
    target = root / newest.key.rsplit("/", 1)[-1]
    if read_manifest(target) is not None:
        return
    source = store.local(newest.key)
    if source.resolve() == target.resolve():
        return
    shutil.rmtree(target, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    staged = root / f".incoming-{target.name}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns(".tuneserve-tree.json"))
    os.replace(staged, target)
    log.info("job %s: fetched %s from the store", job_id, newest.key)


def drop_job_files(settings: Settings, job_id: str) -> None:
    """Remove an ended job's checkpoints: from the store and this process's working copy (best
    effort: a store that is down keeps them until the job is deleted)."""
    store = get_store(settings)
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)
    try:
        store.delete(job_key(job_id))
    except Exception:
        log.warning("could not remove job %s's checkpoints from the store", job_id, exc_info=True)
