"""/v1/datasets: upload, list, read and delete datasets."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from app.auth.deps import DataReader, DataWriter
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import InvalidInput
from app.core.idempotency import (
    REPLAYED_RESPONSE_HEADER,
    IdempotencyKey,
    canonical_hash,
    idempotent_request,
)
from app.core.pagination import MAX_LIMIT
from app.core.schemas import PROTECTED, ErrorResponse, Page
from app.core.validation import nearest
from app.dataset import service
from app.dataset.parsing import FORMATS
from app.dataset.schemas import DatasetCreate, DatasetFormat, DatasetRead
from app.dataset.upload import FILE_FIELD, ReceivedUpload, receive_upload
from app.ml.tasks import REGISTRY

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=PROTECTED)

FORM_FIELDS = ("task", "name", "format", "column_mapping", "header", "strict")

# The body is read as a stream (so size limits apply while it arrives), not through FastAPI's
# form parsing; this documents it for OpenAPI.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD, "task"],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": f"The data: {FORMATS}.",
                        },
                        "task": {"type": "string", "enum": sorted(REGISTRY)},
                        "name": {"type": "string", "maxLength": 200},
                        "format": {"type": "string", "enum": [f.value for f in DatasetFormat]},
                        "column_mapping": {
                            "type": "string",
                            "description": "A JSON object: source column -> canonical column, "
                            'e.g. {"sentence": "text", "category": "label"}. With header=false, '
                            "canonical column -> 0-based column index, e.g. "
                            '{"label": 0, "text": 2}.',
                        },
                        "header": {
                            "type": "boolean",
                            "default": True,
                            "description": "Whether the first line of a CSV or TSV file names "
                            "its columns; false: every line is data and columns are numbered "
                            "from 0.",
                        },
                        "strict": {
                            "type": "boolean",
                            "description": "Refuse rows that would be repaired instead of "
                            "repairing and counting them.",
                        },
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422)
}
CREATE_ROUTE = "POST /v1/datasets"


def upload_hash(upload: ReceivedUpload) -> str:
    """What identifies an upload for Idempotency-Key: the file's sha256, its name, the fields."""
    # The file name counts: it names the dataset when no `name` field is sent.
    return canonical_hash(
        {"file_sha256": upload.sha256, "filename": upload.filename, "fields": upload.fields}
    )


def dataset_create_from_form(fields: dict[str, str]) -> DatasetCreate:
    """Validate the upload's text fields; errors name the field."""
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        close = nearest(unknown[0], FORM_FIELDS)
        hint = f"did you mean '{close}'? " if close else ""
        raise InvalidInput(
            f"unknown form field '{unknown[0]}'; {hint}expected {FILE_FIELD}, "
            + ", ".join(FORM_FIELDS),
            field=unknown[0],
        )
    task = fields.get("task", "").strip()
    if not task:
        raise InvalidInput("field 'task' is required, e.g. 'classification'", field="task")
    fmt: DatasetFormat | None = None
    raw_format = fields.get("format", "").strip().lower()
    if raw_format:
        try:
            fmt = DatasetFormat(raw_format)
        except ValueError:
            raise InvalidInput(
                f"unknown format '{raw_format}'; expected one of: {FORMATS}",
                code="unknown_format",
                field="format",
            ) from None
    name = fields.get("name")
    if name is not None and len(name) > 200:
        raise InvalidInput("field 'name' is longer than 200 characters", field="name")
    header = _parse_bool(fields.get("header", ""), field="header", default=True)
    return DatasetCreate(
        task=task,
        name=name,
        format=fmt,
        column_mapping=_parse_mapping(fields.get("column_mapping", ""), header=header),
        header=header,
        strict=_parse_bool(fields.get("strict", ""), field="strict"),
    )


def _parse_bool(raw: str, *, field: str, default: bool = False) -> bool:
    value = raw.strip().lower()
    if not value:
        return default
    if value in ("0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise InvalidInput(f"field '{field}' must be true or false, not '{raw[:40]}'", field=field)


def _parse_mapping(raw: str, *, header: bool) -> dict[str, str]:
    """Source column -> canonical column; positions given as canonical -> index are turned round."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"column_mapping is not valid JSON ({exc.msg} at column {exc.colno}); "
            'expected an object like {"sentence": "text"}',
            field="column_mapping",
        ) from None
    if isinstance(value, dict) and value and all(_is_index(v) for v in value.values()):
        return _positions(value, header=header)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    ):
        raise InvalidInput(
            'column_mapping must be a JSON object of non-empty strings, like {"sentence": "text"}'
            ', or with header=false of column indexes, like {"text": 2}',
            field="column_mapping",
        )
    return value


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positions(value: dict[str, int], *, header: bool) -> dict[str, str]:
    # {"label": 0, "text": 2} names each canonical column's position; a headerless file's
    # columns are named by position ("0", "1", ...), so it reads as {"0": "label", "2": "text"}.
    if header:
        raise InvalidInput(
            "column_mapping gives column indexes, which name columns of a file without a header "
            "line: send header=false, or map the names in the header, like "
            '{"sentence": "text"}',
            field="column_mapping",
        )
    mapping: dict[str, str] = {}
    for target, index in value.items():
        if index < 0:
            raise InvalidInput(
                f"column_mapping: the index of '{target}' is {index}; column indexes start at 0",
                field="column_mapping",
            )
        if str(index) in mapping:
            raise InvalidInput(
                f"column_mapping maps both '{mapping[str(index)]}' and '{target}' to column "
                f"{index}",
                field="column_mapping",
            )
        mapping[str(index)] = target
    return mapping


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    openapi_extra=_UPLOAD_BODY,
    responses={
        **_ERRORS,
        201: {"description": "The dataset, validated.", "headers": REPLAYED_RESPONSE_HEADER},
    },
)
async def create_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: DataWriter,
    idempotency_key: IdempotencyKey = None,
) -> DatasetRead:
    """Upload a csv, tsv, jsonl, json or parquet file and validate it for a task."""
    upload = await receive_upload(request, settings=settings)
    try:
        idempotency = idempotent_request(
            idempotency_key,
            tenant=principal.tenant,
            route=CREATE_ROUTE,
            request_hash=upload_hash(upload),
        )
        spec = dataset_create_from_form(upload.fields)
        # Parsing and validation are CPU-bound: keep them off the event loop.
        row = await run_in_threadpool(
            service.create_dataset,
            session,
            settings=settings,
            tenant=principal.tenant,
            spec=spec,
            upload=upload,
            idempotency=idempotency,
        )
    finally:
        upload.discard()
    return DatasetRead.from_row(row)


@router.get("", response_model=Page[DatasetRead])
def list_datasets(
    session: SessionDep,
    principal: DataReader,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 20,
    after: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> Page[DatasetRead]:
    """List datasets, newest first."""
    rows, cursor = service.list_datasets(session, tenant=principal.tenant, limit=limit, after=after)
    return Page[DatasetRead](data=[DatasetRead.from_row(r) for r in rows], next_cursor=cursor)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=_ERRORS)
def get_dataset(dataset_id: str, session: SessionDep, principal: DataReader) -> DatasetRead:
    """A dataset's columns, labels and counts."""
    row = service.get_dataset(session, tenant=principal.tenant, dataset_id=dataset_id)
    return DatasetRead.from_row(row)


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_dataset(
    dataset_id: str, session: SessionDep, settings: SettingsDep, principal: DataWriter
) -> Response:
    """Delete a dataset and its files; refused while a job references it."""
    service.delete_dataset(
        session, settings=settings, tenant=principal.tenant, dataset_id=dataset_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
