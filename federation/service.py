"""The directory service: the aiohttp application, its routes and its subsystems."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from aiohttp import web
from pydantic import StringConstraints

from federation.api import Api, Call, Principal, Role
from federation.config import Config, StorageConfig
from federation.directory import Directory, token_hash
from federation.errors import DirectoryError, Unauthorized
from federation.models import (
    ChangePage,
    ChangesQuery,
    Health,
    Identity,
    LinkCreate,
    Location,
    NetworkCreate,
    NodeCreate,
    NodeQuery,
    NodeUpdate,
    Resolution,
    ResolveQuery,
    TenantCreate,
    TokenCreate,
    TokenCreated,
    TokenId,
    TokenInfo,
)
from federation.storage import Store
from federation.storage.etcd import EtcdStore
from federation.storage.sqlite import SqliteStore
from nvi.model import NAME_PATTERN, IPAddress, Link, Name, Network, Node, Tenant
from nvi.web import json_errors

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
DIRECTORY = web.AppKey("directory", Directory)
OPENAPI = web.AppKey("openapi", dict)

VERSION = "1.0.0"
LinkId = Annotated[
    str, StringConstraints(pattern=f"^(network|node):{NAME_PATTERN[1:-1]}:{NAME_PATTERN[1:-1]}$")
]

ADMIN, TENANT, RESOLVER = Role.ADMIN, Role.TENANT, Role.RESOLVER
MANAGE = {ADMIN, TENANT}
LOOKUP = {ADMIN, TENANT, RESOLVER}


async def authenticate(request: web.Request) -> Principal:
    """Bearer tokens: admin and resolver hashes come from the config, tenant tokens from storage."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    secret = secret.strip()
    auth = request.app[CONFIG].auth
    digest = token_hash(secret)
    if digest in auth.admin_token_sha256:
        return Principal(Role.ADMIN)
    if digest in auth.resolver_token_sha256:
        return Principal(Role.RESOLVER)
    tenant = await request.app[DIRECTORY].tenant_of(secret)
    if tenant is None:
        raise Unauthorized("invalid credentials")
    return Principal(Role.TENANT, tenant)


api = Api(
    {
        "tenant": Name,
        "network": Name,
        "node": Name,
        "token_id": TokenId,
        "link_id": LinkId,
        "locator": IPAddress,
    },
    authenticate,
)


def _directory(call: Call) -> Directory:
    return call.request.app[DIRECTORY]


@api.route("GET", "/v1/health", "Report that the service and its storage answer", response=Health)
async def health(call: Call) -> Health:
    directory = _directory(call)
    revision = (await directory.store.get()).revision
    return Health(status="ok", backend=directory.store.backend, revision=revision)


@api.route("GET", "/v1/whoami", "Who the caller's credential is", roles=LOOKUP, response=Identity)
async def whoami(call: Call) -> Identity:
    assert call.principal is not None
    return Identity(role=str(call.principal.role), tenant=call.principal.tenant)


@api.route(
    "POST",
    "/v1/tenants",
    "Create a tenant",
    roles={ADMIN},
    body=TenantCreate,
    response=Tenant,
    status=201,
)
async def create_tenant(call: Call) -> Tenant:
    return await _directory(call).create_tenant(call.body.name)


@api.route(
    "GET",
    "/v1/tenants",
    "List tenants (a tenant token sees its own)",
    roles=MANAGE,
    response=list[Tenant],
)
async def list_tenants(call: Call) -> list[Tenant]:
    scope = call.scope()
    if scope:
        return [await _directory(call).get_tenant(scope)]
    return await _directory(call).list_tenants()


@api.route("GET", "/v1/tenants/{tenant}", "Read a tenant", roles=MANAGE, response=Tenant)
async def get_tenant(call: Call) -> Tenant:
    return await _directory(call).get_tenant(call.path["tenant"])


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}",
    "Delete a tenant that has no networks",
    roles={ADMIN},
    status=204,
)
async def delete_tenant(call: Call) -> None:
    await _directory(call).delete_tenant(call.path["tenant"])


@api.route(
    "POST",
    "/v1/tenants/{tenant}/tokens",
    "Issue a tenant token",
    roles=MANAGE,
    body=TokenCreate,
    response=TokenCreated,
    status=201,
)
async def create_token(call: Call) -> TokenCreated:
    return await _directory(call).create_token(call.path["tenant"], call.body.description)


@api.route(
    "GET",
    "/v1/tenants/{tenant}/tokens",
    "List a tenant's tokens (never the secrets)",
    roles=MANAGE,
    response=list[TokenInfo],
)
async def list_tokens(call: Call) -> list[TokenInfo]:
    return await _directory(call).list_tokens(call.path["tenant"])


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/tokens/{token_id}",
    "Revoke a tenant token",
    roles=MANAGE,
    status=204,
)
async def delete_token(call: Call) -> None:
    await _directory(call).delete_token(call.path["tenant"], call.path["token_id"])


@api.route(
    "POST",
    "/v1/tenants/{tenant}/networks",
    "Create a network",
    roles=MANAGE,
    body=NetworkCreate,
    response=Network,
    status=201,
)
async def create_network(call: Call) -> Network:
    return await _directory(call).create_network(call.path["tenant"], call.body)


