"""/docs (Swagger UI) and /redoc with their scripts and styles served from an installed package
(fastapi-offline ships Swagger UI and ReDoc), not from a CDN: they work on an offline host."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# The files the pages load, by name in the package's static folder, with their media types. One
# fixed route each: no path parameter, so nothing else of the package (or disk) can be asked for.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
ASSETS_PACKAGE = "fastapi_offline"


@cache
def asset(name: str) -> bytes:
    """The bytes of one of ASSETS, read once from the installed package."""
    return (files(ASSETS_PACKAGE) / "static" / name).read_bytes()


def install_docs(app: FastAPI) -> None:
    """Add the documentation pages and their assets; create the app with docs_url=None and
    redoc_url=None so that FastAPI's CDN-backed pages are not added too."""

    def url(request: Request, path: str) -> str:
        return f"{request.scope.get('root_path', '')}{path}"

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=url(request, OAUTH2_REDIRECT_URL),
            swagger_js_url=url(request, f"{ASSETS_URL}/swagger-ui-bundle.js"),
            swagger_css_url=url(request, f"{ASSETS_URL}/swagger-ui.css"),
            swagger_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=url(request, app.openapi_url or "/openapi.json"),
            title=f"{app.title} - ReDoc",
            redoc_js_url=url(request, f"{ASSETS_URL}/redoc.standalone.js"),
            redoc_favicon_url=url(request, f"{ASSETS_URL}/favicon.png"),
            with_google_fonts=False,
        )

    for name, media_type in ASSETS.items():
        _add_asset_route(app, name, media_type)


def _add_asset_route(app: FastAPI, name: str, media_type: str) -> None:
    def serve() -> Response:
        return Response(
            asset(name), media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
        )

    app.add_api_route(f"{ASSETS_URL}/{name}", serve, methods=["GET"], include_in_schema=False)
