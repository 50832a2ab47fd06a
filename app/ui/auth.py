"""/ui/login and /ui/logout: a session from an API key, and its end."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.core.deps import SessionDep, SettingsDep
from app.core.errors import Unauthorized
from app.ui import sessions
from app.ui.web import UiRoute, UserDep, check_csrf, redirect, render

router = APIRouter(route_class=UiRoute)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if target and target.startswith("/ui/") and not target.startswith("/ui//"):
        return target
    return "/ui/jobs"


def set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int, mode: str
) -> None:
    secure = mode == "always" or (mode == "auto" and request.url.scheme == "https")
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


@router.get("/login", include_in_schema=False)
def login_form(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", {"login_csrf": token, "next": safe_next(next)})
    set_cookie(
        request,
        response,
        sessions.LOGIN_COOKIE,
        token,
        max_age=3600,
        mode=settings.ui_secure_cookie,
    )
    return response


@router.post("/login", include_in_schema=False)
async def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=512)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    expected = request.cookies.get(sessions.LOGIN_COOKIE, "")
    if not expected or not sessions.same_token(csrf_token, expected):
        return render(
            request,
            "login.html",
            {"error": "The sign-in form expired: try again.", "login_csrf": expected, "next": next},
            status=403,
        )
    try:
        token, _ = await run_in_threadpool(
            sessions.sign_in, session, key=api_key.strip(), hours=settings.ui_session_hours
        )
    except Unauthorized as exc:
        return render(
            request,
            "login.html",
            {"error": f"Sign-in refused: {exc.message}.", "login_csrf": expected, "next": next},
            status=401,
        )
    response = redirect(safe_next(next))
    set_cookie(
        request,
        response,
        sessions.COOKIE,
        token,
        max_age=int(settings.ui_session_hours * 3600),
        mode=settings.ui_secure_cookie,
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout", include_in_schema=False)
async def logout(request: Request, session: SessionDep, user: UserDep) -> Response:
    check_csrf(user, await request.form())
    sessions.sign_out(session, request.cookies.get(sessions.COOKIE))
    response = redirect("/ui/login")
    response.delete_cookie(sessions.COOKIE, path="/ui")
    return response
