"""/ui/datasets: uploaded datasets, one dataset's rows, labels and repairs, an upload form, and a
form that submits a job from a dataset with the task's defaults filled in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.auth.schemas import Scope
from app.basemodel.service import list_base_models
from app.core.deps import SessionDep, SettingsDep
from app.core.errors import ServiceError
from app.dataset import service
from app.dataset.router import FORM_FIELDS, dataset_create_from_form
from app.dataset.schemas import DatasetRead
from app.dataset.upload import receive_upload
from app.db.models import Dataset
from app.job.schemas import Hyperparameters
from app.ml.methods import METHODS
from app.ml.tasks import REGISTRY
from app.ui import views
from app.ui.web import (
    UiRefused,
    UiRoute,
    UserDep,
    check_csrf,
    redirect,
    render,
    require_scope,
    require_section,
)

router = APIRouter(prefix="/datasets", route_class=UiRoute)

# Rows shown on a dataset's page.
PREVIEW_ROWS = 50
# Characters of one cell shown in the preview.
CELL_CHARS = 300


@router.get("", include_in_schema=False)
def datasets_page(request: Request, session: SessionDep, user: UserDep) -> Response:
    require_section(user, "datasets")
    rows = session.scalars(
        select(Dataset)
        .where(Dataset.tenant_id == user.principal.tenant)
        .order_by(Dataset.created_at.desc(), Dataset.id.desc())
        .limit(200)
    )
    return render(
        request,
        "datasets.html",
        {
            "datasets": [DatasetRead.from_row(d) for d in rows],
            "tasks": sorted(REGISTRY),
            "can_upload": user.principal.allows(Scope.DATA_WRITE),
        },
    )


def preview(settings: Any, row: Dataset) -> tuple[list[str], list[list[str]]]:
    """The first rows as text cells (a token list joined by spaces), each cut to CELL_CHARS."""
    data = service.load_rows(settings, row)
    head = data.select(range(min(PREVIEW_ROWS, data.num_rows)))
    columns = list(head.column_names)
    cells = []
    for item in head:
        line = []
        for name in columns:
            value = item[name]
            text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
            line.append(text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…")
        cells.append(line)
    return columns, cells


def _by_type_alone(options: type[BaseModel], method: str) -> bool:
    """Whether a method's options are complete with their type alone, as the form sends them
    (distill needs a student: it is submitted through the API)."""
    try:
        options.model_validate({"type": method})
    except ValidationError:
        return False
    return True


def job_defaults(task_name: str, rows: int) -> dict[str, dict[str, Any]]:
    """Per method, the hyperparameters a job gets when it leaves them out (the form's values)."""
    task = REGISTRY[task_name]
    base = Hyperparameters().model_dump()
    result = {}
    for method, spec in METHODS.items():
        if method in task.unsupported_methods or not _by_type_alone(spec.options_model, method):
            continue
        merged = {
            **base,
            "learning_rate": spec.default_learning_rate,
            **task.default_hyperparameters(spec.defaults_name(), train_rows=rows),
        }
        result[method] = {
            k: merged.get(k) for k in ("epochs", "learning_rate", "batch_size", "max_length")
        }
    return result


@router.get("/{dataset_id}", include_in_schema=False)
def dataset_page(
    dataset_id: str, request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> Response:
    require_section(user, "datasets")
    row = service.get_dataset(session, tenant=user.principal.tenant, dataset_id=dataset_id)
    columns, cells = preview(settings, row)
    others = session.scalars(
        select(Dataset)
        .where(Dataset.tenant_id == user.principal.tenant, Dataset.task == row.task)
        .where(Dataset.id != row.id)
        .order_by(Dataset.created_at.desc())
        .limit(100)
    )
    defaults = job_defaults(row.task, row.num_rows)
    return render(
        request,
        "dataset.html",
        {
            "dataset": DatasetRead.from_row(row),
            "columns": columns,
            "cells": cells,
            "bars": views.bars(row.label_counts),
            "stats": row.stats or {},
            "validation_choices": [DatasetRead.from_row(d) for d in others],
            "base_models": [b.id for b in list_base_models(settings)],
            "defaults": defaults,
            "methods": list(defaults),
            "can_train": user.principal.allows(Scope.TRAIN),
        },
    )


@router.post("", include_in_schema=False)
async def upload(
    request: Request, session: SessionDep, settings: SettingsDep, user: UserDep
) -> Response:
    """The upload form: the same streaming upload, limits and validation as POST /v1/datasets."""
    received = await receive_upload(request, settings=settings)
    try:
        check_csrf(user, received.fields)
        require_scope(user, Scope.DATA_WRITE, doing="upload datasets")
        fields = {k: v for k, v in received.fields.items() if k in FORM_FIELDS and v != ""}
        try:
            spec = dataset_create_from_form(fields)
            row = await run_in_threadpool(
                service.create_dataset,
                session,
                settings=settings,
                tenant=user.principal.tenant,
                spec=spec,
                upload=received,
                idempotency=None,
            )
        except ServiceError as exc:
            if exc.status_code >= 500:
                raise
            raise UiRefused(exc.status_code, "Upload refused", exc.message) from None
    finally:
        received.discard()
    return redirect(f"/ui/datasets/{row.id}")
