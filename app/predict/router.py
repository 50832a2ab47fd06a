"""/v1/predict/{task}: one route per task in the registry, each with that task's request schema."""

# No `from __future__ import annotations` here: the route signatures are built per task at runtime.

import threading
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.auth.deps import Predictor
from app.core.config import Settings
from app.core.deps import SessionDep
from app.core.errors import InvalidInput, ServiceError
from app.core.schemas import PROTECTED, error_responses
from app.ml.tasks import REGISTRY, TaskSpec
from app.monitoring.metrics import Metrics
from app.registry.service import get_model_for_task


class PredictResponse(BaseModel):
    model: str = Field(description="The model that answered (the one an alias pointed at).")
    predictions: list[Any]


def _text_chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, BaseModel):
        return sum(_text_chars(v) for v in value.__dict__.values())
    if isinstance(value, list | tuple):
        return sum(_text_chars(v) for v in value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    return 0


def check_limits(settings: Settings, inputs: list[Any]) -> None:
    """Refuse input lists and texts over the configured limits, naming the input at fault."""
    if len(inputs) > settings.max_predict_inputs:
        raise InvalidInput(
            f"inputs has {len(inputs)} items; at most {settings.max_predict_inputs} per request",
            field="inputs",
        )
    for i, item in enumerate(inputs):
        chars = _text_chars(item)
        if chars > settings.max_predict_text_chars:
            raise InvalidInput(
                f"inputs[{i}] has {chars} characters; at most {settings.max_predict_text_chars}",
                field=f"inputs[{i}]",
            )


def _state(request: Request) -> tuple[Settings, Any, threading.Lock]:
    state = request.app.state
    if not hasattr(state, "inference_lock"):
        # One model call at a time per process: concurrent calls on 2 cores only thrash.
        state.inference_lock = threading.Lock()
    return state.settings, state.predictors, state.inference_lock


def _make_route(task: TaskSpec) -> Any:
    request_model = task.predict_request

    def predict(
        body: request_model,  # type: ignore[valid-type]
        request: Request,
        session: SessionDep,
        principal: Predictor,
    ) -> PredictResponse:
        settings, cache, lock = _state(request)
        inputs = body.inputs  # type: ignore[attr-defined]
        check_limits(settings, inputs)
        model_row = get_model_for_task(
            session,
            tenant=principal.tenant,
            model_id=body.model,  # type: ignore[attr-defined]
            task=task.name,
        )
        session.close()  # release the connection before the slow part

        from app.predict.predictor import load_predictor

        metrics: Metrics = request.app.state.metrics
        started = time.perf_counter()
        outcome = "error"
        try:
            shared = request.app.state.shared_bases
            predictor = cache.get_or_load(
                model_row.id, lambda: load_predictor(settings, model_row, shared=shared)
            )
            batcher = request.app.state.batcher
            if batcher is not None:
                predictions = predictor.predict(body, batcher=batcher)
            else:
                with lock:
                    predictions = predictor.predict(body)
            outcome = "ok"
        except ServiceError as exc:
            outcome = "client_error" if exc.status_code < 500 else "error"
            raise
        finally:
            metrics.predict_requests.labels(task.name, model_row.id, outcome).inc()
            metrics.predict_latency.labels(task.name, model_row.id).observe(
                time.perf_counter() - started
            )
        metrics.predict_inputs.labels(task.name, model_row.id).inc(len(inputs))
        return PredictResponse(model=model_row.id, predictions=predictions)

    predict.__doc__ = f"Predict with a registered {task.name} model; answers are in input order."
    return predict


def build_router() -> APIRouter:
    router = APIRouter(prefix="/predict", tags=["predict"], responses=PROTECTED)
    for name, task in REGISTRY.items():
        router.add_api_route(
            f"/{name}",
            _make_route(task),
            methods=["POST"],
            response_model=PredictResponse,
            responses=error_responses(400, 404, 413),
            name=f"predict_{name}",
        )
    return router
