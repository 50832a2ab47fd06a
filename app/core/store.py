"""Where datasets, model artifacts and checkpoints live: a local folder or an S3-compatible store.

Everything stored is a *tree* (a directory of files) under a key that the database records:
`datasets/<id>`, `models/<id>`, `jobs/<id>/checkpoints/checkpoint-<step>`. A tree becomes visible
only once complete:

- `file://` (the embedded default: the data directory): a tree is written beside its key and
  renamed into place.
- `s3://bucket/prefix`: its files are uploaded (multipart when large) under the key, then a tree
  manifest listing every file's size and sha256 is written last; a key without a manifest does not
  exist. Fetches land in this process's bounded cache and are checked against the manifest.

Store calls that fail for a transient reason (connection refused, timeouts, 5xx, throttling) are
retried with backoff for the store's patience; after it, StoreUnavailable (503, Retry-After).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlparse

from app.core.config import Settings
from app.core.errors import NotFound, Unavailable
from app.core.filecache import FileCache
from app.core.storage import atomic_move_dir, remove_tree

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("tuneserve.store")
TREE_MANIFEST = ".tuneserve-tree.json"
T = TypeVar("T")
# Parts of a large upload (boto3's managed transfer splits files above the threshold).
MULTIPART_BYTES = 16 * 1024 * 1024
RETRY_AFTER_SECONDS = 10


class StoreUnavailable(Unavailable):
    code = "storage_unavailable"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(RETRY_AFTER_SECONDS)})
        super().__init__(message, **kwargs)


class NotInStore(NotFound):
    code = "not_in_store"


@dataclass(frozen=True)
class Tree:
    key: str
    published_at: datetime
    size_bytes: int


class Store(Protocol):
    url: str

    def prepare(self) -> str:
        """Make the store ready to hold trees (its folder, or its bucket where missing); what
        was found or made, in words."""
        ...

    def workdir(self, key: str) -> Path:
        """A local directory in which this process builds the tree it will publish under `key`
        (for a local store, the stored tree itself: publishing it is then free)."""
        ...

    def publish(self, src: Path, key: str, *, keep: bool = False) -> int:
        """Make the complete directory `src` the tree under `key`; its size. `src` is consumed
        unless `keep`."""
        ...

    def local(self, key: str) -> Path:
        """A local directory holding the complete tree under `key` (NotInStore without one)."""
        ...

    def read_text(self, key: str, name: str) -> str:
        """One file of a complete tree, without fetching the rest."""
        ...

    def trees(self, prefix: str) -> list[Tree]:
        """The complete trees directly under `prefix`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the tree under `key` and everything below it (the manifest first)."""
        ...


def _safe_key(key: str) -> str:
    parts = [p for p in key.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"not a store key: {key!r}")
    return "/".join(parts)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


class LocalStore:
    """Trees as directories under one root (the data directory by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / _safe_key(key)).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"not a store key: {key!r}")
        return path

    def prepare(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        return f"store at {self.url}"

    def workdir(self, key: str) -> Path:
        return self._path(key)

    def publish(self, src: Path, key: str, *, keep: bool = False) -> int:
        final = self._path(key)
        size = sum(p.stat().st_size for p in _files(src))
        if src.resolve() == final:
            return size
        try:
            if not keep and os.stat(src).st_dev == os.stat(self.root).st_dev:
                atomic_move_dir(src, final)  # one rename
            else:  # a copy beside the key, then the rename
                staged = final.parent / f".tmp-{final.name}-{time.time_ns()}"
                final.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, staged)
                atomic_move_dir(staged, final)
                if not keep:
                    remove_tree(src)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write {key} to the store: {exc}", key=key) from exc
        return size

    def local(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_dir():
            raise NotInStore(f"{key} is not in the store", key=key)
        return path

    def read_text(self, key: str, name: str) -> str:
        try:
            return (self.local(key) / name).read_text()
        except OSError as exc:
            raise NotInStore(f"{key}/{name} is not in the store", key=key) from exc

    def trees(self, prefix: str) -> list[Tree]:
        root = self._path(prefix)
        found = []
        for path in sorted(root.iterdir()) if root.is_dir() else ():
            if path.is_dir() and not path.name.startswith("."):
                stamp = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
                size = sum(p.stat().st_size for p in _files(path))
                found.append(Tree(f"{_safe_key(prefix)}/{path.name}", stamp, size))
        return found

    def delete(self, key: str) -> None:
        remove_tree(self._path(key))


def _transient(exc: BaseException) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "")
        return status >= 500 or status == 429 or code in {"SlowDown", "RequestTimeout"}
    return isinstance(exc, BotoCoreError | OSError)


