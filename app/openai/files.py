"""OpenAI files: an upload kept byte for byte in the store, parsed into a dataset of a task when a
job first trains on it for that task (the job knows its task; the upload does not)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import BadRequest, InvalidInput, NotFound
from app.core.idempotency import IdempotentRequest
from app.core.store import NotInStore, get_store
from app.dataset import service as datasets
from app.dataset.schemas import DatasetCreate
from app.dataset.upload import FILE_FIELD, ReceivedUpload, staging_dir
from app.db.models import Dataset, OpenAIFile, new_id
from app.db.session import get_by_id
from app.openai.schemas import FileObject

SOURCE = "source"
PURPOSE = "fine-tune"
# Form fields besides the file: OpenAI's `purpose`, and `expires_after[...]`, which is accepted
# and ignored (a file is kept until it is deleted).
EXPIRES_AFTER = "expires_after["


def file_object(row: OpenAIFile) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.size_bytes,
        created_at=int(row.created_at.timestamp()),
        filename=row.filename,
        purpose=row.purpose,
    )


def check_fields(fields: dict[str, str]) -> None:
    """`purpose` must be fine-tune; no other field but expires_after[...] is known."""
    for name in fields:
        if name != "purpose" and not name.startswith(EXPIRES_AFTER):
            raise InvalidInput(
                f"unknown form field '{name[:64]}'; expected '{FILE_FIELD}' and 'purpose'",
                field=name[:64],
            )
    purpose = fields.get("purpose", "").strip()
    if purpose != PURPOSE:
        got = f"'{purpose[:40]}'" if purpose else "missing"
        raise InvalidInput(
            f"purpose: {got}; this server keeps files for fine-tuning only: send "
            f"purpose='{PURPOSE}'",
            field="purpose",
        )


def create_file(
    session: Session,
    *,
    settings: Settings,
    tenant: str,
    upload: ReceivedUpload,
    idempotency: IdempotentRequest | None,
) -> OpenAIFile:
    """Keep the upload's bytes in the store and commit its row."""
    if idempotency is not None:
        idempotency.replay_if_seen(session)
    check_fields(upload.fields)
    if upload.size_bytes == 0:
        raise InvalidInput("the uploaded file is empty", code="empty_file", field=FILE_FIELD)
    file_id = new_id("file")
    key = f"files/{file_id}"
    store = get_store(settings, patience_s=settings.upload_storage_retry_seconds)
    staging = Path(tempfile.mkdtemp(dir=staging_dir(settings), prefix=f"{file_id}-"))
    try:
        os.replace(upload.path, staging / SOURCE)
        store.publish(staging, key)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    row = OpenAIFile(
        id=file_id,
        tenant_id=tenant,
        filename=datasets.display_name(None, upload.filename),
        purpose=PURPOSE,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        storage_path=key,
        datasets={},
    )
    try:
        session.add(row)
        if idempotency is not None:
            session.flush()
            idempotency.remember(session, status_code=200, body=file_object(row))
        session.commit()
    except BaseException as exc:
        session.rollback()
        store.delete(key)
        if idempotency is not None and isinstance(exc, IntegrityError):
            idempotency.replay_if_seen(session)
        raise
    return row


def get_file(session: Session, *, tenant: str, file_id: str, field: str = "file_id") -> OpenAIFile:
    """The tenant's file, or NotFound naming it (also for another tenant's)."""
    row = get_by_id(session, OpenAIFile, file_id)
    if row is None or row.tenant_id != tenant:
        raise NotFound(f"no such file: '{file_id[:64]}'", field=field)
    return row


