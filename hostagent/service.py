"""The agent's REST API (aiohttp): a Unix socket for the server's own operators and tools, and
optionally TCP, where a bearer token is an operator token (its hash in the config) or a tenant
token (checked with the directory). Operations are declared with the directory's `Api` layer,
so validation, roles, errors and the OpenAPI document come from one declaration.

A tenant acts with its own token and sees only its own nodes; another tenant's node answers
exactly as a missing one. An operator acting on a tenant's behalf (create, delete) passes the
tenant's directory token in `X-Tenant-Token`. Either way that token is the tenant's consent:
it goes with the server's own credential when the agent publishes, and is kept no longer than
needed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from federation.client import DirectoryClient
from hostagent.agent import Agent, missing
from hostagent.announcer import Announcer
from hostagent.config import AgentConfig, TcpConfig
from hostagent.console import relay
from hostagent.containers import ContainerDriver
from hostagent.drivers import NodeDriver
from hostagent.errors import Forbidden, Unauthorized
from hostagent.metrics import AgentMetrics
from hostagent.models import (
    DIRECTORY_TOKEN,
    TENANT_TOKEN,
    AgentStatus,
    FloatingAttach,
    ImageInfo,
    NodeCreate,
    NodeInfo,
    NodeQuery,
    Publish,
)
from hostagent.ovs import Switch
from hostagent.publisher import DirectoryPublisher
from hostagent.state import State
from hostagent.tenants import TenantTokens, directory_whoami
from nvi.core.errors import NviError
from nvi.core.metrics import METRICS_PATH, metrics_handler, openapi_path
from nvi.core.model import Name
from nvi.core.rest import Api, Call, Header, Principal, Role, error_response, served
from nvi.core.tls import server_context
from nvi.core.tokens import token_hash
from nvi.core.web import json_errors

log = logging.getLogger(__name__)

CONFIG = web.AppKey("config", AgentConfig)
AGENT = web.AppKey("agent", Agent)
TOKENS = web.AppKey("tokens", TenantTokens)
OPENAPI = web.AppKey("openapi", dict)
METRICS = web.AppKey("metrics", AgentMetrics)
ANNOUNCER = web.AppKey("announcer", Announcer)
SERVING = web.AppKey("serving", asyncio.Event)  # set once the API answers on every endpoint
VERSION = "1.0.0"
OPERATOR = {Role.ADMIN}
ANYONE = {Role.ADMIN, Role.TENANT}
CONSOLE_SOCKET = "/v1/nodes/{tenant}/{name}/console/socket"


def _bearer(request: web.Request) -> str | None:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None


async def authenticate(request: web.Request) -> Principal:
    """Whoever can open the Unix socket is the server's operator; over TCP, the bearer token
    says who it is. A tenant naming another tenant's node is told it does not exist, in the
    very words used for a missing node, before anything is looked up."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return Principal(Role.ADMIN)
    secret = _bearer(request)
    if secret is None:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    tcp = request.app[CONFIG].tcp
    if tcp and token_hash(secret) in tcp.token_sha256:
        return Principal(Role.ADMIN)
    tenant = await request.app[TOKENS].tenant(secret)
    asked = request.match_info.get("tenant", tenant)
    if asked != tenant:
        raise missing(asked, request.match_info.get("name", ""))
    return Principal(Role.TENANT, tenant)


api = Api({"tenant": Name, "name": Name}, authenticate, errors={500: ""})

FOR_TENANT = Header(
    TENANT_TOKEN,
    "An operator acting for a tenant: the tenant's directory token (a tenant sends its own "
    "token as the bearer token)",
)
TOKEN_CHECK = {503: "The directory, which checks tenant tokens, does not answer"}


def _agent(call: Call) -> Agent:
    return call.request.app[AGENT]


def _token(call: Call) -> str | None:
    """The tenant's directory token: a tenant's own bearer token, or what an operator sends."""
    if call.scope():
        return _bearer(call.request)
    return call.request.headers.get(TENANT_TOKEN)


@api.route(
    "GET",
    "/v1/status",
    "This server, its capacity and its subsystems",
    roles=OPERATOR,
    response=AgentStatus,
)
async def status(call: Call) -> AgentStatus:
    answer = await _agent(call).status()
    if ANNOUNCER in call.request.app:
        answer.catalogue = call.request.app[ANNOUNCER].summary()
    return answer