def _missing(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status == 404 or exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}


class S3Store:
    """Trees as objects under `s3://bucket/prefix/<key>/`, each with a manifest written last."""

    def __init__(self, url: str, *, cache: FileCache, work_root: Path, patience_s: float) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(url)
        if not parsed.netloc:
            raise ValueError(f"TUNESERVE_STORAGE_URL {url!r} names no bucket (s3://bucket/prefix)")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.cache = cache
        self.work_root = work_root
        self.patience_s = patience_s
        # Endpoint, keys and region come from the standard AWS_* variables (AWS_ENDPOINT_URL...).
        self.client: S3Client = boto3.client(
            "s3",
            config=Config(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES
        )
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key_of(self, name: str) -> str:
        """The store key of an object name (the inverse of `_object`)."""
        lead = f"{self.prefix}/" if self.prefix else ""
        return name[len(lead) :].strip("/")

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transient failures with backoff for the store's patience."""
        deadline = time.monotonic() + self.patience_s
        delay = 0.5
        while True:
            try:
                return call()
            except Exception as exc:
                if not _transient(exc):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StoreUnavailable(
                        f"the object store at {self.url} cannot {what}: {exc}", store=self.url
                    ) from exc
                log.warning("store: cannot %s (%s); retrying in %.1f s", what, exc, delay)
                time.sleep(min(delay, left))
                delay = min(delay * 2, 15.0) * (0.8 + 0.4 * random.random())

    def prepare(self) -> str:
        def head() -> bool:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return True
            except Exception as exc:
                if _missing(exc):
                    return False
                raise

        if self._retry("reach its bucket", head):
            return f"store at {self.url}: bucket {self.bucket} exists"
        region = self.client.meta.region_name
        where: dict[str, Any] = (
            {"CreateBucketConfiguration": {"LocationConstraint": region}}
            if region and region != "us-east-1"
            else {}
        )
        self._retry(
            "create its bucket", lambda: self.client.create_bucket(Bucket=self.bucket, **where)
        )
        return f"store at {self.url}: created bucket {self.bucket}"

    def workdir(self, key: str) -> Path:
        return self.work_root / _safe_key(key)

    def _manifest(self, key: str) -> dict[str, Any]:
        def get() -> bytes:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._object(f"{key}/{TREE_MANIFEST}")
            )["Body"]
            data: bytes = body.read()
            return data

        try:
            manifest: dict[str, Any] = json.loads(self._retry(f"read {key}", get))
        except Exception as exc:
            if _missing(exc):
                raise NotInStore(f"{key} is not in the store", key=key) from exc
            raise
        return manifest

    def publish(self, src: Path, key: str, *, keep: bool = False) -> int:
        key = _safe_key(key)
        files: dict[str, dict[str, Any]] = {
            p.relative_to(src).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in _files(src)
        }
        for name, info in files.items():
            path, target = src / name, self._object(f"{key}/{name}")

            def put(path: Path = path, target: str = target) -> None:
                self.client.upload_file(str(path), self.bucket, target, Config=self.transfer)

            self._retry(f"write {key}/{name}", put)

            def stored_size(target: str = target) -> int:
                return int(self.client.head_object(Bucket=self.bucket, Key=target)["ContentLength"])

            kept = self._retry(f"check {key}/{name}", stored_size)
            if kept != info["size"]:
                raise StoreUnavailable(
                    f"the store kept {kept} bytes of {key}/{name}, not {info['size']}",
                    store=self.url,
                )
        manifest = {"published_at": datetime.now(UTC).isoformat(), "files": files}
        body = json.dumps(manifest, sort_keys=True).encode()
        self._retry(
            f"write {key}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._object(f"{key}/{TREE_MANIFEST}"), Body=body
            ),
        )
        if not keep:
            remove_tree(src)
        return sum(int(f["size"]) for f in files.values())

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def local(self, key: str) -> Path:
        key = _safe_key(key)
        if (hit := self.cache.get(key)) is not None:
            return hit
        with self._lock(key):
            if (hit := self.cache.get(key)) is not None:
                return hit
            manifest = self._manifest(key)
            staged = self.cache.staging(key)
            try:
                for name, info in manifest["files"].items():
                    target = staged / _safe_key(name)
                    target.parent.mkdir(parents=True, exist_ok=True)

                    def get(name: str = name, target: Path = target) -> None:
                        self.client.download_file(
                            self.bucket, self._object(f"{key}/{name}"), str(target),
                            Config=self.transfer,
                        )  # fmt: skip

                    self._retry(f"read {key}/{name}", get)
                    if (
                        target.stat().st_size != info["size"]
                        or sha256_file(target) != info["sha256"]
                    ):
                        raise StoreUnavailable(
                            f"{key}/{name} in the store does not match its manifest "
                            "(size or sha256); it was changed or damaged there",
                            store=self.url,
                        )
                (staged / TREE_MANIFEST).write_text(json.dumps(manifest))
            except BaseException:
                remove_tree(staged)
                raise
            return self.cache.admit(key, staged)

    def read_text(self, key: str, name: str) -> str:
        key = _safe_key(key)
        if (hit := self.cache.get(key)) is not None:
            return (hit / name).read_text()

        def get() -> str:
            body = self.client.get_object(Bucket=self.bucket, Key=self._object(f"{key}/{name}"))
            text: str = body["Body"].read().decode()
            return text

        try:
            return self._retry(f"read {key}/{name}", get)
        except Exception as exc:
            if _missing(exc):
                raise NotInStore(f"{key}/{name} is not in the store", key=key) from exc
            raise

    def _list(self, prefix: str, *, delimiter: str = "") -> list[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._object(prefix) + "/", Delimiter=delimiter
        )
        return [dict(page) for page in pages]

    def trees(self, prefix: str) -> list[Tree]:
        prefix = _safe_key(prefix)
        pages = self._retry(f"list {prefix}", lambda: self._list(prefix, delimiter="/"))
        found = []
        for page in pages:
            for common in page.get("CommonPrefixes", []):
                key = self._key_of(common["Prefix"])
                try:
                    manifest = self._manifest(key)
                except NotInStore:
                    continue  # being written, or torn
                size = sum(int(f["size"]) for f in manifest["files"].values())
                stamp = datetime.fromisoformat(manifest["published_at"])
                found.append(Tree(key, stamp, size))
        return sorted(found, key=lambda t: t.key)

    def delete(self, key: str) -> None:
        key = _safe_key(key)
        # The manifest first: from then on the tree does not exist, whatever is left below.
        self._retry(
            f"delete {key}",
            lambda: self.client.delete_object(
                Bucket=self.bucket, Key=self._object(f"{key}/{TREE_MANIFEST}")
            ),
        )
        for page in self._retry(f"list {key}", lambda: self._list(key)):
            names = [str(o["Key"]) for o in page.get("Contents", [])]
            if names:

                def drop(names: list[str] = names) -> None:
                    self.client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": n} for n in names], "Quiet": True},
                    )

                self._retry(f"delete {key}", drop)
        remove_tree(self.cache.path(key))


