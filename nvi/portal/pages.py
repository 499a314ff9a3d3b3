"""The tenant's pages: sign in and out, nodes on every server with their live state, one node
with its actions, networks and links, and the catalogue of servers. Plain forms and
redirects (POST, then 303 to a page): every page works without JavaScript; only the
console's terminal needs it.

A failure the user can act on (a refused create, a network still in use) comes back as a
notice on the next page; a node that is not the tenant's is a 404, as a missing one is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from nvi.core.errors import NviError
from nvi.core.model import NAME_PATTERN, NodeKind
from nvi.portal.context import (
    CLOUDS,
    COOKIE,
    SESSIONS,
    SIGN_IN,
    TEMPLATES,
    cloud_of,
    end,
    require,
    session_of,
    set_cookie,
)
from nvi.portal.render import page
from nvi.portal.sessions import Session

routes = web.RouteTableDef()
ROLES = ("tenant", "admin")
IN_FLIGHT_REFRESH = 3
"""Seconds between reloads of a page showing a node that is not settled yet (no JavaScript)."""


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)


def status_of(error: BaseException) -> int | None:
    return getattr(error, "status", None)


def show(request: web.Request, session: Session, template: str, **values: Any) -> web.Response:
    """A signed-in page: the session (for the CSRF token and the header) and its notices."""
    return page(
        request.app[TEMPLATES],
        template,
        session=session,
        notices=session.take_notices(),
        **values,
    )


async def act(
    request: web.Request, session: Session, action: Awaitable[Any], back: str, done: str = ""
) -> web.Response:
    """Run a form's action and go back to `back`, with what happened as a notice; a 404 (not
    this tenant's, or gone) is a 404 page; a session whose token the directory no longer
    knows ends."""
    try:
        await action
    except NviError as error:
        if status_of(error) == 404:
            raise web.HTTPNotFound(text=str(error)) from None
        if status_of(error) == 401:
            await end(request.app, session)
            raise web.HTTPSeeOther(SIGN_IN) from None
        session.notices.append(str(error))
    else:
        if done:
            session.notices.append(done)
    raise web.HTTPSeeOther(back)


async def read(request: web.Request, session: Session, what: Awaitable[Any]) -> Any:
    """A page's read: a 404 is the page's 404; a token the directory no longer knows ends the
    session."""
    try:
        return await what
    except NviError as error:
        if status_of(error) == 404:
            raise web.HTTPNotFound(text=str(error)) from None
        if status_of(error) == 401:
            await end(request.app, session)
            raise web.HTTPSeeOther(SIGN_IN) from None
        raise


SIZES = ("cpus", "memory_mib")
NAME = re.compile(NAME_PATTERN)
LINK_ID = re.compile(r"^(network|node):([a-z0-9-]{1,63}):([a-z0-9-]{1,63})$")


def name_in(request: web.Request, key: str = "name") -> str:
    """A name from the URL; anything that cannot be a record's name is simply not found
    (and never reaches the directory's or an agent's paths)."""
    name = request.match_info[key]
    if not NAME.match(name):
        raise web.HTTPNotFound(text=f"no {key} {name!r}")
    return name


def field(form: Any, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


# sign in and out


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    session = session_of(request)
    if session is None:
        raise web.HTTPSeeOther(SIGN_IN)
    raise web.HTTPSeeOther("/admin" if session.role == "admin" else "/nodes")


@routes.get(SIGN_IN)
async def sign_in_page(request: web.Request) -> web.Response:
    if session_of(request) is not None:
        raise web.HTTPSeeOther("/")
    return page(request.app[TEMPLATES], "signin.html", session=None, notices=[], reason="")


@routes.post(SIGN_IN)
async def sign_in(request: web.Request) -> web.Response:
    """Check the token with the directory (whoami); a tenant or the operator gets a session
    holding it, a server's credential or an unknown token gets nothing."""
    token = field(await request.post(), "token")
    reason, status = "", 401
    if not token:
        reason, status = "paste a token", 400
    else:
        cloud = request.app[CLOUDS](token)
        try:
            await cloud.__aenter__()
            identity = await cloud.whoami()
        except NviError as error:
            if status_of(error) in (401, 403):
                reason = "the directory does not know this token"
            else:
                reason, status = f"cannot check the token: {error}", 503
            await cloud.__aexit__(None, None, None)
        else:
            if identity.role in ROLES:
                if (previous := session_of(request)) is not None:
                    await end(request.app, previous)  # never two sessions in one browser
                session = request.app[SESSIONS].open(token, identity.role, identity.tenant)
                session.cloud = cloud
                response = web.HTTPSeeOther("/")
                set_cookie(request, response, session)
                raise response
            await cloud.__aexit__(None, None, None)
            reason, status = f"a {identity.role} credential cannot sign in here", 403
    templates = request.app[TEMPLATES]
    return page(templates, "signin.html", status, session=None, notices=[], reason=reason)


@routes.post("/signout")
async def sign_out(request: web.Request) -> web.Response:
    session = session_of(request)
    if session is not None:
        await end(request.app, session)
    response = web.HTTPSeeOther(SIGN_IN)
    response.del_cookie(COOKIE, path="/")
    raise response