@api.route(
    "GET",
    "/v1/images",
    "Images nodes can be created from",
    roles=ANYONE,
    response=list[ImageInfo],
    errors=TOKEN_CHECK,
)
async def images(call: Call) -> list[ImageInfo]:
    return await _agent(call).images()


@api.route(
    "GET",
    "/v1/nodes",
    "List this server's nodes (a tenant: its own only)",
    roles=ANYONE,
    query=NodeQuery,
    response=list[NodeInfo],
    errors=TOKEN_CHECK,
)
async def list_nodes(call: Call) -> list[NodeInfo]:
    scope, asked = call.scope(), call.query.tenant
    if scope and asked not in (None, scope):
        return []
    return await _agent(call).listing(scope or asked)


@api.route(
    "POST",
    "/v1/nodes",
    "Create a node and publish it (an operator sends the tenant's token in X-Tenant-Token)",
    roles=ANYONE,
    body=NodeCreate,
    response=NodeInfo,
    status=201,
    headers=(FOR_TENANT,),
    errors={
        401: "No credential, an unknown one, or an operator's without X-Tenant-Token",
        403: "A tenant's token creating another tenant's node",
        404: "The tenant has no such network",
        409: "The name or address is taken or not usable in the network, or this server "
        "lacks the kind, the image or the capacity, or a published host port is in use "
        "(code port_in_use)",
        **TOKEN_CHECK,
    },
)
async def create_node(call: Call) -> NodeInfo:
    scope = call.scope()
    if scope and call.body.tenant != scope:
        raise Forbidden(f"a token of tenant {scope} creates nodes of tenant {scope} only")
    node = await _agent(call).create(call.body, _token(call))
    return await _agent(call).show(node.tenant, node.name)


@api.route(
    "GET",
    "/v1/nodes/{tenant}/{name}",
    "Read a node",
    roles=ANYONE,
    response=NodeInfo,
    errors=TOKEN_CHECK,
)
async def show_node(call: Call) -> NodeInfo:
    return await _agent(call).show(call.path["tenant"], call.path["name"])


@api.route(
    "POST",
    "/v1/nodes/{tenant}/{name}/stop",
    "Stop a node (it stays published)",
    roles=ANYONE,
    response=NodeInfo,
    errors={409: "The node is being created or deleted", **TOKEN_CHECK},
)
async def stop_node(call: Call) -> NodeInfo:
    return await _agent(call).stop(call.path["tenant"], call.path["name"])


@api.route(
    "POST",
    "/v1/nodes/{tenant}/{name}/start",
    "Start a stopped node",
    roles=ANYONE,
    response=NodeInfo,
    errors={409: "The node is being created or deleted", **TOKEN_CHECK},
)
async def start_node(call: Call) -> NodeInfo:
    return await _agent(call).start(call.path["tenant"], call.path["name"])


@api.route(
    "DELETE",
    "/v1/nodes/{tenant}/{name}",
    "Delete a node and its directory record (an operator sends X-Tenant-Token)",
    roles=ANYONE,
    status=204,
    headers=(FOR_TENANT,),
    errors={
        401: "No credential, an unknown one, or an operator's without X-Tenant-Token",
        409: "The node is being rolled back",
        **TOKEN_CHECK,
    },
)
async def delete_node(call: Call) -> None:
    await _agent(call).delete(call.path["tenant"], call.path["name"], _token(call))


WAYS_IN = {
    401: "No credential, an unknown one, or an operator's without X-Tenant-Token",
    **TOKEN_CHECK,
}


@api.route(
    "PUT",
    "/v1/nodes/{tenant}/{name}/publish",
    "Replace the node's published ports (host ports of this server forwarded to it)",
    roles=ANYONE,
    body=Publish,
    response=NodeInfo,
    headers=(FOR_TENANT,),
    errors={
        409: "The node is being created or deleted, or a host port is published by another "
        "node or served by the server itself (code port_in_use); nothing changed",
        **WAYS_IN,
    },
)
async def publish_ports(call: Call) -> NodeInfo:
    path = call.path
    return await _agent(call).publish(path["tenant"], path["name"], call.body.publish, _token(call))


@api.route(
    "POST",
    "/v1/nodes/{tenant}/{name}/floating",
    "Attach a floating address of this server to the node (default: the lowest free one)",
    roles=ANYONE,
    body=FloatingAttach,
    response=NodeInfo,
    headers=(FOR_TENANT,),
    errors={
        409: "The node is being created or deleted, or has another floating address "
        "(floating_attached); the server has no pool (no_floating_pool), none free "
        "(floating_exhausted), the address is outside its pool (floating_outside_pool) or "
        "held by another node, here or elsewhere (floating_taken)",
        **WAYS_IN,
    },
)
async def attach_floating(call: Call) -> NodeInfo:
    path, address = call.path, call.body.address
    return await _agent(call).attach_floating(path["tenant"], path["name"], address, _token(call))


