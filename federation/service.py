"""The directory service: the aiohttp application, its routes and its subsystems."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TextIO

from aiohttp import web
from pydantic import StringConstraints

from federation.config import Config, StorageConfig
from federation.directory import Directory
from federation.errors import DirectoryError, Forbidden, Unauthorized
from federation.metrics import DirectoryMetrics
from federation.models import (
    Announcement,
    CatalogueEntry,
    ChangePage,
    ChangesQuery,
    FloatingAddress,
    FloatingAttach,
    FloatingQuery,
    Health,
    Identity,
    LinkCreate,
    Location,
    NetworkCreate,
    NetworkUpdate,
    NodeCreate,
    NodeDeleteQuery,
    NodeQuery,
    NodeUpdate,
    Outbound,
    OutboundQuery,
    Resolution,
    ResolveQuery,
    ServerEnroll,
    ServerEnrolled,
    TenantCreate,
    TokenCreate,
    TokenCreated,
    TokenId,
    TokenInfo,
)
from federation.storage import Store
from federation.storage.etcd import EtcdStore
from federation.storage.sqlite import SqliteStore
from nvi.core.errors import NviError
from nvi.core.metrics import METRICS_PATH, metrics_handler, openapi_path
from nvi.core.model import NAME_PATTERN, IPAddress, Link, Name, Network, Node, Server, Tenant
from nvi.core.rest import Api, Call, Header, Operation, Principal, Role, served
from nvi.core.tls import server_context
from nvi.core.tokens import token_hash
from nvi.core.web import json_errors

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", Config)
DIRECTORY = web.AppKey("directory", Directory)
OPENAPI = web.AppKey("openapi", dict)
AUDIT_LOG = web.AppKey("audit_log", TextIO)
QUIET = web.RequestKey("quiet", bool)  # a change not worth an audit line (a lease renewal)
METRICS = web.AppKey("metrics", DirectoryMetrics)
TENANT_TOKEN = "X-Tenant-Token"
ACTING_FOR = Header(
    TENANT_TOKEN,
    "A server acting for a tenant: that tenant's token; the answer is confined to its tenant",
)

VERSION = "1.0.0"
LinkId = Annotated[
    str, StringConstraints(pattern=f"^(network|node):{NAME_PATTERN[1:-1]}:{NAME_PATTERN[1:-1]}$")
]

ADMIN, TENANT, SERVER = Role.ADMIN, Role.TENANT, Role.SERVER
MANAGE = {ADMIN, TENANT}
LOOKUP = {ADMIN, TENANT, SERVER}


async def authenticate(request: web.Request) -> Principal:
    """Bearer tokens: admin hashes come from the config, server credentials and tenant tokens
    from storage. A server acting for a tenant also sends the tenant's token."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    secret = secret.strip()
    on_behalf = request.headers.get(TENANT_TOKEN, "").strip() or None
    if token_hash(secret) in request.app[CONFIG].auth.admin_token_sha256:
        principal = Principal(Role.ADMIN)
    else:
        tenant, server, for_tenant = await request.app[DIRECTORY].credentials(secret, on_behalf)
        if server is not None:
            if on_behalf is not None and for_tenant is None:
                raise Unauthorized(f"invalid tenant token in {TENANT_TOKEN}")
            return Principal(Role.SERVER, for_tenant, server)
        if tenant is None:
            raise Unauthorized("invalid credentials")
        principal = Principal(Role.TENANT, tenant)
    if on_behalf is not None:
        raise Forbidden(f"only a server credential acts for a tenant ({TENANT_TOKEN})")
    return principal


def audit(
    request: web.Request,
    operation: Operation,
    principal: Principal | None,
    status: int,
    error: str | None,
) -> None:
    """One JSON line per change or refused change: who, what, and how it ended."""
    if status < 400 and request.get(QUIET, False):
        return
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "actor": principal.actor() if principal else {"role": "unauthenticated"},
        "operation": operation.handler.__name__,
        "method": request.method,
        "path": request.path,
        "status": status,
    }
    if request.query_string:
        entry["query"] = request.query_string
    if error is not None:
        entry["error"] = error
    sink = request.app[AUDIT_LOG]
    sink.write(json.dumps(entry, separators=(",", ":")) + "\n")
    sink.flush()


api = Api(
    {
        "tenant": Name,
        "network": Name,
        "node": Name,
        "token_id": TokenId,
        "link_id": LinkId,
        "locator": IPAddress,
        "server": Name,
    },
    authenticate,
    audit,
    errors={500: "", 503: "The storage does not answer, or is too busy; try again later"},
)