# nodes


def settled(node: Any) -> bool:
    """Nothing in flight: made (or stopped), and booted if running; or its server is not
    answering, which a reload every few seconds would not change."""
    if node.state == "unknown":
        return True
    return node.phase == "ready" and (node.ready or node.state != "running")


@routes.get("/nodes")
async def nodes(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    listed = await read(request, session, cloud.nodes())
    networks = await read(request, session, cloud.networks())
    catalogue = await read(request, session, cloud.catalogue())
    refresh = IN_FLIGHT_REFRESH if not all(settled(node) for node in listed) else None
    clouds = sorted({entry.cloud for entry in catalogue})
    return show(
        request,
        session,
        "nodes.html",
        nodes=listed,
        networks=networks,
        catalogue=catalogue,
        clouds=clouds,
        refresh=refresh,
    )


@routes.post("/nodes")
async def create_node(request: web.Request) -> web.Response:
    """The create form: kind, image, size, network, and where (automatic, a cloud or a server).
    It answers once the agent has made the node (the agent's create waits for it)."""
    session = require(request)
    form = await request.post()
    name = field(form, "name")
    kind = field(form, "kind") or NodeKind.CONTAINER.value
    if kind not in {each.value for each in NodeKind}:
        session.notices.append(f"node {name} not created: no kind {kind}")
        raise web.HTTPSeeOther("/nodes")
    spec: dict[str, Any] = {"name": name, "kind": kind}
    for key in ("network", "image", "ip"):
        if value := field(form, key):
            spec[key] = value
    try:
        if value := field(form, "cpus"):
            spec["cpus"] = float(value)
        if value := field(form, "memory_mib"):
            spec["memory_mib"] = int(value)
        if not all(math.isfinite(spec.get(key, 1)) and spec.get(key, 1) > 0 for key in SIZES):
            raise ValueError
    except ValueError:
        session.notices.append("CPUs and memory are positive numbers (memory in MiB)")
        raise web.HTTPSeeOther("/nodes") from None
    where, _, label = field(form, "where").partition(":")
    server = label if where == "server" and label else None
    cloud_label = label if where == "cloud" and label else None
    cloud = await cloud_of(request, session)
    try:
        await cloud.create_node(spec, server=server, cloud=cloud_label)
    except NviError as error:
        if status_of(error) == 401:
            await end(request.app, session)
            raise web.HTTPSeeOther(SIGN_IN) from None
        session.notices.append(f"node {name} not created: {error}")
        raise web.HTTPSeeOther("/nodes") from None
    session.notices.append(f"node {name} created")
    raise web.HTTPSeeOther(f"/nodes/{name}")


@routes.get("/nodes/{name}")
async def node(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    shown = await read(request, session, cloud.node(name_in(request)))
    refresh = None if settled(shown) else IN_FLIGHT_REFRESH
    return show(request, session, "node.html", node=shown, refresh=refresh)


@routes.post("/nodes/{name}/{action:stop|start|delete}")
async def node_action(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    name, action = name_in(request), request.match_info["action"]
    back = "/nodes" if action == "delete" else f"/nodes/{name}"
    done = {"stop": "stopped", "start": "started", "delete": "deleted"}[action]
    return await act(request, session, getattr(cloud, action)(name), back, f"node {name} {done}")


# networks and links


@routes.get("/networks")
async def networks(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    listed = await read(request, session, cloud.networks())
    links = await read(request, session, cloud.links())
    nodes = await read(request, session, cloud.nodes())
    return show(request, session, "networks.html", networks=listed, links=links, nodes=nodes)


@routes.post("/networks")
async def create_network(request: web.Request) -> web.Response:
    session = require(request)
    form = await request.post()
    cloud = await cloud_of(request, session)
    name, cidr = field(form, "name"), field(form, "cidr")
    gateway = field(form, "gateway") or None
    action = cloud.create_network(name, cidr, gateway)
    return await act(request, session, action, "/networks", f"network {name} created")


@routes.post("/networks/{name}/delete")
async def delete_network(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    name = name_in(request)
    return await act(
        request, session, cloud.delete_network(name), "/networks", f"network {name} deleted"
    )


@routes.post("/links")
async def create_link(request: web.Request) -> web.Response:
    session = require(request)
    form = await request.post()
    cloud = await cloud_of(request, session)
    kind, a, b = field(form, "kind"), field(form, "a"), field(form, "b")
    done = f"{kind} link {a}–{b} made"
    return await act(request, session, cloud.create_link(kind, a, b), "/networks", done)


@routes.post("/links/{id}/delete")
async def delete_link(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    link = request.match_info["id"]
    if not LINK_ID.match(link):
        raise web.HTTPNotFound(text=f"no link {link!r}")
    return await act(request, session, cloud.delete_link(link), "/networks", f"link {link} removed")


# the catalogue


@routes.get("/servers")
async def servers(request: web.Request) -> web.Response:
    session = require(request)
    cloud = await cloud_of(request, session)
    catalogue = await read(request, session, cloud.catalogue())
    return show(request, session, "servers.html", catalogue=catalogue)
