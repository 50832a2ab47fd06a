"""Scopes and the key schemas (KeyCreate, KeyRead, KeyCreated)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Scope(StrEnum):
    ADMIN = "admin"
    DATA_WRITE = "data:write"
    TRAIN = "train"
    JOBS_READ = "jobs:read"
    MODELS_READ = "models:read"
    PREDICT = "predict"
    # Read /metrics (only keys of the operator's tenant: metrics span every tenant).
    METRICS_READ = "metrics:read"


OPERATOR_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its tenant and its scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]

    def allows(self, *any_of: Scope) -> bool:
        return Scope.ADMIN in self.scopes or any(s in self.scopes for s in any_of)

    @property
    def is_operator(self) -> bool:
        """An admin key of the operator's tenant (`default`, where the bootstrap key lives): it
        manages the keys of every tenant (and still sees only its own tenant's data)."""
        return Scope.ADMIN in self.scopes and self.tenant == OPERATOR_TENANT


class KeyCreate(BaseModel):
    # A misspelt field (`scope`, `tennant`) would otherwise make a key other than the one asked for.
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(
        default=None,
        pattern=TENANT_PATTERN,
        description="Tenant the key acts for: lower-case letters, digits, '.', '_' and '-'. Over "
        "the API it defaults to, and must be, the calling admin key's own tenant; "
        "`tuneserve keys create --tenant` makes keys for any tenant (created on first use).",
    )
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))
    name: str = Field(
        default="", max_length=200, pattern=r"^[^\x00]*$", description="A label for people."
    )


class KeyRead(BaseModel):
    id: str
    tenant: str
    name: str
    scopes: list[str]
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The key itself. It is shown once and cannot be read again.")
