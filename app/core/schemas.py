"""Schemas shared by every resource: pages and the error body."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    # Opaque cursor for the next page; null on the last one.
    next_cursor: str | None = None


class ParameterCounts(BaseModel):
    """Weights of a model as trained (after freezing or adapters), shown on jobs and models."""

    trainable: int = Field(description="Weights the optimizer updates.")
    total: int = Field(description="All weights of the model, frozen ones and adapters too.")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_ERROR_DESCRIPTIONS = {
    400: "Malformed request (e.g. a body that cannot be parsed).",
    401: "Missing, unknown or revoked API key (with `WWW-Authenticate: Bearer`).",
    403: "The API key lacks the scope this route needs (the message names it).",
    404: "No such object for this tenant.",
    409: "The object's state does not allow this.",
    413: "The request body is too large.",
    415: "Unsupported content type.",
    422: "Invalid input; the message names the field at fault.",
    429: "Rate limit or job cap reached; retry after `Retry-After` seconds.",
    503: "The database (or a model's files) is unavailable; retry shortly.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, all in the one error shape."""
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[code]} for code in codes
    }


# What any route behind an API key can answer besides its own errors.
PROTECTED = error_responses(401, 403, 422, 429, 503)
