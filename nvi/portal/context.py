"""What every handler shares: the application's keys, and the request's session with its
own client (`Cloud`, made with the session's token)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jinja2
from aiohttp import web

from nvi.portal.config import PortalConfig
from nvi.portal.render import page
from nvi.portal.sessions import Session, Sessions

CloudFactory = Callable[[str], Any]
"""Makes the client a session acts with, from its token (an nvi.client.cloud.Cloud)."""

CONFIG = web.AppKey("config", PortalConfig)
SESSIONS = web.AppKey("sessions", Sessions)
CLOUDS: web.AppKey[CloudFactory] = web.AppKey("clouds")
TEMPLATES = web.AppKey("templates", jinja2.Environment)
COOKIE = "nvi_portal"
SIGN_IN = "/signin"
SWEEP_SECONDS = 60.0


def session_of(request: web.Request) -> Session | None:
    return request.app[SESSIONS].get(request.cookies.get(COOKIE))


def require(request: web.Request, role: str = "tenant") -> Session:
    """The request's session, in `role`; a page without one sends the browser to sign in."""
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther(SIGN_IN)
    if session.role != role:
        raise web.HTTPSeeOther("/admin" if session.role == "admin" else "/")
    return session


async def cloud_of(request: web.Request, session: Session) -> Any:
    """The session's client, opened on first use and closed with the session."""
    if session.cloud is None:
        cloud = request.app[CLOUDS](session.token)
        session.cloud = await cloud.__aenter__()
    return session.cloud


async def end(app: web.Application, session: Session) -> None:
    app[SESSIONS].close(session.id)
    await close_cloud(session)


async def close_cloud(session: Session) -> None:
    cloud, session.cloud = session.cloud, None
    if cloud is not None:
        with contextlib.suppress(Exception):
            await cloud.__aexit__(None, None, None)


def set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    config = request.app[CONFIG]
    response.set_cookie(
        COOKIE,
        session.id,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=int(config.session_seconds),
    )


def refused(request: web.Request, reason: str) -> web.Response:
    return page(request.app[TEMPLATES], "error.html", 403, title="Refused", reason=reason)
