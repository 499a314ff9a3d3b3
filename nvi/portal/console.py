"""A node's console in the browser: the page with the terminal (static/terminal.js), and the
WebSocket the terminal talks to, which the portal relays to the agent's console socket
(hostagent/console.py) with the session's own token. The protocol is the agent's, unchanged:
binary messages are terminal bytes, a text message is a window size.

The handshake needs the session's cookie, the page's origin and the session's CSRF token (a
query parameter, as a browser's WebSocket sends no form): a page of another site cannot
open a tenant's console.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import WSMsgType, web

from nvi.core.errors import NviError
from nvi.portal.context import cloud_of, refused, require
from nvi.portal.pages import name_in, read, show
from nvi.portal.security import same_origin

routes = web.RouteTableDef()


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)


@routes.get("/nodes/{name}/console")
async def console_page(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    node = await read(request, session, cloud.node(name_in(request)))
    return show(request, session, "console.html", node=node)


@routes.get("/nodes/{name}/console/socket")
async def console_socket(request: web.Request) -> web.StreamResponse:
    session = require(request)
    if not same_origin(request) or "Origin" not in request.headers:
        return refused(request, "the console opens only from this portal's own pages")
    if not session.csrf_ok(request.query.get("csrf")):
        return refused(request, "the console's CSRF token is missing or wrong: reload the page")
    cloud = await cloud_of(request, session)
    name = name_in(request)
    agent = await read(request, session, cloud.agent_of(name))  # 404 unless the tenant's
    try:
        async with agent.console_socket(session.tenant, name) as upstream:
            browser = web.WebSocketResponse(heartbeat=30)
            await browser.prepare(request)
            await relay(browser, upstream)
    except NviError as error:  # before the handshake: the agent refused or is unreachable
        if getattr(error, "status", None) == 404:
            raise web.HTTPNotFound(text=str(error)) from None
        raise web.HTTPBadGateway(text=str(error)) from None
    return browser


async def relay(browser: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Both ways until either side closes; the agent's close message ("exit N") reaches the
    browser."""
    closing = {"reason": "closed"}

    async def keys() -> None:
        async for message in browser:
            if message.type == WSMsgType.BINARY:
                await upstream.send_bytes(message.data)
            elif message.type == WSMsgType.TEXT:
                await upstream.send_str(message.data)

    async def output() -> None:
        while True:
            message = await upstream.receive()
            if message.type == WSMsgType.BINARY:
                await browser.send_bytes(message.data)
            elif message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                if message.type == WSMsgType.CLOSE and message.extra:
                    closing["reason"] = str(message.extra)[:120]
                return
            elif message.type == WSMsgType.ERROR:
                return

    tasks = {asyncio.create_task(keys()), asyncio.create_task(output())}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(ConnectionError):
        await browser.close(message=closing["reason"].encode())
