"""The operator's view (the directory's admin credential): tenants, enrolled servers with
their pools, and the catalogue. Read-only: enrolling and revoking stay with
`nvi directory server ...`, where the credential is shown once and written to a file."""

from __future__ import annotations

from aiohttp import web

from federation.client import DirectoryClient
from federation.errors import Unavailable
from nvi.core.model import Server, Tenant
from nvi.portal.context import CONFIG, cloud_of, require
from nvi.portal.pages import read, show

routes = web.RouteTableDef()


def add_routes(app: web.Application) -> None:
    app.add_routes(routes)


async def tenants_and_servers(
    request: web.Request, token: str
) -> tuple[list[Tenant], list[Server]]:
    """From the first directory that answers (the profile's fail-over order)."""
    config = request.app[CONFIG]
    failure: Unavailable | None = None
    for url in config.directory:
        async with DirectoryClient(url, token, ca_file=config.ca_file) as directory:
            try:
                return await directory.list_tenants(), await directory.list_servers()
            except Unavailable as error:
                failure = error
    assert failure is not None
    raise failure


@routes.get("/admin")
async def overview(request: web.Request) -> web.Response:
    session = require(request, "admin")
    cloud = await cloud_of(request, session)
    tenants, servers = await read(request, session, tenants_and_servers(request, session.token))
    catalogue = {entry.server: entry for entry in await read(request, session, cloud.catalogue())}
    return show(
        request, session, "admin.html", tenants=tenants, servers=servers, catalogue=catalogue
    )
