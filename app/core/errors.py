"""Typed errors rendered by one handler into one JSON shape: {"error": {"code", "message", ...}}."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error the API answers on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class InvalidInput(ServiceError):
    status_code = 422
    code = "invalid_input"


class BadRequest(ServiceError):
    status_code = 400
    code = "bad_request"


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "payload_too_large"


class InsufficientStorage(ServiceError):
    """The server cannot store the request's data without eating into its free-disk reserve."""

    status_code = 507
    code = "insufficient_storage"


class Unavailable(ServiceError):
    status_code = 503
    code = "unavailable"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class TooManyRequests(ServiceError):
    """429 with Retry-After (whole seconds, at least 1)."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float, **kwargs: Any) -> None:
        seconds = max(1, int(retry_after + 0.999))
        super().__init__(
            message, headers={"Retry-After": str(seconds)}, retry_after_seconds=seconds, **kwargs
        )