def _directory(call: Call) -> Directory:
    return call.request.app[DIRECTORY]


@api.route("GET", "/v1/health", "Report that the service and its storage answer", response=Health)
async def health(call: Call) -> Health:
    directory = _directory(call)
    revision = (await directory.store.get()).revision
    return Health(status="ok", backend=directory.store.backend, revision=revision)


@api.route(
    "GET",
    "/v1/whoami",
    "Who the caller's credential is",
    roles=LOOKUP,
    response=Identity,
    headers=(ACTING_FOR,),
)
async def whoami(call: Call) -> Identity:
    principal = call.principal
    assert principal is not None
    server = principal.server.name if principal.server else None
    return Identity(role=str(principal.role), tenant=principal.tenant, server=server)


def _server(call: Call) -> Server | None:
    """The calling server, if a server calls."""
    return call.principal.server if call.principal else None


@api.route(
    "POST",
    "/v1/servers",
    "Enroll a server with its locator pools and its floating address pools",
    roles={ADMIN},
    body=ServerEnroll,
    response=ServerEnrolled,
    status=201,
    errors={
        409: "The name is enrolled, or a pool overlaps a pool (locator or floating) of another "
        "server",
        422: "The body breaks the schema, or a pool range ends before it starts, or two of its "
        "pools (locator or floating) overlap (arithmetic a schema cannot state)",
    },
)
async def enroll_server(call: Call) -> ServerEnrolled:
    body: ServerEnroll = call.body
    return await _directory(call).enroll_server(body.name, body.pools, body.floating)


@api.route("GET", "/v1/servers", "List enrolled servers", roles={ADMIN}, response=list[Server])
async def list_servers(call: Call) -> list[Server]:
    return await _directory(call).list_servers()


@api.route("GET", "/v1/servers/{server}", "Read a server", roles={ADMIN}, response=Server)
async def get_server(call: Call) -> Server:
    return await _directory(call).get_server(call.path["server"])


@api.route(
    "DELETE",
    "/v1/servers/{server}",
    "Revoke a server's credential and withdraw the nodes it published",
    roles={ADMIN},
    response=list[Node],
)
async def revoke_server(call: Call) -> list[Node]:
    return await _directory(call).revoke_server(call.path["server"])


@api.route(
    "PUT",
    "/v1/catalogue",
    "Announce (or renew) the calling server in the catalogue, as a lease",
    roles={SERVER},
    body=Announcement,
    response=CatalogueEntry,
)
async def announce(call: Call) -> CatalogueEntry:
    server = _server(call)
    assert server is not None
    entry, changed = await _directory(call).announce(server, call.body)
    call.request[QUIET] = not changed
    call.request.app[METRICS].announcements.labels("new" if changed else "renewal").inc()
    return entry


def _catalogue_refused(request: web.Request, principal: Principal) -> NviError:
    """Servers know nothing of each other: a server asking is refused, and counted."""
    metrics = request.app[METRICS]
    metrics.catalogue_reads.labels(str(principal.role)).inc()
    metrics.catalogue_refused.inc()
    return Forbidden("servers do not read the catalogue")


def _count_read(call: Call) -> Directory:
    assert call.principal is not None
    call.request.app[METRICS].catalogue_reads.labels(str(call.principal.role)).inc()
    return _directory(call)


@api.route(
    "GET",
    "/v1/catalogue",
    "The servers that announced themselves, and whether their lease runs (users only)",
    roles=MANAGE,
    response=list[CatalogueEntry],
    refusal=_catalogue_refused,
)
async def catalogue(call: Call) -> list[CatalogueEntry]:
    return await _count_read(call).catalogue()


@api.route(
    "GET",
    "/v1/catalogue/{server}",
    "One server's catalogue entry (users only)",
    roles=MANAGE,
    response=CatalogueEntry,
    refusal=_catalogue_refused,
)
async def catalogue_entry(call: Call) -> CatalogueEntry:
    return await _count_read(call).catalogue_entry(call.path["server"])


