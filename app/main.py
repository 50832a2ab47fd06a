"""create_app(settings): routers, error handlers, lifespan. Nothing happens at import time."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings, get_settings
from app.core.docs import install_docs
from app.core.errors import ServiceError
from app.core.expected import constraints
from app.core.idempotency import Replay
from app.core.limits import BodyLimitMiddleware
from app.core.queue import CeleryJobQueue, JobQueue
from app.core.ratelimit import RateLimiter
from app.core.ttlcache import TTLCache
from app.core.validation import Problem, json_problem, plain_errors
from app.db.session import make_engine, make_sessionmaker

log = logging.getLogger("tuneserve.api")


class ErrorResponse(JSONResponse):
    """An error body, which may quote what the client sent: a lone UTF-16 surrogate there (JSON's
    "\\ud800") cannot be written as UTF-8, so such a body is written with \\u escapes instead."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _error(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return ErrorResponse(status_code=status, content={"error": body})


class UnhandledErrors:
    """Answers an exception that no handler took with the usual JSON 500, logged once, and lets
    it go no further.

    Starlette's ServerErrorMiddleware sends its 500 and then raises the exception again, and
    uvicorn answers that by closing the keep-alive connection without `Connection: close`: the
    client's next request on it would fail. Only a response already begun when the exception
    came cannot be answered; that one goes on to the server, which closes the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            if started:
                raise
            log.exception("unhandled error: %s %s", scope.get("method"), scope.get("path"))
            await _error(500, "internal_error", "internal server error")(scope, receive, send)


def _parameters(dependant: Any, where: str) -> dict[str, tuple[Any, list[Any]]]:
    """A route's query/path/header/cookie parameters (its dependencies' too): name -> type."""
    found: dict[str, tuple[Any, list[Any]]] = {}
    for param in getattr(dependant, f"{where}_params", None) or []:
        info = param.field_info
        found[param.alias] = (info.annotation, constraints([info]))
    for sub in getattr(dependant, "dependencies", None) or []:
        found.update(_parameters(sub, where))
    return found


def _describe_validation(request: Request, exc: RequestValidationError) -> list[Problem]:
    """The request's validation errors in plain words, each read against the route's schema."""
    route = request.scope.get("route")
    by_source: dict[str, list[dict[str, Any]]] = {}
    for err in exc.errors():
        loc = tuple(err.get("loc", ())) or ("body",)
        by_source.setdefault(str(loc[0]), []).append({**err, "loc": loc[1:]})
    problems: list[Problem] = []
    for source, errors in by_source.items():
        root: Any = None
        if isinstance(route, APIRoute):
            if source == "body" and route.body_field is not None:
                root = route.body_field.field_info.annotation
            elif source in ("query", "path", "header", "cookie"):
                root = _parameters(route.dependant, source)
        problems.extend(plain_errors(errors, root=root))
    return problems


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return ErrorResponse(
            status_code=exc.status_code, content={"error": exc.to_dict()}, headers=exc.headers
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Raised by Starlette and FastAPI themselves (no such route, method not allowed, a body
        # that cannot be parsed): the same error shape as everything else.
        phrase = HTTPStatus(exc.status_code).phrase
        message = exc.detail if isinstance(exc.detail, str) and exc.detail else phrase
        if exc.status_code in (404, 405) and message == phrase:
            message = f"{phrase.lower()}: {request.method} {request.url.path}"
        code = phrase.lower().replace(" ", "_").replace("-", "_")
        response = _error(exc.status_code, code, message)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Replay)
    async def _replay(_: Request, exc: Replay) -> JSONResponse:
        return exc.response()

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _database_down(_: Request, exc: Exception) -> JSONResponse:
        # The database is unreachable or restarting: a retryable 503, not a 500.
        log.warning("database unavailable: %s", exc)
        response = _error(503, "database_unavailable", "the database is unavailable; retry shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        syntax = next((e for e in exc.errors() if e.get("type") == "json_invalid"), None)
        if syntax is not None:
            # The body is not JSON at all: a malformed request (400), not an invalid field.
            pos = syntax["loc"][-1] if isinstance(syntax["loc"][-1], int) else 0
            reason = str((syntax.get("ctx") or {}).get("error", "invalid JSON"))
            message, where = json_problem(exc.body or "", pos, reason)
            return _error(400, "invalid_json", message, dict(where))
        problems = _describe_validation(request, exc) or [
            Problem("body", "invalid request", "invalid")
        ]
        return _error(
            422,
            "invalid_input",
            "; ".join(p.message for p in problems),
            {"field": problems[0].field, "errors": [p.as_dict() for p in problems]},
        )


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    """Hold the upload parsing processes while the app runs; the last app to stop ends them."""
    from app.dataset.isolation import held

    with held():
        yield


def register_bootstrap_key(factory: sessionmaker[Session], key: str) -> None:
    """Register TUNESERVE_BOOTSTRAP_ADMIN_KEY (only its hash) if it is not registered yet."""
    from app.auth.service import ensure_bootstrap_key

    with factory() as session:
        if ensure_bootstrap_key(session, key):
            log.info("registered the bootstrap admin key from TUNESERVE_BOOTSTRAP_ADMIN_KEY")


def create_app(settings: Settings | None = None, *, queue: JobQueue | None = None) -> FastAPI:
    """Build the API. Tests pass their own settings and, when not testing the queue, a queue."""
    from app.auth.router import router as keys_router
    from app.basemodel.router import router as base_models_router
    from app.dataset.router import router as datasets_router
    from app.job.router import router as jobs_router
    from app.ml import device as devices
    from app.monitoring.metrics import (
        JobsCollector,
        LoadedModelsCollector,
        Metrics,
        MetricsMiddleware,
    )
    from app.monitoring.router import router as metrics_router
    from app.openai.errors import OpenAIErrors, install_openapi
    from app.openai.router import router as openai_router
    from app.predict.batcher import Batcher
    from app.predict.cache import PredictorCache
    from app.predict.preload import preload
    from app.predict.router import build_router as build_predict_router
    from app.predict.shared import SharedBases
    from app.registry.router import alias_router
    from app.registry.router import router as models_router
    from app.sweep.router import router as sweeps_router
    from app.ui import install_ui

    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings)

    app = FastAPI(
        title="Tuneserve",
        version="0.1.0",
        description="Fine-tune transformers and serve them.",
        # install_docs adds /docs and /redoc with assets from an installed package, not a CDN.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(engine)
    if queue is None:
        if not settings.redis_url:
            raise RuntimeError("TUNESERVE_REDIS_URL is not set (`tuneserve up` sets it for you)")
        queue = CeleryJobQueue(settings.redis_url)
    app.state.queue = queue
    app.state.rate_limiter = RateLimiter(
        per_minute=settings.rate_limit_per_minute, burst=settings.rate_limit_burst
    )
    # Hot-path lookups (see lookup_cache_seconds): key digest -> principal, and
    # (tenant, model id or alias) -> model row.
    app.state.principals = TTLCache(settings.lookup_cache_seconds)
    app.state.model_refs = TTLCache(settings.lookup_cache_seconds)
    if settings.bootstrap_admin_key:
        register_bootstrap_key(app.state.sessionmaker, settings.bootstrap_admin_key)

    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_request_bytes,
        max_depth=settings.max_json_depth,
        exempt=("/v1/datasets", "/ui/datasets", "/openai/v1/files"),
    )
    metrics = Metrics()
    metrics.watch(JobsCollector(app.state.sessionmaker))
    app.state.metrics = metrics
    app.state.shared_bases = SharedBases()
    app.state.predictors = PredictorCache(
        settings.predictor_cache_size,
        budget_bytes=settings.predictor_cache_bytes,
        shared=app.state.shared_bases,
        metrics=metrics,
    )
    metrics.watch(LoadedModelsCollector(app.state.predictors.memory))
    if settings.preload_models:
        app.state.preloading = preload(
            settings, app.state.sessionmaker, app.state.predictors, app.state.shared_bases
        )
    inference_threads = devices.thread_count(settings.inference_threads)
    app.state.batcher = (
        Batcher(
            max_batch_tokens=settings.batch_max_tokens,
            max_wait_ms=settings.batch_max_wait_ms,
            threads=inference_threads,
            workers=devices.model_thread_count(settings.model_threads, inference_threads),
            metrics=metrics,
        )
        if settings.batching
        else None
    )
    # Added after the others, so outside them: it also counts what the body limit and error
    # handlers answer, and an unhandled exception as the 500 it becomes.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost of ours: whatever raises inside (a route, a middleware) is answered here.
    app.add_middleware(UnhandledErrors)
    # Around even that: every error of the OpenAI routes, the 500 too, in OpenAI's shape.
    app.add_middleware(OpenAIErrors)
    # /v1/predict first: a request is matched against the routes in order, and predict requests
    # are most of them (answered sooner, at less CPU, than after every other router's routes).
    for router in (
        build_predict_router(),
        keys_router,
        datasets_router,
        base_models_router,
        jobs_router,
        sweeps_router,
        models_router,
        alias_router,
    ):
        app.include_router(router, prefix="/v1")

    app.include_router(openai_router, prefix="/openai/v1")
    app.include_router(metrics_router)
    install_openapi(app)
    install_docs(app)
    install_ui(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    return app
