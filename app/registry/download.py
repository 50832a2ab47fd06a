"""GET /v1/models/{id}/download: a registered model's files as a tar.gz that transformers, peft or
ONNX Runtime load without Tuneserve.

Member names come from the stored tree only, under one folder named after the model id; only
regular files go in (no links, whatever the tree holds). The archive is spooled (in memory up to
SPOOL_MEMORY_BYTES, then an unlinked temporary file) before the answer starts, so a missing file
is a typed error rather than a cut stream, and the store's cache may evict the tree meanwhile.

What an artifact needs beyond its stored files is one entry of REFUSED or REWRITTEN, keyed by
`Model.artifact`; any other artifact (full, merged, an ONNX export) is archived as stored, but for
a classifier over the mean of its token vectors, which gets a README.md on loading it
(app/registry/pooled_card.py).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import Conflict, InsufficientStorage, Unavailable
from app.core.store import TREE_MANIFEST, NotInStore, get_store
from app.db.models import Model
from app.ml.loading import read_model_metadata
from app.ml.quantize import INT8_DYNAMIC
from app.registry.adapter_card import adapter_files
from app.registry.pooled_card import pooled_files
from app.registry.service import get_model

NOT_DOWNLOADABLE = "not_downloadable"
# Kept in memory below this; larger archives go to an unlinked file under <data_dir>/tmp.
SPOOL_MEMORY_BYTES = 1024 * 1024
CHUNK_BYTES = 1024 * 1024
# safetensors weights hardly compress: level 1 is several times faster than 9 for a few % more.
COMPRESS_LEVEL = 1


@dataclass
class Archive:
    """A spooled tar.gz, read from the start by `chunks` (which closes it)."""

    file: IO[bytes]
    size: int
    filename: str

    def chunks(self) -> Iterator[bytes]:
        try:
            self.file.seek(0)
            while chunk := self.file.read(CHUNK_BYTES):
                yield chunk
        finally:
            self.file.close()


def _int8_refusal(model: Model) -> Conflict:
    parent = model.parent_model_id or "?"
    return Conflict(
        f"model '{model.id}' is an int8_dynamic quantization of model '{parent}' and holds no "
        f"weights of its own (serving quantizes '{parent}' again at every load): download "
        f"'{parent}' instead (GET /v1/models/{parent}/download); the int8 form that can be "
        f"downloaded is an ONNX int8 export (a job with base_model 'model:{parent}' and method "
        '{"type": "export", "quantization": "int8"}, artifact onnx_int8)',
        code=NOT_DOWNLOADABLE,
        model=model.id,
        parent_model=model.parent_model_id,
    )


# Artifacts that cannot be downloaded, and the refusal that says what to download instead.
REFUSED: dict[str, Callable[[Model], Conflict]] = {INT8_DYNAMIC: _int8_refusal}
# Artifacts whose archive replaces or adds files: name in the tree -> bytes.
REWRITTEN: dict[str, Callable[[Session, Model, Path, dict[str, Any]], dict[str, bytes]]] = {
    "adapter": adapter_files,
}


def _stored_files(root: Path) -> list[tuple[str, Path]]:
    """(posix path relative to root, path) of every regular file of the tree, sorted; links and
    the store's own manifest are left out."""
    found: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root):  # does not enter linked folders
        here = Path(folder)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in names:
            path = here / name
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            relative = path.relative_to(root).as_posix()
            if relative != TREE_MANIFEST:
                found.append((relative, path))
    return sorted(found)


def _info(name: str, *, size: int, mtime: int, folder: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 0 if folder else size
    info.mtime = mtime
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.mode = 0o755 if folder else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(
    out: IO[bytes], *, top: str, files: list[tuple[str, Path]], extra: dict[str, bytes], mtime: int
) -> None:
    """`files` and `extra` (which replace stored files of the same name) as `top/<name>`; the
    same inputs give the same bytes (the gzip header's time is `mtime` too)."""
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=out, compresslevel=COMPRESS_LEVEL, mtime=mtime
        ) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_info(top, size=0, mtime=mtime, folder=True))
        for name, path in files:
            if name in extra:
                continue
            with path.open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                tar.addfile(_info(f"{top}/{name}", size=size, mtime=mtime), handle)
        for name, data in sorted(extra.items()):
            tar.addfile(_info(f"{top}/{name}", size=len(data), mtime=mtime), io.BytesIO(data))


def _spool(settings: Settings, incoming: int) -> IO[bytes]:
    staging = settings.data_dir / "tmp"
    staging.mkdir(parents=True, exist_ok=True)
    reserve = settings.min_free_disk_bytes
    if incoming > SPOOL_MEMORY_BYTES and shutil.disk_usage(staging).free - incoming < reserve:
        raise InsufficientStorage(
            f"not enough free disk space to pack this model ({incoming} bytes): the server keeps "
            f"{reserve} bytes free; try again later",
            reserve=reserve,
            incoming=incoming,
        )
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=str(staging))


def archive_model(session: Session, *, settings: Settings, tenant: str, model_id: str) -> Archive:
    """The tenant's model as a spooled tar.gz under one folder named after it (NotFound for a
    missing or another tenant's model, Conflict for one that holds no weights)."""
    model = get_model(session, tenant=tenant, model_id=model_id)
    if (refusal := REFUSED.get(model.artifact)) is not None:
        raise refusal(model)
    try:
        root = get_store(settings).local(model.storage_path)
        meta = read_model_metadata(root)
        files = _stored_files(root)
        rewrite = REWRITTEN.get(model.artifact)
        extra = rewrite(session, model, root, meta) if rewrite is not None else {}
        extra = pooled_files(model, root, meta) | extra
    except (OSError, ValueError, NotInStore) as exc:
        raise Unavailable(
            f"model '{model.id}' has no readable files on this server", model=model.id
        ) from exc
    # Ids are ours ("mdl_" and hex); the file name keeps to safe characters whatever they become.
    top = re.sub(r"[^A-Za-z0-9._-]", "_", model.id)
    spool = _spool(settings, sum(path.stat().st_size for _, path in files))
    try:
        write_tar(spool, top=top, files=files, extra=extra, mtime=int(model.created_at.timestamp()))
        size = spool.tell()
    except OSError as exc:
        spool.close()
        raise Unavailable(
            f"model '{model.id}' could not be packed: {exc.strerror or exc}", model=model.id
        ) from exc
    except BaseException:
        spool.close()
        raise
    return Archive(spool, size, f"{top}.tar.gz")
