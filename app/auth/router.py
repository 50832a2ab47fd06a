"""/v1/keys: admin-only management of API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from app.auth import service
from app.auth.deps import Admin
from app.auth.schemas import OPERATOR_TENANT, TENANT_PATTERN, KeyCreate, KeyCreated, KeyRead
from app.core.deps import SessionDep
from app.core.errors import Forbidden
from app.core.schemas import PROTECTED, Page, error_responses
from app.db.models import ApiKey

router = APIRouter(prefix="/keys", tags=["keys"], responses=PROTECTED)


def to_read(row: ApiKey) -> KeyRead:
    return KeyRead(
        id=row.id,
        tenant=row.tenant_id,
        name=row.name,
        scopes=list(row.scopes),
        prefix=row.prefix,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyCreated,
    responses=error_responses(400, 413),
)
def create_key(body: KeyCreate, session: SessionDep, principal: Admin) -> KeyCreated:
    """Create an API key (for the caller's tenant unless the caller is the operator's admin);
    the response is the only time the key is shown."""
    tenant = body.tenant or principal.tenant
    if tenant != principal.tenant and not principal.is_operator:
        # A tenant's admin key administers that tenant only; the operator's makes the others.
        raise Forbidden(
            f"an admin key manages the keys of its own tenant ('{principal.tenant}') only; "
            f"keys for tenant '{tenant}' are made by an admin key of tenant "
            f"'{OPERATOR_TENANT}' or with `tuneserve keys create --tenant {tenant}`",
            code="other_tenant",
            field="tenant",
        )
    row, key = service.create_key(session, tenant=tenant, scopes=body.scopes, name=body.name)
    return KeyCreated(**to_read(row).model_dump(), key=key)


@router.get("", response_model=Page[KeyRead])
def list_keys(
    session: SessionDep,
    principal: Admin,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    tenant: Annotated[
        str | None,
        Query(
            pattern=TENANT_PATTERN,
            description="Only this tenant's keys (the operator's admin keys may name any tenant).",
        ),
    ] = None,
) -> Page[KeyRead]:
    """List API keys (never the keys themselves), newest first: the caller's tenant's, or
    every tenant's for the operator's admin keys."""
    if not principal.is_operator:
        if tenant not in (None, principal.tenant):
            raise Forbidden(
                f"an admin key lists the keys of its own tenant ('{principal.tenant}') only",
                code="other_tenant",
                field="tenant",
            )
        tenant = principal.tenant
    rows, cursor = service.list_keys(session, limit=limit, after=after, tenant=tenant)
    return Page[KeyRead](data=[to_read(r) for r in rows], next_cursor=cursor)


@router.delete("/{key_id}", response_model=KeyRead, responses=error_responses(404))
def revoke_key(key_id: str, request: Request, session: SessionDep, principal: Admin) -> KeyRead:
    """Revoke an API key (one of the caller's tenant, or any for the operator's admin keys);
    requests with it are refused from now on."""
    scope = None if principal.is_operator else principal.tenant
    row = service.revoke_key(session, key_id=key_id, tenant=scope)
    request.app.state.principals.clear()
    return to_read(row)