def list_files(
    session: Session,
    *,
    tenant: str,
    limit: int,
    after: str | None,
    ascending: bool,
    purpose: str | None,
) -> tuple[list[OpenAIFile], bool]:
    """One page of the tenant's files (newest first unless `ascending`), and whether more follow."""
    if purpose is not None and purpose != PURPOSE:
        return [], False  # only fine-tune files are kept
    stmt: Select[Any] = select(OpenAIFile).where(OpenAIFile.tenant_id == tenant)
    if after is not None:
        mark = get_by_id(session, OpenAIFile, after)
        if mark is None or mark.tenant_id != tenant:
            raise BadRequest(f"after: no such file: '{after[:64]}'", field="after")
        stmt = _after(stmt, mark, ascending=ascending)
    order = (OpenAIFile.created_at, OpenAIFile.id)
    stmt = stmt.order_by(*(c.asc() if ascending else c.desc() for c in order))
    rows = list(session.scalars(stmt.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def _after(stmt: Select[Any], mark: OpenAIFile, *, ascending: bool) -> Select[Any]:
    if ascending:
        return stmt.where(
            or_(
                OpenAIFile.created_at > mark.created_at,
                and_(OpenAIFile.created_at == mark.created_at, OpenAIFile.id > mark.id),
            )
        )
    return stmt.where(
        or_(
            OpenAIFile.created_at < mark.created_at,
            and_(OpenAIFile.created_at == mark.created_at, OpenAIFile.id < mark.id),
        )
    )


def content_path(settings: Settings, row: OpenAIFile) -> Path:
    """The file's bytes on this machine (fetched from the store when it is remote)."""
    try:
        return get_store(settings).local(row.storage_path) / SOURCE
    except NotInStore:
        raise NotFound(f"the bytes of file '{row.id}' are missing", field="file_id") from None


def delete_file(session: Session, *, settings: Settings, tenant: str, file_id: str) -> None:
    """Delete the file's row and bytes; datasets parsed from it stay (jobs trained on them)."""
    row = get_file(session, tenant=tenant, file_id=file_id)
    session.delete(row)
    session.commit()
    get_store(settings).delete(row.storage_path)


def dataset_for_file(
    session: Session, *, settings: Settings, tenant: str, file_id: str, task: str, field: str
) -> Dataset:
    """The dataset of `task` parsed from the tenant's file: made the first time, then reused.

    A Tuneserve dataset id is accepted as it is. A file that does not parse for the task is a
    400 naming `field` and, in the message, the line and field at fault."""
    if file_id.startswith("ds_"):
        found = get_by_id(session, Dataset, file_id)
        if found is None or found.tenant_id != tenant:
            raise BadRequest(f"{field}: no such file or dataset: '{file_id}'", field=field)
        return found
    try:
        row = get_file(session, tenant=tenant, file_id=file_id, field=field)
    except NotFound as exc:
        raise BadRequest(exc.message, field=field) from None
    made = (row.datasets or {}).get(task)
    if made is not None:
        found = get_by_id(session, Dataset, made)
        if found is not None:
            return found
    dataset = _parse(session, settings=settings, tenant=tenant, row=row, task=task, field=field)
    row.datasets = {**(row.datasets or {}), task: dataset.id}
    session.commit()
    return dataset


def _parse(
    session: Session, *, settings: Settings, tenant: str, row: OpenAIFile, task: str, field: str
) -> Dataset:
    source = content_path(settings, row)
    fd, name = tempfile.mkstemp(dir=staging_dir(settings), prefix="file-", suffix=".part")
    os.close(fd)
    copy = Path(name)
    upload = ReceivedUpload(
        path=copy, filename=row.filename, size_bytes=row.size_bytes, sha256=row.sha256
    )
    try:
        shutil.copyfile(source, copy)
        return datasets.create_dataset(
            session,
            settings=settings,
            tenant=tenant,
            spec=DatasetCreate(task=task, name=row.filename),
            upload=upload,
        )
    except InvalidInput as exc:
        # The file's own fault: a 400 naming the request field, the line and the row's field.
        raise BadRequest(
            f"{field} '{row.id}' is not a valid '{task}' file: {exc.message}",
            code=exc.code,
            field=field,
            **{k: v for k, v in exc.details.items() if k != "field"},
        ) from None
    finally:
        upload.discard()
