"""The object store against a real S3-compatible server (moto's server mode) and a local folder."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core import filecache
from app.core.config import Settings
from app.core.filecache import FileCache
from app.core.store import (
    TREE_MANIFEST,
    LocalStore,
    NotInStore,
    S3Store,
    StoreUnavailable,
    get_store,
)
from app.job.checkpoints import MANIFEST, fetch_newest, publish, stored_checkpoints, write_manifest
from tests.s3server import S3Server, s3_server


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


def s3_store(server: S3Server, tmp: Path, *, patience: float = 5.0, cache_bytes: int = 10**9):
    cache = FileCache(tmp / "cache", max_bytes=cache_bytes, marker=TREE_MANIFEST)
    prefix = f"t{time.time_ns()}"
    return S3Store(server.url(prefix), cache=cache, work_root=tmp / "work", patience_s=patience)


def a_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_a_tree_round_trips_through_s3_multipart_included(s3: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3, tmp_path)
    big = os.urandom(17 * 1024 * 1024)  # past the multipart threshold: uploaded in parts
    src = a_tree(tmp_path / "src", {"a.txt": b"alpha", "sub/b.bin": big})
    size = store.publish(src, "models/mdl_1")
    assert size == 5 + len(big) and not src.exists()  # consumed
    local = store.local("models/mdl_1")
    assert (local / "a.txt").read_bytes() == b"alpha"
    assert (local / "sub/b.bin").read_bytes() == big
    assert local.is_relative_to(tmp_path / "cache")  # fetched into this process's cache
    assert store.read_text("models/mdl_1", "a.txt") == "alpha"
    [tree] = store.trees("models")
    assert tree.key == "models/mdl_1" and tree.size_bytes == size
    store.delete("models/mdl_1")
    assert store.trees("models") == []
    with pytest.raises(NotInStore):
        store.local("models/mdl_1")


def test_a_tree_without_its_manifest_does_not_exist(s3: S3Server, tmp_path: Path) -> None:
    """Files uploaded by a writer that died before the manifest: invisible, never half-read."""
    store = s3_store(s3, tmp_path)
    store.client.put_object(Bucket=store.bucket, Key=store._object("models/torn/a.txt"), Body=b"x")
    assert store.trees("models") == []
    with pytest.raises(NotInStore):
        store.local("models/torn")


def test_a_fetch_checks_every_file_against_the_manifest(s3: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3, tmp_path)
    store.publish(a_tree(tmp_path / "src", {"w.bin": b"1234"}), "models/m")
    # Changed in the store behind our back, same size.
    store.client.put_object(Bucket=store.bucket, Key=store._object("models/m/w.bin"), Body=b"4321")
    with pytest.raises(StoreUnavailable, match="does not match its manifest"):
        store.local("models/m")
    assert not (tmp_path / "cache" / "models" / "m").exists()  # nothing damaged was kept


def test_the_cache_keeps_to_its_limit_least_recently_used_first(
    s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filecache, "IN_USE_SECONDS", 0.0)
    store = s3_store(s3, tmp_path, cache_bytes=2500)
    for name in ("a", "b", "c"):
        store.publish(a_tree(tmp_path / name, {"f": b"x" * 1000}), f"datasets/{name}")
    store.local("datasets/a")
    time.sleep(0.05)
    store.local("datasets/b")
    time.sleep(0.05)
    store.local("datasets/a")  # used again: now b is the least recently used
    time.sleep(0.05)
    store.local("datasets/c")
    cached = sorted(p.name for p in (tmp_path / "cache" / "datasets").iterdir())
    assert cached == ["a", "c"]
    assert (store.local("datasets/b") / "f").read_bytes() == b"x" * 1000  # fetched again


def test_an_outage_is_retried_for_the_patience_then_is_unavailable(tmp_path: Path) -> None:
    down = S3Server(port=1, log=tmp_path / "none.log")  # nothing listens there
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    cache = FileCache(tmp_path / "cache", max_bytes=10**6, marker=TREE_MANIFEST)
    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = down.endpoint
    try:
        store = S3Store("s3://b/p", cache=cache, work_root=tmp_path / "w", patience_s=1.0)
        src = a_tree(tmp_path / "src", {"f": b"data"})
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            store.publish(src, "datasets/d")
        assert time.monotonic() - t0 >= 1.0  # retried, not given up at once
        assert caught.value.status_code == 503
        assert caught.value.headers and "Retry-After" in caught.value.headers
        assert src.exists()  # kept for the caller to clean up or retry
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved


def _checkpoint(root: Path, step: int) -> Path:
    path = a_tree(root / f"checkpoint-{step}", {"model.safetensors": b"w" * step})
    write_manifest(path, step=step, epoch=step / 10, metrics={"eval_loss": 1.0 / step})
    return path


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_checkpoints_are_listed_mirrored_and_fetched_elsewhere(
    kind: str, s3: S3Server, tmp_path: Path
) -> None:
    store = LocalStore(tmp_path / "store") if kind == "local" else s3_store(s3, tmp_path)
    work = store.workdir("jobs/j1/checkpoints")
    for step in (10, 20, 30):
        _checkpoint(work, step)
        if step == 30:  # the Trainer rotates the oldest out of its working directory
            for gone in work.glob("checkpoint-10"):
                for f in sorted(gone.rglob("*"), reverse=True):
                    f.unlink() if f.is_file() else f.rmdir()
                gone.rmdir()
        publish(store, "j1", work / f"checkpoint-{step}")
    listed = stored_checkpoints(store, "j1")
    assert [c.manifest["step"] for c in listed] == [20, 30]
    # A torn one (no manifest) beside them is not listed.
    a_tree(work / "checkpoint-40", {"model.safetensors": b"half"})
    if kind == "s3":
        store.client.put_object(
            Bucket=store.bucket,
            Key=store._object("jobs/j1/checkpoints/checkpoint-40/model.safetensors"),
            Body=b"half",
        )
    assert [c.manifest["step"] for c in stored_checkpoints(store, "j1")] == [20, 30]
    # Another machine, an empty working directory: the newest comes to it.
    elsewhere = tmp_path / "other-machine" / "checkpoints"
    fetch_newest(store, "j1", elsewhere)
    fetched = elsewhere / "checkpoint-30"
    assert (fetched / "model.safetensors").read_bytes() == b"w" * 30
    assert json.loads((fetched / MANIFEST).read_text())["step"] == 30
    assert sorted(p.name for p in elsewhere.iterdir()) == ["checkpoint-30"]


def test_local_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    for key in ("../x", "models/../../x", "/", ""):
        with pytest.raises(ValueError):
            store.local(key)


def test_the_default_store_is_the_data_directory(tmp_path: Path) -> None:
    store = get_store(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStore) and store.root == tmp_path.resolve()
    with pytest.raises(NotInStore):
        store.local("models/none")


@pytest.mark.slow  # the real CLI, twice
def test_migrate_makes_the_bucket_the_storage_url_names(s3: S3Server, tmp_path: Path) -> None:
    from tests.test_cli import _cli

    url = f"s3://fresh-{time.time_ns()}/prod"
    env = s3.env | {"TUNESERVE_STORAGE_URL": url}
    first = _cli(tmp_path, "migrate", "--data-dir", str(tmp_path / "data"), **env)
    assert first.returncode == 0, first.stderr
    assert f"created bucket {url[5:].split('/')[0]}" in first.stdout
    again = _cli(tmp_path, "migrate", "--data-dir", str(tmp_path / "data"), **env)
    assert again.returncode == 0 and "exists" in again.stdout, again.stdout + again.stderr
    # Usable at once: a tree round trips through the new bucket.
    cache = FileCache(tmp_path / "cache", max_bytes=10**9, marker=TREE_MANIFEST)
    store = S3Store(url, cache=cache, work_root=tmp_path / "work", patience_s=5)
    store.publish(a_tree(tmp_path / "src", {"x": b"1"}), "datasets/ds_1")
    assert [t.key for t in store.trees("datasets")] == ["datasets/ds_1"]


@pytest.mark.slow
def test_migrate_fails_plainly_when_the_store_stays_down(tmp_path: Path) -> None:
    from tests.test_cli import _cli

    env = {
        "TUNESERVE_STORAGE_URL": "s3://nowhere/prod",
        "TUNESERVE_STORAGE_RETRY_SECONDS": "1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing listens
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "AWS_REGION": "us-east-1",
    }
    done = _cli(tmp_path, "migrate", "--data-dir", str(tmp_path / "data"), **env)
    assert done.returncode != 0
    assert "cannot reach its bucket" in done.stderr and "Traceback" not in done.stderr, done.stderr
