"""/v1/base-models: the catalog of models a job can fine-tune."""

from __future__ import annotations

from fastapi import APIRouter

from app.auth.deps import AnyKey
from app.basemodel.schemas import BaseModelRead
from app.basemodel.service import list_base_models
from app.core.deps import SettingsDep
from app.core.schemas import Page, error_responses

router = APIRouter(
    prefix="/base-models", tags=["base-models"], responses=error_responses(401, 429, 503)
)


@router.get("", response_model=Page[BaseModelRead])
def get_base_models(settings: SettingsDep, _: AnyKey) -> Page[BaseModelRead]:
    """List the base models that can be fine-tuned on this server."""
    return Page[BaseModelRead](data=list_base_models(settings))
