"""Keys and tenants: create, list, revoke, authenticate, bootstrap."""

from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.keys import (
    MIN_BOOTSTRAP_KEY_CHARS,
    display_prefix,
    generate_key,
    hash_key,
    same_hash,
)
from app.auth.schemas import Principal, Scope
from app.core.errors import InvalidInput, NotFound, Unauthorized
from app.core.pagination import MAX_LIMIT, page_newest_first
from app.db.models import DEFAULT_TENANT, ApiKey, Tenant, new_id, utcnow
from app.db.session import get_by_id

log = logging.getLogger("tuneserve.auth")
BOOTSTRAP_KEY_NAME = "bootstrap admin"


def ensure_tenant(session: Session, tenant: str) -> None:
    """Create the tenant row on first use (in the caller's transaction)."""
    if session.get(Tenant, tenant) is None:
        session.add(Tenant(id=tenant))
        session.flush()


def create_key(
    session: Session, *, tenant: str, scopes: list[Scope], name: str = ""
) -> tuple[ApiKey, str]:
    """A new key for `tenant`; returns the row and the key itself, which is never stored."""
    key = generate_key()
    row = _insert_key(session, key=key, tenant=tenant, scopes=scopes, name=name)
    session.commit()
    return row, key


def _insert_key(
    session: Session, *, key: str, tenant: str, scopes: list[Scope], name: str
) -> ApiKey:
    ensure_tenant(session, tenant)
    row = ApiKey(
        id=new_id("key"),
        tenant_id=tenant,
        name=name,
        scopes=sorted({str(s) for s in scopes}),
        prefix=display_prefix(key),
        key_hash=hash_key(key),
    )
    session.add(row)
    session.flush()
    return row


def list_keys(
    session: Session, *, limit: int, after: str | None, tenant: str | None = None
) -> tuple[list[ApiKey], str | None]:
    """Keys, newest first, revoked ones included."""
    stmt = select(ApiKey)
    if tenant is not None:
        stmt = stmt.where(ApiKey.tenant_id == tenant)
    return page_newest_first(session, stmt, ApiKey, limit=min(limit, MAX_LIMIT), after=after)


def revoke_key(session: Session, *, key_id: str, tenant: str | None = None) -> ApiKey:
    """Revoke a key (of `tenant` when given); it stops working on its next request.

    Revoking twice is harmless; another tenant's key is NotFound, as a missing one.
    """
    row = get_by_id(session, ApiKey, key_id)
    if row is None or (tenant is not None and row.tenant_id != tenant):
        raise NotFound(f"key '{key_id}' does not exist", field="key_id")
    session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    session.commit()
    session.refresh(row)
    return row


def authenticate(session: Session, key: str) -> Principal:
    """The principal for a presented key, or Unauthorized (the key is never logged)."""
    presented = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == presented))
    if row is None or not same_hash(row.key_hash, presented):
        raise Unauthorized("the API key is not valid", code="invalid_api_key")
    if row.revoked_at is not None:
        raise Unauthorized("the API key was revoked", code="revoked_api_key")
    return Principal(key_id=row.id, tenant=row.tenant_id, scopes=frozenset(row.scopes))


def ensure_bootstrap_key(session: Session, key: str) -> bool:
    """Register `key` as an admin key of the default tenant; False if it already existed."""
    if len(key) < MIN_BOOTSTRAP_KEY_CHARS:
        raise InvalidInput(
            f"TUNESERVE_BOOTSTRAP_ADMIN_KEY must be at least {MIN_BOOTSTRAP_KEY_CHARS} characters",
            field="bootstrap_admin_key",
        )
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if existing is not None:
        if existing.revoked_at is not None:
            # A revoked key stays revoked, even if the environment still names it.
            log.warning("the bootstrap admin key %s was revoked; not re-enabling it", existing.id)
        return False
    try:
        _insert_key(
            session, key=key, tenant=DEFAULT_TENANT, scopes=[Scope.ADMIN], name=BOOTSTRAP_KEY_NAME
        )
        session.commit()
    except IntegrityError:  # another process registered it at the same moment
        session.rollback()
        return False
    return True


def first_admin_key(session: Session) -> str | None:
    """On a server without any key, create an admin key and return it (to print once)."""
    if session.scalar(select(func.count()).select_from(ApiKey)):
        return None
    _, key = create_key(
        session, tenant=DEFAULT_TENANT, scopes=[Scope.ADMIN], name=BOOTSTRAP_KEY_NAME
    )
    return key
