"""Size, nesting and Unicode checks of JSON request bodies, before a route parses them.

Uploads (the `exempt` prefixes) stream their bodies and enforce their own limits.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import InvalidInput, PayloadTooLarge, ServiceError
from app.core.jsondepth import nesting_exceeds
from app.core.surrogates import find_lone_surrogate
from app.core.text import escape_surrogates


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes; 422 for a JSON body nested deeper than `max_depth` or
    holding a lone UTF-16 surrogate."""

    def __init__(
        self, app: ASGIApp, *, limit: int, max_depth: int = 64, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.limit = limit
        self.max_depth = max_depth
        self.exempt = exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        declared = dict(headers).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, self._too_large())
            return
        # Bodies here are small JSON documents that the route reads whole anyway: read them
        # first, so that their depth is known before any recursive parser sees them.
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # nobody is left to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _send_error(send, self._too_large())
                return
            if not message.get("more_body", False):
                break
        # Every Content-Type header counts: the route may read another one of several.
        types = [value for name, value in headers if name == b"content-type"]
        if not types or any(_is_json(value) for value in types):
            line = nesting_exceeds(bytes(body), self.max_depth)
            if line is not None:
                await _send_error(send, self._too_deep(line))
                return
            surrogate = find_lone_surrogate(bytes(body))
            if surrogate is not None:
                await _send_error(send, _not_unicode(*surrogate))
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {self.limit} bytes", limit=self.limit)

    def _too_deep(self, line: int) -> InvalidInput:
        return InvalidInput(
            f"line {line}: the JSON body is nested deeper than {self.max_depth} levels "
            f"(arrays/objects inside each other)",
            code="json_too_deep",
            line=line,
            limit=self.max_depth,
        )


def _not_unicode(field: str, problem: str) -> InvalidInput:
    # As the request schemas word it (app/core/text.py); the field path as app/core/validation.
    field = escape_surrogates(field)
    message = f"{field}: {problem}"
    return InvalidInput(
        message,
        field=field,
        errors=[{"field": field, "message": message, "type": "string_unicode"}],
    )


def _is_json(content_type: bytes) -> bool:
    # As FastAPI decides: an empty content type, application/json or application/*+json.
    if not content_type.strip():
        return True
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands over the buffered body once, then waits on the client."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _send_error(send: Send, error: ServiceError) -> None:
    # Middleware runs outside the app's exception handlers: render the one error shape here.
    raw = json.dumps({"error": error.to_dict()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
