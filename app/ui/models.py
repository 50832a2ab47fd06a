"""/ui/models: registered models, one model's quality, lineage, aliases and a box to try it, and a
side-by-side comparison of models of one task."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import Response
from sqlalchemy import select

from app.auth.schemas import Scope
from app.core.deps import SessionDep
from app.core.errors import ServiceError
from app.db.models import Model
from app.ml.tasks import REGISTRY
from app.predict.router import predict_inputs
from app.registry import aliases, service
from app.registry.router import to_read
from app.ui import views
from app.ui.web import (
    UiRefused,
    UiRoute,
    UserDep,
    posted_form,
    redirect,
    render,
    require_scope,
    require_section,
)

router = APIRouter(prefix="/models", route_class=UiRoute)

# Models shown side by side at most.
COMPARE_MAX = 6


@router.get("", include_in_schema=False)
def models_page(
    request: Request,
    session: SessionDep,
    user: UserDep,
    task: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    require_section(user, "models")
    stmt = select(Model).where(Model.tenant_id == user.principal.tenant)
    if task:
        stmt = stmt.where(Model.task == task)
    rows = list(session.scalars(stmt.order_by(Model.created_at.desc(), Model.id.desc()).limit(200)))
    names = {m.id: aliases.aliases_of(session, m) for m in rows}
    models = [to_read(m, names[m.id]) for m in rows]
    return render(
        request,
        "models.html",
        {
            "models": models,
            "task": task or "",
            "tasks": sorted(REGISTRY),
            "primary": {name: spec.primary_metric for name, spec in REGISTRY.items()},
        },
    )


def model_context(session: Any, tenant: str, model_id: str) -> dict[str, Any]:
    row = service.get_model(session, tenant=tenant, model_id=model_id)
    model = to_read(row, aliases.aliases_of(session, row))
    task = REGISTRY[model.task]
    return {
        "model": model,
        "scalars": views.scalar_metrics(model.metrics),
        "baseline": views.scalar_metrics(model.baseline_metrics),
        "parent_metrics": views.scalar_metrics(model.parent_metrics),
        "breakdown": views.breakdown(model.metrics),
        "heatmap": views.heatmap(model.metrics, model.label_names),
        "primary": task.primary_metric,
        "input_fields": task.input_fields,
        "all_aliases": [a.name for a in aliases.list_aliases(session, tenant=tenant)],
    }


@router.get("/compare", include_in_schema=False)
def compare_page(
    request: Request,
    session: SessionDep,
    user: UserDep,
    ids: Annotated[list[str], Query(max_length=COMPARE_MAX)] = [],  # noqa: B006
) -> Response:
    require_section(user, "models")
    chosen = list(dict.fromkeys(i for i in ids if i))
    if len(chosen) < 2:
        raise UiRefused(422, "Pick two or more", "tick two or more models of one task to compare")
    rows = [service.get_model(session, tenant=user.principal.tenant, model_id=i) for i in chosen]
    tasks = sorted({r.task for r in rows})
    if len(tasks) > 1:
        raise UiRefused(
            422, "Different tasks", f"models of one task compare; these are {', '.join(tasks)}"
        )
    models = [to_read(r) for r in rows]
    scalars = [views.scalar_metrics(m.metrics) for m in models]
    names = list(dict.fromkeys(k for s in scalars for k in s))
    parts = [views.breakdown(m.metrics) for m in models]
    classes = list(dict.fromkeys(k for p in parts if p for k in p[1]))
    return render(
        request,
        "compare.html",
        {
            "models": models,
            "scalars": scalars,
            "names": names,
            "breakdowns": [p[1] if p else {} for p in parts],
            "classes": classes,
            "primary": REGISTRY[tasks[0]].primary_metric,
        },
    )


@router.get("/{model_id}", include_in_schema=False)
def model_page(model_id: str, request: Request, session: SessionDep, user: UserDep) -> Response:
    require_section(user, "models")
    ctx = model_context(session, user.principal.tenant, model_id)
    ctx["can_predict"] = user.principal.allows(Scope.PREDICT)
    ctx["can_alias"] = user.principal.allows(Scope.TRAIN)
    return render(request, "model.html", ctx)


@router.post("/{model_id}/predict", include_in_schema=False)
async def try_model(
    model_id: str, request: Request, session: SessionDep, user: UserDep
) -> Response:
    form = await posted_form(request, user)
    require_section(user, "models")
    require_scope(user, Scope.PREDICT, doing="call /predict")
    ctx = model_context(session, user.principal.tenant, model_id)
    session.close()
    fields: tuple[str, ...] = ctx["input_fields"]
    given: Any = (
        form.get(fields[0], "") if len(fields) == 1 else {f: form.get(f, "") for f in fields}
    )
    ctx |= {"given": form, "can_predict": True, "can_alias": user.principal.allows(Scope.TRAIN)}
    try:
        _, predictions = await predict_inputs(
            request.app.state, tenant=user.principal.tenant, model_id=model_id, inputs=[given]
        )
    except ServiceError as exc:
        if exc.status_code >= 500:
            raise
        ctx["predict_error"] = exc.message
        return render(request, "model.html", ctx, status=exc.status_code)
    # The answer as the API would send it (plain JSON values, not the task's response models).
    ctx["answer"] = views.answer_view(given, jsonable_encoder(predictions[0]), fields)
    return render(request, "model.html", ctx)


@router.post("/{model_id}/alias", include_in_schema=False)
async def move_alias(
    model_id: str, request: Request, session: SessionDep, user: UserDep
) -> Response:
    form = await posted_form(request, user)
    require_scope(user, Scope.TRAIN, doing="move aliases")
    name = form.get("name", "").strip()
    try:
        aliases.set_alias(
            session,
            tenant=user.principal.tenant,
            model_id=model_id,
            name=name,
            force=form.get("force") == "on",
        )
    except ServiceError as exc:
        if exc.status_code >= 500:
            raise
        raise UiRefused(exc.status_code, "Alias not moved", exc.message) from None
    request.app.state.model_refs.clear()  # /predict follows the move at once
    return redirect(f"/ui/models/{model_id}")