@api.route(
    "DELETE",
    "/v1/nodes/{tenant}/{name}/floating",
    "Detach the node's floating address (none attached: nothing to do)",
    roles=ANYONE,
    response=NodeInfo,
    headers=(FOR_TENANT,),
    errors={409: "The node is being created or deleted", **WAYS_IN},
)
async def detach_floating(call: Call) -> NodeInfo:
    path = call.path
    return await _agent(call).detach_floating(path["tenant"], path["name"], _token(call))


@api.route(
    "POST",
    "/v1/drain",
    "Delete every node of this server and its record (needs X-Directory-Token: the "
    "directory's admin token)",
    roles=OPERATOR,
    response=list[NodeInfo],
    headers=(Header(DIRECTORY_TOKEN, "The directory's admin token: it agrees to the drain", True),),
    errors={401: "No operator credential, or no valid X-Directory-Token", 503: ""},
)
async def drain(call: Call) -> list[NodeInfo]:
    return await _agent(call).drain(call.request.headers.get(DIRECTORY_TOKEN))


@api.route(
    "GET",
    "/v1/nodes/{tenant}/{name}/console",
    "The command that attaches to the node's console on this server (operators, locally)",
    roles=OPERATOR,
    response=list[str],
)
async def console(call: Call) -> list[str]:
    agent = _agent(call)
    node = agent.node(call.path["tenant"], call.path["name"])
    return agent.driver(node.kind).console(node)


async def console_socket(request: web.Request) -> web.StreamResponse:
    """The node's console over a WebSocket (see hostagent/console.py), for callers anywhere:
    an aiohttp handler of its own, since the `Api` layer answers JSON only."""
    await authenticate(request)  # operator, or the node's own tenant
    agent = request.app[AGENT]
    node = agent.node(request.match_info["tenant"], request.match_info["name"])
    argv = agent.driver(node.kind).console(node)
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    await relay(ws, argv)
    return ws


def _console_socket_openapi(document: dict) -> dict:
    """The WebSocket's entry, beside the operations the `Api` layer documents."""
    argv_entry = document["paths"]["/v1/nodes/{tenant}/{name}/console"]["get"]
    return {
        "get": {
            "operationId": "console_socket",
            "summary": "Attach to the node's console over a WebSocket (upgrade)",
            "description": "Credentials: admin, tenant. Binary messages carry terminal bytes "
            'both ways; a text message {"rows": R, "cols": C} sets the window size; the '
            'agent closes with "exit N" when the console command ends.',
            "parameters": argv_entry["parameters"],
            "security": [{"bearerAuth": []}],
            "responses": {
                "101": {"description": "Switching to the WebSocket protocol"},
                "400": error_response(
                    400,
                    "Not a WebSocket upgrade",
                    argv_entry["responses"]["500"]["content"]["application/json"]["schema"],
                ),
                **{
                    status: answer
                    for status, answer in argv_entry["responses"].items()
                    if status != "200"
                },
            },
        }
    }


async def agent_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: state, drivers, switch and directory; reconciled before the API answers."""
    config = app[CONFIG]
    state = State(config.database)
    drivers: list[NodeDriver] = [
        ContainerDriver(
            config.docker.url, state.agent_id, config.docker.labels, config.docker.start_timeout
        )
    ]
    if config.vm.enabled:
        from hostagent.vmnode import VmNodeDriver  # needs libvirt-python: only when enabled

        drivers.append(VmNodeDriver(config.vm, state.agent_id, config.state_dir / "vms"))
    publisher = DirectoryPublisher(
        config.directory.url,
        config.directory.credential(),
        config.directory.timeout,
        config.directory.ca_file,
    )
    switch = Switch(config.ovs.db, config.bridge, state.agent_id)
    agent = Agent(config, state, drivers, switch, publisher, app[METRICS])
    app[AGENT] = agent
    app[METRICS].count_nodes(state.nodes, agent.drivers)
    try:
        await switch.start()
        for each in agent.drivers.values():
            await each.prepare()
        await agent.reconcile()
        yield
    finally:
        for each in agent.drivers.values():
            await each.close()
        await switch.close()
        await publisher.close()
        state.close()


async def reconcile_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: periodic repair (missing ports, dead containers, interrupted operations)."""
    task = asyncio.create_task(app[AGENT].reconcile_forever())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def announcer_context(app: web.Application) -> AsyncIterator[None]:
    """Subsystem: this server's catalogue entry (if `[catalogue]` is configured), announced
    once the API answers, renewed every third of the lease and after every create or delete."""
    catalogue = app[CONFIG].catalogue
    if catalogue is None:
        yield
        return
    directory = app[CONFIG].directory
    agent = app[AGENT]
    client = DirectoryClient(
        directory.url,
        directory.credential(),
        timeout=min(directory.timeout, catalogue.lease_seconds / 3),
        ca_file=directory.ca_file,
    )
    announcer = Announcer(
        client.announce,
        lambda: agent.announcement(catalogue),
        catalogue.lease_seconds,
        lambda outcome: app[METRICS].announcements.labels(outcome).inc(),
    )
    app[ANNOUNCER] = announcer
    agent.on_change.append(announcer.poke)
    task = asyncio.create_task(announcer.run_forever(app[SERVING]))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


