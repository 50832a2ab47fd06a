"""Dashboard sessions: signed in with an API key, kept on the server, named by a cookie token.

The cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS) holds a random token; the table holds
its SHA-256, the key it acts for and a CSRF token. The key itself is never stored or sent back.
A session acts exactly as its key does (tenant, scopes), and ends when the key is revoked, when
it expires, or at sign-out.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.auth.schemas import Principal
from app.auth.service import authenticate
from app.db.models import ApiKey, UiSession, utcnow

COOKIE = "tuneserve_session"
# The login form's CSRF token travels in a cookie of its own until a session exists.
LOGIN_COOKIE = "tuneserve_login"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class UiUser:
    """Who is signed in: the key's principal, its display prefix and the session's CSRF token."""

    principal: Principal
    key_prefix: str
    csrf_token: str


def sign_in(session: Session, *, key: str, hours: float) -> tuple[str, UiUser]:
    """Check the key (Unauthorized when it is not valid); a new session's token and its user."""
    principal = authenticate(session, key)
    token = secrets.token_urlsafe(32)
    row = UiSession(
        id=token_hash(token),
        key_id=principal.key_id,
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + timedelta(hours=hours),
    )
    session.add(row)
    # Expired sessions go when anyone signs in: the table never grows past the live ones.
    session.execute(delete(UiSession).where(UiSession.expires_at < utcnow()))
    session.commit()
    prefix = session.scalar(select(ApiKey.prefix).where(ApiKey.id == principal.key_id)) or ""
    return token, UiUser(principal, prefix, row.csrf_token)


def current_user(session: Session, token: str | None) -> UiUser | None:
    """The user of a live session (its key not revoked), or None."""
    if not token:
        return None
    found = session.execute(
        select(UiSession, ApiKey)
        .join(ApiKey, ApiKey.id == UiSession.key_id)
        .where(UiSession.id == token_hash(token))
    ).first()
    if found is None:
        return None
    row, key = found
    if row.expires_at <= utcnow() or key.revoked_at is not None:
        return None
    principal = Principal(key_id=key.id, tenant=key.tenant_id, scopes=frozenset(key.scopes))
    return UiUser(principal, key.prefix, row.csrf_token)


def sign_out(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(UiSession).where(UiSession.id == token_hash(token)))
        session.commit()


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
