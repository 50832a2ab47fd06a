"""Errors of the /openai/v1 routes in OpenAI's shape: {"error": {message, type, param, code}}.

The app's one error handler renders every error as {"error": {"code", "message", "details"}};
this middleware rewrites those of the OpenAI routes on their way out, so that every error there
(a typed ServiceError, a body-limit refusal, a 500) comes out in OpenAI's shape, with no second
handler to keep in step with the first. A 422 becomes a 400: OpenAI answers invalid parameters
with 400, which the SDK raises as BadRequestError, and so scripts written for it catch them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.schemas import error_responses as tuneserve_error_responses
from app.openai.schemas import OpenAIErrorResponse

PREFIX = "/openai/"
# OpenAI's error types by status; what is not here is a server_error.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
# Tuneserve's field names -> the OpenAI request's, for `param`.
PARAMS = {
    "base_model": "model",
    "train_dataset": "training_file",
    "validation_dataset": "validation_file",
    "hyperparameters.epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
}


def openai_error(status: int, body: Any) -> tuple[int, dict[str, Any]]:
    """Tuneserve's error body -> OpenAI's, and the status to send it with."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or "type" in error:
        return status, body if isinstance(body, dict) else {"error": body}
    details = error.get("details") or {}
    field = details.get("field") if isinstance(details, dict) else None
    param = PARAMS.get(field, field) if isinstance(field, str) else None
    status = 400 if status == 422 else status
    return status, {
        "error": {
            "message": str(error.get("message", "")),
            "type": TYPES.get(status, "server_error"),
            "param": param,
            "code": error.get("code"),
        }
    }


class OpenAIErrors:
    """ASGI middleware: error responses under /openai/ rewritten into OpenAI's shape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def rewrite(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                headers = MutableHeaders(raw=message["headers"])
                if message["status"] >= 400 and headers.get("content-type", "").startswith(
                    "application/json"
                ):
                    start = message  # held until the whole (small) error body is here
                    return
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                status, body = openai_error(start["status"], _loads(b"".join(chunks)))
                raw = json.dumps(body, ensure_ascii=True).encode()
                headers = MutableHeaders(raw=list(start["headers"]))
                headers["content-length"] = str(len(raw))
                await send({**start, "status": status, "headers": headers.raw})
                await send({"type": "http.response.body", "body": raw})
                return
            await send(message)

        await self.app(scope, receive, rewrite)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": {"message": raw.decode("utf-8", errors="replace")[:500]}}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, in OpenAI's error shape."""
    return {
        code: {**entry, "model": OpenAIErrorResponse}
        for code, entry in tuneserve_error_responses(*codes).items()
    }


# What any OpenAI route behind an API key can answer besides its own errors (no 422: see above).
PROTECTED = error_responses(400, 401, 403, 429, 503)
# FastAPI's own description of a 422, which it adds to every route that takes parameters.
FRAMEWORK_422 = ("HTTPValidationError", "ValidationError")


def without_framework_422(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document without the 422 that FastAPI documents on the OpenAI routes: they
    answer invalid input as a 400 (see OpenAIErrors), which PROTECTED documents. The schemas of
    that 422 go too once no route refers to them."""
    for path, operations in doc.get("paths", {}).items():
        if path.startswith(PREFIX):
            for operation in operations.values():
                if isinstance(operation, dict):
                    operation.get("responses", {}).pop("422", None)
    schemas = doc.get("components", {}).get("schemas", {})
    for name in FRAMEWORK_422:  # HTTPValidationError first: it refers to ValidationError
        if f'"#/components/schemas/{name}"' not in json.dumps(doc):
            schemas.pop(name, None)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve the app's OpenAPI document as without_framework_422 leaves it."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_framework_422(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
