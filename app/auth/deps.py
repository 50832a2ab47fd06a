"""The caller's principal and per-route scope requirements, as Annotated dependencies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth.keys import hash_key
from app.auth.schemas import OPERATOR_TENANT, Principal, Scope
from app.auth.service import authenticate
from app.core.errors import Forbidden, Unauthorized
from app.core.ratelimit import RateLimiter
from app.core.ttlcache import TTLCache

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key, sent as `Authorization: Bearer <key>`.",
)


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Authenticate the caller and charge its rate limit.

    A key found valid is remembered for `lookup_cache_seconds` (app.state.principals), so a busy
    caller's requests skip the database; revoking a key through this process forgets them all.
    """
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "an API key is required: send `Authorization: Bearer <key>`", code="missing_api_key"
        )
    state = request.app.state
    known: TTLCache[str, Principal] = state.principals
    digest = hash_key(credentials.credentials)
    principal = known.get(digest)
    if principal is None:
        principal = await run_in_threadpool(
            _authenticate, state.sessionmaker, credentials.credentials
        )
        known.put(digest, principal)
    limiter: RateLimiter = state.rate_limiter
    limiter.check(principal.key_id)
    request.state.principal = principal
    return principal


def _authenticate(sessionmaker: Callable[[], Session], key: str) -> Principal:
    with sessionmaker() as session:
        return authenticate(session, key)


def require(*scopes: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that lets through keys holding any of `scopes` (admin holds them all)."""
    names = " or ".join(f"'{s}'" for s in scopes)

    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if not principal.allows(*scopes):
            raise Forbidden(
                f"this API key lacks the scope this route needs: {names}",
                code="missing_scope",
                required=[str(s) for s in scopes],
            )
        return principal

    return check


async def metrics_reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal | None:
    """/metrics: open when the operator made it public, else an operator key with the scope."""
    if request.app.state.settings.metrics_public:
        return None
    principal = await get_principal(request, credentials)
    if not principal.allows(Scope.METRICS_READ) or principal.tenant != OPERATOR_TENANT:
        raise Forbidden(
            f"metrics cover every tenant: they need an admin or 'metrics:read' key of the "
            f"operator's tenant '{OPERATOR_TENANT}'",
            code="missing_scope",
            required=[str(Scope.METRICS_READ)],
        )
    return principal


AnyKey = Annotated[Principal, Depends(get_principal)]
Admin = Annotated[Principal, Depends(require(Scope.ADMIN))]
DataWriter = Annotated[Principal, Depends(require(Scope.DATA_WRITE))]
DataReader = Annotated[Principal, Depends(require(Scope.DATA_WRITE, Scope.TRAIN))]
Trainer = Annotated[Principal, Depends(require(Scope.TRAIN))]
JobReader = Annotated[Principal, Depends(require(Scope.TRAIN, Scope.JOBS_READ))]
ModelReader = Annotated[Principal, Depends(require(Scope.MODELS_READ))]
Predictor = Annotated[Principal, Depends(require(Scope.PREDICT))]
MetricsReader = Annotated[Principal | None, Depends(metrics_reader)]
