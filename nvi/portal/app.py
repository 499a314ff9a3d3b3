"""The portal's aiohttp application: an app factory like the directory's and the agent's, one
cleanup context for the sessions, and `run` to serve it.

Every page acts through the signed-in session's own `Cloud` (nvi.client.cloud), made with
that session's token: a tenant's request can only ever name that tenant's records, so another
tenant's node is a 404 by construction, not by a check that could be forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from nvi.core.errors import NviError
from nvi.core.tls import server_context
from nvi.portal import console, operator, pages
from nvi.portal.config import PortalConfig
from nvi.portal.context import (
    CLOUDS,
    CONFIG,
    SESSIONS,
    SIGN_IN,
    SWEEP_SECONDS,
    TEMPLATES,
    CloudFactory,
    close_cloud,
    end,
    refused,
    session_of,
)
from nvi.portal.render import STATIC, environment, page
from nvi.portal.security import SAFE_METHODS, same_origin, security_headers
from nvi.portal.sessions import Sessions

log = logging.getLogger(__name__)


@web.middleware
async def csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that changes anything needs a same-origin browser, a live session and the
    session's CSRF token as the form field `csrf`. Signing in has no session yet: it needs
    the same origin only (and SameSite=Strict keeps the cookie off cross-site requests)."""
    if request.method in SAFE_METHODS:
        return await handler(request)
    if not same_origin(request):
        return refused(request, "this form was sent from another site")
    if request.path == SIGN_IN:
        return await handler(request)
    session = session_of(request)
    if session is None:
        return refused(request, "not signed in, or the session has ended: sign in again")
    form = await request.post()
    offered = form.get("csrf")
    if not session.csrf_ok(offered if isinstance(offered, str) else None):
        return refused(request, "the form's CSRF token is missing or wrong: reload the page")
    return await handler(request)


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """404 and other HTTP errors as pages, never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        title = "Not found" if error.status == 404 else error.reason
        return page(
            request.app[TEMPLATES], "error.html", error.status, title=title, reason=error.text
        )
    except NviError as error:  # the directory or an agent said no, or cannot be reached
        status = getattr(error, "status", 503)
        status = status if isinstance(status, int) and 400 <= status < 600 else 503
        return page(request.app[TEMPLATES], "error.html", status, title="Failed", reason=str(error))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected failure answering %s %s", request.method, request.path)
        reason = "internal error; see the portal's log"
        return page(request.app[TEMPLATES], "error.html", 500, title="Error", reason=reason)


async def sessions_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: sessions, swept for expired ones; every session's client closed at exit."""

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            for session in app[SESSIONS].expired():
                await close_cloud(session)

    task = asyncio.create_task(sweep())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for session in app[SESSIONS].all():
            await end(app, session)


def default_clouds(config: PortalConfig) -> CloudFactory:
    def make(token: str) -> Any:
        from nvi.client.cloud import Cloud

        return Cloud(config.directory, token, config.ca_file)

    return make


def create_app(config: PortalConfig, clouds: CloudFactory | None = None) -> web.Application:
    """`clouds` replaces how a session's client is made (tests of the pages alone)."""
    app = web.Application(middlewares=[security_headers, error_pages, csrf])
    app[CONFIG] = config
    app[SESSIONS] = Sessions(config.session_seconds, config.idle_seconds)
    app[CLOUDS] = clouds or default_clouds(config)
    app[TEMPLATES] = environment()
    app.cleanup_ctx.append(sessions_context)
    pages.add_routes(app)
    operator.add_routes(app)
    console.add_routes(app)
    app.router.add_static("/static", STATIC)
    return app


async def serve(config: PortalConfig, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `ready` gets the URL once it listens."""
    tls = None
    if config.cert_file is not None and config.key_file is not None:
        tls = server_context(config.cert_file, config.key_file)
    runner = web.AppRunner(create_app(config), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port, ssl_context=tls).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if ready is not None:
            ready(url(config, runner))
        await stop.wait()
    finally:
        await runner.cleanup()


def url(config: PortalConfig, runner: web.AppRunner) -> str:
    """Where the portal listens (the port the system chose, for port 0)."""
    port = runner.addresses[0][1] if runner.addresses else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{'https' if config.https else 'http'}://{host}:{port}"