def make_app(config: AgentConfig) -> web.Application:
    metrics = AgentMetrics()
    app = web.Application(
        middlewares=[metrics.http.middleware(), json_errors(NviError, log, "the agent's log")],
        client_max_size=65536,
    )
    app[CONFIG] = config
    app[METRICS] = metrics
    app[SERVING] = asyncio.Event()
    directory = config.directory
    app[TOKENS] = TenantTokens(
        directory_whoami(directory.url, directory.timeout, directory.ca_file)
    )
    app[OPENAPI] = openapi_document()
    app.cleanup_ctx.append(agent_context)
    app.cleanup_ctx.append(reconcile_context)
    app.cleanup_ctx.append(announcer_context)
    api.add_routes(app)
    app.router.add_get(CONSOLE_SOCKET, console_socket)
    app.router.add_get("/v1/openapi.json", served(app[OPENAPI]))
    app.router.add_get(METRICS_PATH, metrics_handler(metrics.registry))
    return app


def openapi_document() -> dict:
    """The API's OpenAPI document as shipped in docs/api/agent.json (`scripts/openapi`); a
    running agent answers it with its own URL as the server."""
    document = api.openapi(
        "NVI host agent",
        VERSION,
        "One server's nodes. See docs/hostagent.md.",
        [
            {
                "url": "https://{host}:{port}",
                "description": "An agent's TCP listener ([tcp] in its config; HTTPS only). "
                "Its Unix socket answers the same API to the server's operators.",
                "variables": {
                    "host": {"default": "127.0.0.1"},
                    "port": {"default": str(TcpConfig.model_fields["port"].default)},
                },
            }
        ],
    )
    document["paths"][CONSOLE_SOCKET] = _console_socket_openapi(document)
    document["paths"][METRICS_PATH] = openapi_path()
    return document


async def run(config: AgentConfig) -> None:
    """Serve until cancelled; the Unix socket appears only once the agent has reconciled, so
    its existence is the readiness signal."""
    tls = server_context(config.tcp.cert_file, config.tcp.key_file) if config.tcp else None
    app = make_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    config.socket.parent.mkdir(parents=True, exist_ok=True)
    config.socket.unlink(missing_ok=True)
    temporary = config.socket.with_name(config.socket.name + ".new")
    temporary.unlink(missing_ok=True)
    sites: list[web.BaseSite] = [web.UnixSite(runner, str(temporary))]
    if config.tcp:
        sites.append(web.TCPSite(runner, config.tcp.host, config.tcp.port, ssl_context=tls))
    try:
        for site in sites:
            await site.start()
        temporary.chmod(0o600)
        temporary.rename(config.socket)
        app[SERVING].set()
        log.info("agent %s serving on %s", config.name, config.socket)
        await asyncio.Event().wait()
    finally:
        config.socket.unlink(missing_ok=True)
        await runner.cleanup()


def serve(config: AgentConfig) -> None:
    """Run until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        asyncio.run(_until_signal(config))
    except KeyboardInterrupt:
        pass


def _stopper(task: asyncio.Task, sig: signal.Signals) -> Callable[[], None]:
    def stop() -> None:
        log.info("stopping on %s", sig.name)
        task.cancel()

    return stop


async def _until_signal(config: AgentConfig) -> None:
    task = asyncio.create_task(run(config))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(task, sig))
    try:
        await task
    except asyncio.CancelledError:
        pass
