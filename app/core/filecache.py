"""A bounded local cache of store trees (datasets, models, bases): least recently used goes first.

Each entry is a directory `<root>/<key>` holding a tree fetched from the object store, complete
once its tree manifest is in place (written last, by a rename). Using an entry touches the
manifest; eviction removes the entries whose manifests are oldest until the cache fits its limit.
An entry just fetched or used within the last minute is never evicted: a process may be reading it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tuneserve.cache")
# An entry used this recently stays even when the cache is over its limit (a load in progress).
IN_USE_SECONDS = 60.0


@dataclass(frozen=True)
class Entry:
    path: Path
    used_at: float
    size_bytes: int


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class FileCache:
    def __init__(self, root: Path, *, max_bytes: int, marker: str) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.marker = marker

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> Path | None:
        """The cached tree of `key` (touched as used), or None."""
        path = self.path(key)
        marker = path / self.marker
        if not marker.is_file():
            return None
        os.utime(marker)
        return path

    def staging(self, key: str) -> Path:
        """A fresh directory beside the cache's entries to download `key` into."""
        tmp = self.root / ".incoming" / f"{key.replace('/', '__')}-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir(parents=True)
        return tmp

    def admit(self, key: str, staged: Path) -> Path:
        """Move a complete staged tree in as `key` (another process's copy, if first, is kept)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists() and not (final / self.marker).is_file():
            shutil.rmtree(final, ignore_errors=True)  # a torn entry from a crash
        try:
            os.replace(staged, final)
        except OSError:  # a concurrent fetch admitted it first: theirs is as good
            shutil.rmtree(staged, ignore_errors=True)
        self.evict()
        return final

    def entries(self) -> list[Entry]:
        found = []
        for marker in self.root.rglob(self.marker) if self.root.is_dir() else ():
            if ".incoming" in marker.parts:
                continue
            try:
                found.append(Entry(marker.parent, marker.stat().st_mtime, tree_size(marker.parent)))
            except OSError:
                continue  # removed meanwhile
        return found

    def evict(self) -> list[Path]:
        """Remove least recently used entries until the cache fits; the paths removed."""
        entries = sorted(self.entries(), key=lambda e: e.used_at)
        total = sum(e.size_bytes for e in entries)
        removed = []
        now = time.time()
        for entry in entries:
            if total <= self.max_bytes:
                break
            if now - entry.used_at < IN_USE_SECONDS:
                continue
            (entry.path / self.marker).unlink(missing_ok=True)  # no longer an entry, then gone
            shutil.rmtree(entry.path, ignore_errors=True)
            total -= entry.size_bytes
            removed.append(entry.path)
            log.info("cache: evicted %s (%d bytes)", entry.path, entry.size_bytes)
        return removed