@api.route(
    "GET", "/v1/tenants/{tenant}/networks", "List networks", roles=MANAGE, response=list[Network]
)
async def list_networks(call: Call) -> list[Network]:
    return await _directory(call).list_networks(call.path["tenant"])


@api.route(
    "GET",
    "/v1/tenants/{tenant}/networks/{network}",
    "Read a network",
    roles=MANAGE,
    response=Network,
)
async def get_network(call: Call) -> Network:
    return await _directory(call).get_network(call.path["tenant"], call.path["network"])


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/networks/{network}",
    "Delete a network that has no nodes, and its links",
    roles=MANAGE,
    status=204,
)
async def delete_network(call: Call) -> None:
    await _directory(call).delete_network(call.path["tenant"], call.path["network"])


@api.route(
    "POST",
    "/v1/tenants/{tenant}/nodes",
    "Publish a node",
    roles=MANAGE,
    body=NodeCreate,
    response=Node,
    status=201,
)
async def create_node(call: Call) -> Node:
    return await _directory(call).create_node(call.path["tenant"], call.body)


@api.route(
    "GET",
    "/v1/tenants/{tenant}/nodes",
    "List nodes",
    roles=MANAGE,
    query=NodeQuery,
    response=list[Node],
)
async def list_nodes(call: Call) -> list[Node]:
    return await _directory(call).list_nodes(call.path["tenant"], call.query.network)


@api.route("GET", "/v1/tenants/{tenant}/nodes/{node}", "Read a node", roles=MANAGE, response=Node)
async def get_node(call: Call) -> Node:
    return await _directory(call).get_node(call.path["tenant"], call.path["node"])


@api.route(
    "PATCH",
    "/v1/tenants/{tenant}/nodes/{node}",
    "Move a node (new locator or server)",
    roles=MANAGE,
    body=NodeUpdate,
    response=Node,
)
async def move_node(call: Call) -> Node:
    return await _directory(call).move_node(call.path["tenant"], call.path["node"], call.body)


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/nodes/{node}",
    "Delete a node and its node links",
    roles=MANAGE,
    status=204,
)
async def delete_node(call: Call) -> None:
    await _directory(call).delete_node(call.path["tenant"], call.path["node"])


@api.route(
    "POST",
    "/v1/tenants/{tenant}/links",
    "Allow two networks or two nodes to talk",
    roles=MANAGE,
    body=LinkCreate,
    response=Link,
    status=201,
)
async def create_link(call: Call) -> Link:
    return await _directory(call).create_link(call.path["tenant"], call.body)


@api.route("GET", "/v1/tenants/{tenant}/links", "List links", roles=MANAGE, response=list[Link])
async def list_links(call: Call) -> list[Link]:
    return await _directory(call).list_links(call.path["tenant"])


@api.route(
    "DELETE", "/v1/tenants/{tenant}/links/{link_id}", "Remove a link", roles=MANAGE, status=204
)
async def delete_link(call: Call) -> None:
    await _directory(call).delete_link(call.path["tenant"], call.path["link_id"])


@api.route(
    "GET",
    "/v1/resolve",
    "Find the node holding an address in the source's tenant",
    roles=LOOKUP,
    query=ResolveQuery,
    response=Resolution,
)
async def resolve(call: Call) -> Resolution:
    return await _directory(call).resolve(call.query, call.scope())


@api.route(
    "GET",
    "/v1/locators/{locator}",
    "Find the node holding a locator",
    roles=LOOKUP,
    response=Location,
)
async def locate(call: Call) -> Location:
    return await _directory(call).locate(call.path["locator"], call.scope())


@api.route(
    "GET",
    "/v1/changes",
    "Read (or wait for) changes after a revision",
    roles=LOOKUP,
    query=ChangesQuery,
    response=ChangePage,
)
async def changes(call: Call) -> ChangePage:
    query: ChangesQuery = call.query
    scope = call.scope()
    tenants = [scope] if scope else query.tenant
    wait = min(query.wait, call.request.app[CONFIG].max_wait)
    return await _directory(call).changes(query.since, query.limit, wait, tenants)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


def open_store(storage: StorageConfig) -> Store:
    """The backend a storage section names (not yet opened)."""
    if storage.backend == "etcd":
        return EtcdStore(storage.endpoints, storage.prefix)
    return SqliteStore(storage.path)


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: the store and the directory on top of it."""
    store = open_store(app[CONFIG].storage)
    await store.open()
    app[DIRECTORY] = Directory(store)
    yield
    await store.close()


async def pruning_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: keep the change log bounded (older cursors get 410 and resynchronise)."""
    config = app[CONFIG]

    async def prune_forever() -> None:
        while True:
            try:
                await app[DIRECTORY].store.prune(config.change_retention)
            except DirectoryError as error:
                log.warning("pruning the change log failed: %s", error)
            await asyncio.sleep(config.prune_interval)

    task = asyncio.create_task(prune_forever())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def make_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[json_errors(DirectoryError, log, "the service log")],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[OPENAPI] = api.openapi(
        "NVI federation directory",
        VERSION,
        "Records that tenants publish and controllers look up. See docs/directory.md.",
    )
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(pruning_context)
    api.add_routes(app)
    app.router.add_get("/v1/openapi.json", openapi)
    return app


def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    web.run_app(make_app(config), host=config.host, port=config.port, access_log=None)
