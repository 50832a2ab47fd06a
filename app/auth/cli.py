"""`tuneserve keys create|list|revoke`: manage API keys straight in the database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@contextmanager
def _session() -> Iterator[Session]:
    from app.core.config import get_settings
    from app.db.session import make_engine, make_sessionmaker

    engine = make_engine(get_settings())
    try:
        with make_sessionmaker(engine)() as session:
            yield session
    finally:
        engine.dispose()


@keys_cli.command("create")
def create(
    tenant: Annotated[str, typer.Option(help="Tenant the key acts for.")] = "default",
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="A scope (repeatable): admin, data:write, train, jobs:read, models:read, predict."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="A label for people.")] = "",
) -> None:
    """Create a key and print it (the only time it is shown)."""
    from pydantic import ValidationError

    from app.auth.schemas import KeyCreate
    from app.auth.service import create_key

    try:
        body = KeyCreate.model_validate({"tenant": tenant, "scopes": scope or [], "name": name})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None
    with _session() as session:
        row, key = create_key(session, tenant=tenant, scopes=body.scopes, name=body.name)
    typer.echo(f"created {row.id} (tenant {row.tenant_id}, scopes {','.join(row.scopes)})")
    typer.echo(key)


@keys_cli.command("list")
def list_(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys.")] = None,
) -> None:
    """List keys (ids, tenants, scopes, prefixes; never the keys)."""
    from app.auth.service import list_keys

    with _session() as session:
        after: str | None = None
        while True:
            rows, after = list_keys(session, limit=100, after=after, tenant=tenant)
            for r in rows:
                state = f"revoked {r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "active"
                typer.echo(
                    f"{r.id}\t{r.tenant_id}\t{','.join(r.scopes)}\t{r.prefix}...\t{state}\t{r.name}"
                )
            if after is None:
                break


@keys_cli.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_...).")]) -> None:
    """Revoke a key."""
    from app.auth.service import revoke_key
    from app.core.errors import NotFound

    with _session() as session:
        try:
            row = revoke_key(session, key_id=key_id)
        except NotFound as exc:
            typer.echo(exc.message, err=True)
            raise typer.Exit(1) from None
    typer.echo(f"revoked {row.id}")