@api.route(
    "POST",
    "/v1/tenants",
    "Create a tenant",
    roles={ADMIN},
    body=TenantCreate,
    response=Tenant,
    status=201,
    errors={409: "The tenant exists"},
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
    errors={409: "The tenant still has networks"},
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
    errors={
        409: "The name is taken, or the cidr overlaps another network of the tenant",
        422: "The body breaks the schema, or the gateway is not a host address of the cidr "
        "(arithmetic a schema cannot state)",
    },
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
    "PATCH",
    "/v1/tenants/{tenant}/networks/{network}",
    "Turn a network's outbound access (source NAT) on or off",
    roles=MANAGE,
    body=NetworkUpdate,
    response=Network,
)
async def update_network(call: Call) -> Network:
    return await _directory(call).update_network(
        call.path["tenant"], call.path["network"], call.body
    )


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/networks/{network}",
    "Delete a network that has no nodes, and its links",
    roles=MANAGE,
    status=204,
    errors={409: "The network still has nodes"},
)
async def delete_network(call: Call) -> None:
    await _directory(call).delete_network(call.path["tenant"], call.path["network"])


@api.route(
    "POST",
    "/v1/tenants/{tenant}/nodes",
    "Publish a node (the hosting server's credential, with the tenant's token)",
    roles={SERVER},
    body=NodeCreate,
    response=Node,
    status=201,
    on_behalf=True,
    errors={
        403: "Not a server credential with its tenant's token, or a locator outside the "
        "server's pools",
        404: "The tenant or the network does not exist",
        409: "The name, address, MAC or locator is taken, or the address is not a usable one "
        "of the network, or the network is full",
    },
)
async def create_node(call: Call) -> Node:
    server = _server(call)
    assert server is not None
    return await _directory(call).create_node(call.path["tenant"], call.body, server)


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
    "Move a node to the calling server (its credential, with the tenant's token)",
    roles={SERVER},
    body=NodeUpdate,
    response=Node,
    on_behalf=True,
    errors={
        403: "Not a server credential with its tenant's token, or a locator outside the "
        "server's pools",
        409: "The locator is taken",
    },
)
async def move_node(call: Call) -> Node:
    server = _server(call)
    assert server is not None
    return await _directory(call).move_node(
        call.path["tenant"], call.path["node"], call.body, server
    )


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/nodes/{node}",
    "Delete a node and its node links (a server: withdraw a node it published)",
    roles=LOOKUP,
    query=NodeDeleteQuery,
    status=204,
    headers=(ACTING_FOR,),
)
async def delete_node(call: Call) -> None:
    await _directory(call).delete_node(
        call.path["tenant"], call.path["node"], server=_server(call), locator=call.query.locator
    )


@api.route(
    "PUT",
    "/v1/tenants/{tenant}/nodes/{node}/floating",
    "Attach a floating address of the calling server to a node it hosts (its credential, with "
    "the tenant's token)",
    roles={SERVER},
    body=FloatingAttach,
    response=Node,
    on_behalf=True,
    errors={
        403: "Not a server credential with its tenant's token, or the server does not host the "
        "node, or the address is outside the server's floating pools",
        404: "The tenant or the node does not exist",
        409: "code floating_taken: the address is attached to another node; code "
        "floating_attached: the node has another floating address (detach it first)",
    },
)
async def attach_floating(call: Call) -> Node:
    server = _server(call)
    assert server is not None
    return await _directory(call).attach_floating(
        call.path["tenant"], call.path["node"], call.body.address, server
    )


@api.route(
    "DELETE",
    "/v1/tenants/{tenant}/nodes/{node}/floating",
    "Release a node's floating address, if it has one (a server: only of a node it hosts)",
    roles=LOOKUP,
    status=204,
    headers=(ACTING_FOR,),
)
async def detach_floating(call: Call) -> None:
    await _directory(call).detach_floating(
        call.path["tenant"], call.path["node"], server=_server(call)
    )


@api.route(
    "GET",
    "/v1/floating",
    "Which node each attached floating address is attached to, and whose pool it is of",
    roles={ADMIN},
    query=FloatingQuery,
    response=list[FloatingAddress],
)
async def list_floating(call: Call) -> list[FloatingAddress]:
    return await _directory(call).list_floating(call.query.server)


@api.route(
    "POST",
    "/v1/tenants/{tenant}/links",
    "Allow two networks or two nodes to talk",
    roles=MANAGE,
    body=LinkCreate,
    response=Link,
    status=201,
    errors={404: "The tenant or an end does not exist", 409: "The link exists"},
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
    headers=(ACTING_FOR,),
    errors={404: "No such source, or no node holds the destination"},
)
async def resolve(call: Call) -> Resolution:
    return await call.request.app[METRICS].lookup(
        "resolve",
        lambda: _directory(call).resolve(call.query, call.scope(), _server(call)),
        lambda answer: "allowed" if answer.allowed else "denied",
    )


