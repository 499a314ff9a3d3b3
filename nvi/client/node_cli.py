"""`nvi node ...`: a tenant's nodes, on whichever servers they run.

Where a command goes:
- `--agent URL|SOCKET` (env NVI_AGENT): that one agent, as before (an operator on a server,
  or a tenant who knows the agent's URL);
- else, with a directory configured (a profile, or --directory): the whole cloud, through
  `Cloud`: `create` places the node by the catalogue (`--server`, `--cloud`), the others find
  the node's server from its directory record;
- else the local agent's socket (an operator on a server with no profile).

Names are `TENANT/NAME`, or `NAME` with `--tenant` (env NVI_TENANT); through the directory a
tenant's own token implies its tenant.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from federation.models import CatalogueEntry
from hostagent.client import DEFAULT_SOCKET, AgentClient
from hostagent.models import NodeInfo
from hostagent.terminal import attach
from nvi.client.cloud import Cloud, NodeView
from nvi.client.options import profile, profile_options, run_cloud
from nvi.client.profiles import Profile
from nvi.core.clitools import option_group, output_option, run_client, show_rows
from nvi.core.errors import NviError
from nvi.core.model import PublishedPort
from nvi.core.output import ProgressLine

T = TypeVar("T")
WAYS_IN = ["floating", "published"]
AGENT_COLUMNS = ["tenant", "name", "kind", "network", "ip", "mac", "locator", "state", "ready"]
AGENT_COLUMNS += WAYS_IN
VIEW_COLUMNS = ["tenant", "name", "kind", "network", "ip", "server", "state", "ready", *WAYS_IN]
POLL_SECONDS = 0.3

_target_options = option_group(
    profile_options,
    click.option(
        "--agent",
        "address",
        envvar="NVI_AGENT",
        help="One agent's socket path or https URL, instead of the cloud's "
        f"(default without a directory: {DEFAULT_SOCKET}) [env NVI_AGENT]",
    ),
    click.option(
        "--agent-token",
        envvar="NVI_AGENT_TOKEN",
        help="The agent's operator token, with --agent over TCP [env NVI_AGENT_TOKEN]",
    ),
    click.option("--tenant", "-t", envvar="NVI_TENANT", help="[env NVI_TENANT]"),
)
_node_options = option_group(_target_options, output_option)
_wait_options = option_group(
    click.option(
        "--wait/--no-wait",
        default=True,
        show_default=True,
        help="Return once the node has booted (a VM's guest has its address), showing progress",
    ),
    click.option(
        "--boot-timeout",
        type=click.FloatRange(min=1),
        default=300,
        show_default=True,
        help="Seconds to wait for the boot",
    ),
)


def show_nodes(output: str, title: str, rows: list[Any], columns: list[str]) -> None:
    """Nodes as `show_documents` shows them, but a table spells published ports as they
    are typed (`8080:80/tcp`), not as their JSON objects."""
    if output == "table":
        rows = [_spelled(row) for row in rows]
    show_rows(output, title, rows, columns)


def _spelled(row: Any) -> Any:
    if not isinstance(row, (NodeInfo, NodeView)):
        return row
    return row.model_dump(mode="json") | {"published": [str(p) for p in row.published]}


def parse_published(texts: tuple[str, ...] | list[str]) -> list[PublishedPort]:
    """`HOST:NODE[/tcp|udp]` arguments; a bad one is the command's one-line error, before
    anything is asked of an agent."""
    return [_published(text) for text in texts]


def _published(text: str) -> PublishedPort:
    try:
        return PublishedPort.parse(text)
    except ValidationError as error:  # a number out of range: say which, in one line
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise NviError(f"published port {text!r}: {where}: {first['msg']}") from None
    except ValueError as error:
        raise NviError(str(error)) from None


def _publish_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
    return parse_published(value)


class Target:
    """Where a command goes: one agent, or the cloud of the profile."""

    def __init__(self, address: str | None, agent_token: str | None, tenant: str | None):
        self.profile: Profile = profile()
        self.address = address or (None if self.profile.directory else DEFAULT_SOCKET)
        self.agent_token = agent_token
        self.tenant = tenant

    @property
    def cloud(self) -> bool:
        return self.address is None

    def name(self, name: str) -> tuple[str | None, str]:
        """(tenant, name) of a node argument; the tenant may stay None in the cloud (the
        token's own), never with one agent."""
        tenant = self.tenant
        if "/" in name:
            tenant, _, name = name.partition("/")
        if not tenant and not self.cloud:
            raise NviError(f"which tenant's {name}? write TENANT/{name} or pass --tenant")
        return tenant or None, name

    def on_agent(self, call: Callable[[AgentClient], Awaitable[T]]) -> T:
        """One call of the one agent: as its operator (socket, --agent-token) or as the
        tenant (the profile's or the given token)."""
        assert self.address is not None
        address, token, ca = self.address, self.profile.token, self.profile.ca_file
        return run_client(
            lambda: AgentClient(
                address, operator_token=self.agent_token, tenant_token=token, ca_file=ca
            ),
            call,
        )

    def on_cloud(self, call: Callable[[Cloud], Awaitable[T]]) -> T:
        return run_cloud(call, self.profile)


async def _create_watching(
    client: AgentClient, body: dict[str, Any], wait: bool, boot_timeout: float, where: str = ""
) -> NodeInfo:
    """Create, showing the agent's step while it works (building an image, starting the
    node), then the boot."""
    tenant, name = body["tenant"], body["name"]
    with ProgressLine(f"{tenant}/{name}{where}") as progress:
        progress.update("asking the agent")
        creating = asyncio.ensure_future(client.create(**body))
        while not (await asyncio.wait({creating}, timeout=POLL_SECONDS))[0]:
            try:
                progress.update((await client.show(tenant, name)).progress)
            except NviError:
                pass  # not reserved yet: the agent is still checking the request
        node = creating.result()
        return await _until_booted(client, node, progress, boot_timeout) if wait else node


async def _until_booted(
    client: AgentClient, node: NodeInfo, progress: ProgressLine, timeout: float
) -> NodeInfo:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        node = await client.show(node.tenant, node.name)
        if node.ready:
            progress.update("booted")
            return node
        if node.state != "running":
            raise NviError(f"node {node.tenant}/{node.name} is {node.state}, not running")
        if asyncio.get_running_loop().time() > deadline:
            raise NviError(
                f"node {node.tenant}/{node.name} runs but did not finish booting in "
                f"{timeout:g} s; its last console line: {node.progress!r} "
                f"(look with: nvi node console {node.tenant}/{node.name})"
            )
        progress.update(f"booting: {node.progress}" if node.progress else "booting")
        await asyncio.sleep(POLL_SECONDS)


@click.group()
def node() -> None:
    """Nodes (containers and VMs), on any server of the cloud."""


@node.command("create")
@click.argument("name")
@click.option("--network", "-n", required=True)
@click.option("--ip", help="Fixed tenant address (default: the lowest free one)")
@click.option("--kind", type=click.Choice(["container", "vm"]), default="container")
@click.option("--image", help="Default: the kind's (containers nvi/busybox:latest, VMs nvi/vm)")
@click.option("--cpus", type=float, default=1, show_default=True)
@click.option("--memory", "memory_mib", type=int, default=128, show_default=True, help="MiB")
@click.option("--server", help="On this server (by its catalogue name)")
@click.option("--cloud", "cloud_label", help="On a server of this cloud (its catalogue label)")
@click.option(
    "--publish",
    "-p",
    multiple=True,
    callback=_publish_option,
    metavar="HOST:NODE[/tcp|udp]",
    help="Forward a port of the server's address to the node (repeatable)",
)
@_wait_options
@_node_options
def create(
    name: str,
    network: str,
    ip: str | None,
    kind: str,
    image: str | None,
    cpus: float,
    memory_mib: int,
    server: str | None,
    cloud_label: str | None,
    publish: list[PublishedPort],
    wait: bool,
    boot_timeout: float,
    address: str | None,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Create NAME (TENANT/NAME) on NETWORK and publish it. Through the directory, the node
    goes to the live server of the catalogue with the most free memory that runs its kind
    and has room (--server, --cloud narrow the choice); with --agent, to that agent."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)
    body: dict[str, Any] = dict(name=name, tenant=owner, network=network, kind=kind, ip=ip)
    body |= dict(image=image) if image else {}
    body |= dict(cpus=cpus, memory_mib=memory_mib)
    body |= dict(publish=[port.model_dump(mode="json") for port in publish]) if publish else {}
    if not target.cloud:
        if server or cloud_label:
            raise NviError("--server and --cloud choose through the directory, not with --agent")
        created = target.on_agent(lambda client: _create_watching(client, body, wait, boot_timeout))
        show_nodes(output, "node", [created], AGENT_COLUMNS)
        return

    async def place(cloud: Cloud) -> NodeView:
        chosen: list[str] = []

        async def on(entry: CatalogueEntry, agent: AgentClient, spec: dict) -> NodeInfo:
            chosen.append(entry.server)
            return await _create_watching(agent, spec, wait, boot_timeout, f" on {entry.server}")

        info = await cloud.create_node(body, server=server, cloud=cloud_label, create=on)
        return NodeView.of(None, info, chosen[-1])

    show_nodes(output, "node", [target.on_cloud(place)], VIEW_COLUMNS)


@node.command("list")
@click.option("--server", help="Only this server's nodes (through the directory)")
@_node_options
def list_(
    server: str | None,
    address: str | None,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """The tenant's nodes on every server, with each one's state (`unknown` while its server
    cannot be reached); with --agent, that agent's nodes."""
    target = Target(address, agent_token, tenant)
    if not target.cloud:
        rows = target.on_agent(lambda client: client.list(tenant))
        show_nodes(output, "nodes", rows, AGENT_COLUMNS)
        return
    views = target.on_cloud(lambda cloud: cloud.nodes(tenant=tenant))
    if server:
        views = [view for view in views if view.server == server]
    show_nodes(output, "nodes", views, VIEW_COLUMNS)


@node.command()
@click.argument("name")
@_node_options
def show(
    name: str, address: str | None, agent_token: str | None, tenant: str | None, output: str
) -> None:
    """One node, with every field."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)
    if target.cloud:
        found: Any = target.on_cloud(lambda cloud: cloud.node(name, tenant=owner))
    else:
        found = target.on_agent(lambda client: client.show(owner or "", name))
    show_nodes(output, "node", [found], list(found.model_dump()))


@node.command()
@click.argument("name")
@_node_options
def stop(
    name: str, address: str | None, agent_token: str | None, tenant: str | None, output: str
) -> None:
    """Stop a node; it keeps its addresses and stays published."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)
    if target.cloud:
        found = target.on_cloud(lambda cloud: cloud.stop(name, tenant=owner))
        show_nodes(output, "node", [found], VIEW_COLUMNS)
    else:
        stopped = target.on_agent(lambda client: client.stop(owner or "", name))
        show_nodes(output, "node", [stopped], AGENT_COLUMNS)


@node.command()
@click.argument("name")
@_wait_options
@_node_options
def start(
    name: str,
    wait: bool,
    boot_timeout: float,
    address: str | None,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Start a stopped node."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)

    async def start_watching(client: AgentClient, tenant: str) -> NodeInfo:
        with ProgressLine(f"{tenant}/{name}") as progress:
            progress.update("starting")
            node = await client.start(tenant, name)
            return await _until_booted(client, node, progress, boot_timeout) if wait else node

    if not target.cloud:
        started = target.on_agent(lambda client: start_watching(client, owner or ""))
        show_nodes(output, "node", [started], AGENT_COLUMNS)
        return

    async def on_cloud(cloud: Cloud) -> NodeView:
        who = await cloud.tenant(owner)
        await start_watching(await cloud.agent_of(name, tenant=who), who)
        return await cloud.node(name, tenant=who)

    show_nodes(output, "node", [target.on_cloud(on_cloud)], VIEW_COLUMNS)


@node.command()
@click.argument("name")
@_node_options
def delete(
    name: str, address: str | None, agent_token: str | None, tenant: str | None, output: str
) -> None:
    """Delete a node and its directory record; deleting a deleted node is harmless."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)
    try:
        if target.cloud:
            target.on_cloud(lambda cloud: cloud.delete(name, tenant=owner))
        else:
            target.on_agent(lambda client: client.delete(owner or "", name))
        result = "deleted"
    except NviError as error:
        if getattr(error, "status", None) != 404:
            raise
        result = "already gone"
    show_rows(
        output,
        "node",
        [{"tenant": owner or "", "name": name, "result": result}],
        ["tenant", "name", "result"],
    )


@node.command()
@click.argument("name")
@_target_options
def console(name: str, address: str | None, agent_token: str | None, tenant: str | None) -> None:
    """Attach to the node's console: a shell in a container, a VM's serial console. Through
    the directory or an agent's https URL it runs on the agent and comes over a WebSocket
    (leave with Ctrl-]; the exit status is the console command's, as with ssh); over the
    agent's Unix socket it runs here."""
    target = Target(address, agent_token, tenant)
    owner, name = target.name(name)

    async def relay(client: AgentClient, tenant: str) -> str:
        async with client.console_socket(tenant, name) as ws:
            return await attach(ws)

    async def on_cloud(cloud: Cloud) -> str:
        who = await cloud.tenant(owner)
        return await relay(await cloud.agent_of(name, tenant=who), who)

    if target.cloud:
        ended = target.on_cloud(on_cloud)
    elif str(target.address).startswith(("http://", "https://")):
        ended = target.on_agent(lambda client: relay(client, owner or ""))
    else:
        argv = target.on_agent(lambda client: client.console(owner or "", name))
        os.execvp(argv[0], argv)
    status = ended.removeprefix("exit ")
    sys.exit(int(status) if status.isdigit() else 0)


def _on_node(
    target: Target, name: str, output: str, call: Callable[[AgentClient, str, str], Awaitable[T]]
) -> None:
    """Make one call of the node's agent (`call(agent, tenant, name)`, answering the node)
    and show the node: with --agent, that agent's; else the server's its record names."""
    owner, name = target.name(name)
    if not target.cloud:
        done = target.on_agent(lambda client: call(client, owner or "", name))
        show_nodes(output, "node", [done], AGENT_COLUMNS)
        return

    async def on_cloud(cloud: Cloud) -> NodeView:
        who = await cloud.tenant(owner)
        await call(await cloud.agent_of(name, tenant=who), who, name)
        return await cloud.node(name, tenant=who)

    show_nodes(output, "node", [target.on_cloud(on_cloud)], VIEW_COLUMNS)


@node.command("publish")
@click.argument("name")
@click.argument("ports", nargs=-1, metavar="[HOST:NODE[/tcp|udp]]...")
@_node_options
def publish_(
    name: str,
    ports: tuple[str, ...],
    address: str | None,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Set the node's published ports to PORTS, replacing what it had (none: remove all).
    The server's address forwards each HOST port to the node's NODE port."""
    wanted = parse_published(ports)
    target = Target(address, agent_token, tenant)
    _on_node(target, name, output, lambda agent, who, name: agent.publish(who, name, wanted))


@node.group()
def floating() -> None:
    """A node's floating address: one of its server's public addresses, mapped to it 1:1."""


@floating.command("attach")
@click.argument("name")
@click.option(
    "--address",
    "floating_address",
    help="This one of the server's floating pool (default: the lowest free one)",
)
@_node_options
def attach_floating(
    name: str,
    floating_address: str | None,
    address: str | None,
    agent_token: str | None,
    tenant: str | None,
    output: str,
) -> None:
    """Attach a floating address to NAME (the same one again changes nothing)."""
    target = Target(address, agent_token, tenant)
    _on_node(
        target,
        name,
        output,
        lambda agent, who, name: agent.attach_floating(who, name, floating_address),
    )


@floating.command("detach")
@click.argument("name")
@_node_options
def detach_floating(
    name: str, address: str | None, agent_token: str | None, tenant: str | None, output: str
) -> None:
    """Detach NAME's floating address (none attached: nothing to do)."""
    target = Target(address, agent_token, tenant)
    _on_node(target, name, output, lambda agent, who, name: agent.detach_floating(who, name))