_STORES: dict[tuple[str, str, float], Store] = {}
_STORES_LOCK = threading.Lock()


def get_store(settings: Settings, *, patience_s: float | None = None) -> Store:
    """The store `settings` name (one per process and configuration). `patience_s`: how long a
    transient failure is retried (the API answers 503 soon; a worker waits longer)."""
    patience = settings.storage_retry_seconds if patience_s is None else patience_s
    url = settings.storage_url or settings.data_dir.resolve().as_uri()
    cache_root = (settings.cache_dir or settings.data_dir / "cache").resolve()
    ident = (url, str(cache_root), patience)
    with _STORES_LOCK:
        if ident not in _STORES:
            _STORES[ident] = _make_store(settings, url, cache_root, patience)
        return _STORES[ident]


def _make_store(settings: Settings, url: str, cache_root: Path, patience: float) -> Store:
    scheme = urlparse(url).scheme
    if scheme == "file":
        return LocalStore(Path(urlparse(url).path))
    if scheme == "s3":
        cache = FileCache(cache_root, max_bytes=settings.cache_max_bytes, marker=TREE_MANIFEST)
        work = (settings.data_dir / "work").resolve()
        return S3Store(url, cache=cache, work_root=work, patience_s=patience)
    raise ValueError(f"TUNESERVE_STORAGE_URL {url!r}: use file:///path or s3://bucket/prefix")
