"""The web dashboard at /ui: server-rendered pages for the people who watch jobs and models."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from app.ui.web import HERE, UiRefused, UiRoute, UserDep, redirect, sections_of


def build_router() -> APIRouter:
    from app.ui import auth, datasets, jobs, models

    router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)

    @router.get("")
    def home(user: UserDep) -> Response:
        """The first part of the dashboard the key may open."""
        for section in sections_of(user):
            return redirect(f"/ui/{section}")
        raise UiRefused(
            403,
            "Nothing to show",
            "this API key has no scope the dashboard shows (it may only "
            "call /predict or read /metrics)",
        )

    for part in (auth.router, jobs.router, models.router, datasets.router):
        router.include_router(part)
    return router


def install_ui(app: FastAPI) -> None:
    """Mount the dashboard's pages and its own static files (no CDN: it works offline)."""
    app.include_router(build_router())
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
