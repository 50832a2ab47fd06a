"""What every dashboard page shares: templates, the signed-in user, scope checks, CSRF checks,
and the security headers every answer carries.

Pages are rendered on the server with Jinja2 (autoescaping on: whatever a user supplied is text,
never markup). The only scripts are our own files under /ui/static, allowed by a
Content-Security-Policy that forbids inline scripts and every other origin.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from app.auth.schemas import Scope
from app.core.deps import SessionDep
from app.core.errors import ServiceError
from app.core.humanize import duration
from app.ui.sessions import COOKIE, UiUser, current_user, same_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# Which scopes open which part of the dashboard (the same the API's routes need).
SECTIONS: dict[str, tuple[Scope, ...]] = {
    "jobs": (Scope.TRAIN, Scope.JOBS_READ),
    "models": (Scope.MODELS_READ,),
    "datasets": (Scope.DATA_WRITE, Scope.TRAIN),
}


class LoginRequired(Exception):
    """No live session: pages redirect to the sign-in form, scripts get 401."""


class UiRefused(Exception):
    """A page the user may not open or a form that cannot be taken: shown as a page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def ui_user(request: Request, session: SessionDep) -> UiUser:
    user = current_user(session, request.cookies.get(COOKIE))
    if user is None:
        raise LoginRequired()
    request.state.ui_user = user
    return user


UserDep = Annotated[UiUser, Depends(ui_user)]


def require_section(user: UiUser, section: str) -> None:
    scopes = SECTIONS[section]
    if not user.principal.allows(*scopes):
        names = " or ".join(f"'{s}'" for s in scopes)
        raise UiRefused(
            403, "Not allowed", f"this API key cannot see {section}: it needs the scope {names}"
        )


def require_scope(user: UiUser, *scopes: Scope, doing: str) -> None:
    if not user.principal.allows(*scopes):
        names = " or ".join(f"'{s}'" for s in scopes)
        raise UiRefused(403, "Not allowed", f"this API key cannot {doing}: it needs {names}")


def check_csrf(user: UiUser, form: Mapping[str, Any]) -> None:
    """Every form that changes something carries the session's CSRF token."""
    given = form.get("csrf_token")
    if not same_token(given if isinstance(given, str) else None, user.csrf_token):
        raise UiRefused(
            403,
            "Form expired",
            "this form's security token is missing or out of date (CSRF check): reload the page "
            "and submit it again",
        )


async def posted_form(request: Request, user: UiUser) -> dict[str, str]:
    """A submitted form's text fields, once its CSRF token is checked."""
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    check_csrf(user, form)
    return form


def sections_of(user: UiUser | None) -> list[str]:
    if user is None:
        return []
    return [name for name, scopes in SECTIONS.items() if user.principal.allows(*scopes)]


def age(when: datetime | None) -> str:
    """How long ago, in the largest unit: `12s`, `5m`, `3h`, `2d`."""
    if when is None:
        return ""
    seconds = max(0, int((datetime.now(UTC) - when).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


templates.env.filters["age"] = age
templates.env.filters["duration"] = lambda s: "" if s is None else duration(s)
templates.env.filters["number"] = number
templates.env.filters["urlquote"] = lambda v: quote(str(v), safe="")


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> HTMLResponse:
    user: UiUser | None = getattr(request.state, "ui_user", None)
    ctx = {
        "user": user,
        "sections": sections_of(user),
        "csrf": user.csrf_token if user else "",
        **(context or {}),
    }
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(SECURITY_HEADERS)
    return response


def login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return redirect(f"/ui/login?next={quote(target, safe='')}")


class UiRoute(APIRoute):
    """Answers a dashboard route's refusals as pages: no session -> the sign-in form (401 for
    the pages' scripts), a refusal or a client error -> a page that says why."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except LoginRequired:
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return login_redirect(request)
                return JSONResponse({"error": "sign in again"}, status_code=401)
            except UiRefused as exc:
                return render(
                    request, "error.html", {"title": exc.title, "message": exc.message},
                    status=exc.status,
                )  # fmt: skip
            except ServiceError as exc:
                if exc.status_code >= 500:
                    raise
                title = "Not found" if exc.status_code == 404 else "Refused"
                return render(
                    request, "error.html", {"title": title, "message": exc.message},
                    status=exc.status_code,
                )  # fmt: skip

        return answer
