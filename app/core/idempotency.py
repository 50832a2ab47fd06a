"""Idempotency-Key (the Stripe model): a retry gets the first response again and creates nothing.

A create route builds an `IdempotentRequest` from the header and a hash of what was sent; its
service calls `replay_if_seen` before doing anything and `remember` in the transaction that
creates the object. Two racing requests with one key both pass `replay_if_seen`, but only one can
commit its record (unique tenant, route, key): the other rolls back and replays the first's answer.
Only successes are remembered, so a client can fix a refused request and retry with the same key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput
from app.db.models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        # Printable ASCII, as header values are in practice (a UUID is a good key).
        pattern=r"^[ -~]+$",
        description="A unique value (e.g. a UUID) that makes retries safe: a request repeated "
        "with the same key gets the first successful response again, with the header "
        f"`{REPLAYED_HEADER}: true`, and creates nothing new. Keys are scoped to the tenant and "
        "route and are kept indefinitely; reusing one with a different request is a 422 "
        "(`idempotency_key_reused`). Refused requests (4xx) are not remembered.",
    ),
]

REPLAYED_RESPONSE_HEADER: dict[str, Any] = {
    REPLAYED_HEADER: {
        "description": "`true` when this is the stored response to an earlier request sent "
        f"with the same {HEADER}.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


def canonical_hash(value: Any) -> str:
    """SHA-256 of `value` as canonical JSON (sorted keys, no whitespace)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


class Replay(Exception):
    """The stored response to send again; the app's handler renders it."""

    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(f"replaying a stored {status_code} response")
        self.status_code = status_code
        self.body = body

    def response(self) -> JSONResponse:
        return JSONResponse(
            status_code=self.status_code, content=self.body, headers={REPLAYED_HEADER: "true"}
        )


@dataclass(frozen=True)
class IdempotentRequest:
    """One request sent with an Idempotency-Key: who sent it, to which route, and its hash."""

    tenant: str
    route: str
    key: str
    request_hash: str

    def replay_if_seen(self, session: Session) -> None:
        """Raise Replay if this key was used before on this route; 422 if for another request."""
        record = session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.tenant_id == self.tenant,
                IdempotencyRecord.route == self.route,
                IdempotencyRecord.key == self.key,
            )
        )
        if record is None:
            return
        if record.request_hash != self.request_hash:
            raise InvalidInput(
                f"this {HEADER} was already used for a different request to {self.route}; "
                "use a new key for a new request",
                code="idempotency_key_reused",
                field=HEADER,
            )
        raise Replay(record.status_code, record.response)

    def remember(self, session: Session, *, status_code: int, body: BaseModel) -> None:
        """Stage the response in the caller's transaction: stored only if that commits."""
        session.add(
            IdempotencyRecord(
                tenant_id=self.tenant,
                route=self.route,
                key=self.key,
                request_hash=self.request_hash,
                status_code=status_code,
                response=body.model_dump(mode="json"),
            )
        )


def idempotent_request(
    key: str | None, *, tenant: str, route: str, request_hash: str
) -> IdempotentRequest | None:
    """The request to deduplicate, or None when no Idempotency-Key was sent."""
    if key is None:
        return None
    return IdempotentRequest(tenant=tenant, route=route, key=key, request_hash=request_hash)
