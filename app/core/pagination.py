"""Keyset pagination, newest first: the cursor encodes (created_at, id) of the last item seen."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.core.errors import InvalidInput

T = TypeVar("T")
MAX_LIMIT = 100


def encode_cursor(created_at: datetime, item_id: str) -> str:
    raw = f"{created_at.isoformat()}|{item_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, item_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        if "\x00" in item_id:  # no id holds one, and PostgreSQL cannot compare with one
            raise ValueError("NUL in cursor")
        when = datetime.fromisoformat(stamp)
        # In UTC, as stored; a stamp at the ends of the calendar cannot be (OverflowError).
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC), item_id
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise InvalidInput(f"invalid cursor '{cursor[:40]}'", field="after") from None


def page_newest_first(
    session: Session, stmt: Select[Any], model: Any, *, limit: int, after: str | None
) -> tuple[list[Any], str | None]:
    """Run `stmt` ordered newest first, one page of `limit` rows after the cursor."""
    if after:
        stamp, item_id = decode_cursor(after)
        stmt = stmt.where(
            or_(
                model.created_at < stamp,
                and_(model.created_at == stamp, model.id < item_id),
            )
        )
    rows = list(
        session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1))
    )
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, next_cursor
