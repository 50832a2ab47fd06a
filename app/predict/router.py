"""/v1/predict/{task}: one route per task in the registry, each with that task's request schema."""

# No `from __future__ import annotations` here: the route signatures are built per task at runtime.

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.auth.deps import Predictor
from app.core.config import Settings
from app.core.errors import InvalidInput, ServiceError
from app.core.schemas import PROTECTED, error_responses
from app.core.ttlcache import TTLCache
from app.db.models import Model
from app.ml.runtimes import runtime_of
from app.ml.tasks import REGISTRY, TaskSpec
from app.monitoring.metrics import Metrics
from app.registry.service import require_task, resolve_model_ref


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


def check_limits(settings: Settings, inputs: list[Any]) -> int:
    """Refuse input lists and texts over the configured limits, naming the input at fault; the
    characters of all the inputs' texts."""
    if len(inputs) > settings.max_predict_inputs:
        raise InvalidInput(
            f"inputs has {len(inputs)} items; at most {settings.max_predict_inputs} per request",
            field="inputs",
        )
    total = 0
    for i, item in enumerate(inputs):
        chars = _text_chars(item)
        if chars > settings.max_predict_text_chars:
            raise InvalidInput(
                f"inputs[{i}] has {chars} characters; at most {settings.max_predict_text_chars}",
                field=f"inputs[{i}]",
            )
        total += chars
    return total


def _inference_lock(state: Any) -> threading.Lock:
    if not hasattr(state, "inference_lock"):
        # One model call at a time per process: concurrent calls on 2 cores only thrash.
        state.inference_lock = threading.Lock()
    lock: threading.Lock = state.inference_lock
    return lock


def _lookup_model(sessionmaker: Callable[[], Session], tenant: str, ref: str) -> Model:
    with sessionmaker() as session:
        return resolve_model_ref(session, tenant=tenant, ref=ref)


async def resolve_cached(state: Any, *, tenant: str, ref: str) -> Model:
    """The tenant's model named by id or alias, remembered briefly (app.state.model_refs): the
    database is asked once per `lookup_cache_seconds`, in a worker thread."""
    refs: TTLCache[tuple[str, str], Model] = state.model_refs
    model = refs.get((tenant, ref))
    if model is None:
        model = await run_in_threadpool(_lookup_model, state.sessionmaker, tenant, ref)
        refs.put((tenant, ref), model)
    return model


def _run_predict(state: Any, task: TaskSpec, model_row: Model, body: BaseModel) -> list[Any]:
    """Load (or find) the predictor and run the task's predict, in a worker thread; with a
    batcher its model calls join other requests' in the model threads."""
    from app.predict.predictor import load_predictor

    settings: Settings = state.settings
    shared = state.shared_bases
    predictor = state.predictors.get_or_load(
        model_row.id, lambda: load_predictor(settings, model_row, shared=shared)
    )
    batcher = state.batcher
    if batcher is not None:
        predictions: list[Any] = predictor.predict(body, batcher=batcher)
        return predictions
    with _inference_lock(state):
        predictions = predictor.predict(body)
        return predictions


async def run_predict(
    state: Any, task: TaskSpec, model_row: Model, body: BaseModel, *, chars: int
) -> list[Any]:
    """The predictions for a validated request of `chars` characters of text.

    A small request (at most `predict_loop_max_chars`) for a model already loaded is tokenized and
    post-processed right here on the event loop, its forward awaited from the model threads: a
    hop to a worker thread and back costs more than that work (about 0.4 ms of CPU a request).
    A larger request, a model still to load, a tokenizer another thread is using at this moment,
    or serving without the batcher takes a worker thread (`_run_predict`), so the loop never
    waits long.
    """
    batcher = state.batcher
    if batcher is not None and chars <= state.settings.predict_loop_max_chars:
        predictor = state.predictors.loaded(model_row.id)
        if predictor is not None and not predictor.tokenizer_busy():
            predictions: list[Any] = await predictor.predict_async(body, batcher=batcher)
            return predictions
    return await run_in_threadpool(_run_predict, state, task, model_row, body)


def _make_route(task: TaskSpec) -> Any:
    request_model = task.predict_request

    # Async, so that a request costs no database round trip while its key and model are
    # remembered, and a small one no worker-thread hop either (run_predict).
    async def predict(
        body: request_model,  # type: ignore[valid-type]
        request: Request,
        principal: Predictor,
    ) -> PredictResponse:
        state = request.app.state
        inputs = body.inputs  # type: ignore[attr-defined]
        chars = check_limits(state.settings, inputs)
        ref = body.model  # type: ignore[attr-defined]
        model_row = await resolve_cached(state, tenant=principal.tenant, ref=ref)
        require_task(model_row, ref=ref, task=task.name)

        metrics: Metrics = state.metrics
        started = time.perf_counter()
        outcome = "error"
        try:
            predictions = await run_predict(state, task, model_row, body, chars=chars)
            outcome = "ok"
        except ServiceError as exc:
            outcome = "client_error" if exc.status_code < 500 else "error"
            raise
        finally:
            runtime = runtime_of(model_row.artifact)
            metrics.predict_requests.labels(task.name, model_row.id, runtime, outcome).inc()
            metrics.predict_latency.labels(task.name, model_row.id, runtime).observe(
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


async def predict_inputs(
    state: Any, *, tenant: str, model_id: str, inputs: list[Any]
) -> tuple[Model, list[Any]]:
    """What /v1/predict/<task> answers for these inputs, for callers inside the API process
    (the dashboard's try box): the same limits, model cache and batching."""
    from pydantic import ValidationError

    from app.core.validation import plain_errors

    chars = check_limits(state.settings, inputs)
    model_row = await resolve_cached(state, tenant=tenant, ref=model_id)
    task = REGISTRY[model_row.task]
    try:
        body = task.predict_request.model_validate({"model": model_id, "inputs": inputs})
    except ValidationError as exc:
        problems = plain_errors(exc.errors(), root=task.predict_request)
        raise InvalidInput("; ".join(p.message for p in problems)) from None
    return model_row, await run_predict(state, task, model_row, body, chars=chars)