@api.route(
    "GET",
    "/v1/outbound",
    "Whether the source node may reach an address outside its tenant (source NAT)",
    roles=LOOKUP,
    query=OutboundQuery,
    response=Outbound,
    headers=(ACTING_FOR,),
    errors={404: "No such source"},
)
async def outbound(call: Call) -> Outbound:
    return await call.request.app[METRICS].lookup(
        "outbound",
        lambda: _directory(call).outbound(call.query, call.scope(), _server(call)),
        lambda answer: "allowed" if answer.allowed else "denied",
    )


@api.route(
    "GET",
    "/v1/locators/{locator}",
    "Find the node holding a locator",
    roles=LOOKUP,
    response=Location,
    headers=(ACTING_FOR,),
)
async def locate(call: Call) -> Location:
    return await call.request.app[METRICS].lookup(
        "locate",
        lambda: _directory(call).locate(call.path["locator"], call.scope(), _server(call)),
        lambda _: "found",
    )


@api.route(
    "GET",
    "/v1/changes",
    "Read (or wait for) changes after a revision",
    roles=LOOKUP,
    query=ChangesQuery,
    response=ChangePage,
    headers=(ACTING_FOR,),
    errors={410: ""},
)
async def changes(call: Call) -> ChangePage:
    query: ChangesQuery = call.query
    scope = call.scope()
    tenants = [scope] if scope else query.tenant
    wait = min(query.wait, call.request.app[CONFIG].max_wait)
    server = _server(call)
    metrics = call.request.app[METRICS]
    if wait > 0 and query.since is not None:
        metrics.change_waits.inc()
    with metrics.change_waiters.track_inprogress():
        return await _directory(call).changes(
            query.since, query.limit, wait, tenants, server.name if server else None
        )


def open_store(storage: StorageConfig) -> Store:
    """The backend a storage section names (not yet opened)."""
    if storage.backend == "etcd":
        return EtcdStore(
            storage.endpoints,
            storage.prefix,
            ca_file=storage.ca_file,
            cert_file=storage.cert_file,
            key_file=storage.key_file,
        )
    return SqliteStore(storage.path)


async def storage_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: the store and the directory on top of it."""
    store = open_store(app[CONFIG].storage)
    await store.open()
    app[DIRECTORY] = directory = Directory(store)
    await directory.start()
    app[METRICS].store.info({"backend": store.backend})
    app[METRICS].follow(directory.feed)
    yield
    await directory.stop()
    await store.close()


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: the audit log, one JSON line per change (appended, never rewritten)."""
    path: Path = app[CONFIG].audit_log
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as sink:
        app[AUDIT_LOG] = sink
        yield


async def pruning_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: keep the change log bounded (older cursors get 410 and resynchronise)."""
    config = app[CONFIG]

    async def prune_forever() -> None:
        while True:
            try:
                await app[DIRECTORY].prune(config.change_retention)
            except DirectoryError as error:
                log.warning("pruning the change log failed: %s", error)
            await asyncio.sleep(config.prune_interval)

    task = asyncio.create_task(prune_forever())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def make_app(config: Config) -> web.Application:
    metrics = DirectoryMetrics()
    app = web.Application(
        middlewares=[
            metrics.http.middleware(),
            json_errors(NviError, log, "the service log"),
        ],
        client_max_size=config.max_body_bytes,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[OPENAPI] = openapi_document()
    app.cleanup_ctx.append(storage_context)
    app.cleanup_ctx.append(audit_context)
    app.cleanup_ctx.append(pruning_context)
    api.add_routes(app)
    app.router.add_get("/v1/openapi.json", served(app[OPENAPI]))
    app.router.add_get(METRICS_PATH, metrics_handler(metrics.registry))
    return app


def openapi_document() -> dict:
    """The API's OpenAPI document as shipped in docs/api/directory.json (`scripts/openapi`);
    a running directory answers it with its own URL as the server."""
    document = api.openapi(
        "NVI federation directory",
        VERSION,
        "Records that tenants publish and controllers look up. See docs/directory.md.",
        [
            {
                "url": "https://{host}:{port}",
                "description": "A directory (`nvi directory serve`; HTTPS only)",
                "variables": {
                    "host": {"default": "127.0.0.1"},
                    "port": {"default": str(Config.model_fields["port"].default)},
                },
            }
        ],
    )
    document["paths"][METRICS_PATH] = openapi_path()
    return document


def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, over HTTPS only."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tls = server_context(config.tls.cert_file, config.tls.key_file)
    web.run_app(
        make_app(config), host=config.host, port=config.port, ssl_context=tls, access_log=None
    )
