"""`nvi directory ...`: the directory's records, through the profile's directory (or
--directory) with its credential. The service's own commands (serve, init, credential,
audit) come from federation/cli.py, unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from federation.cli import directory as service_commands
from federation.client import DirectoryClient
from federation.models import Outbound
from nvi.client.cloud import Cloud
from nvi.client.options import profile, profile_options
from nvi.core.clitools import option_group, output_option, show_rows
from nvi.core.config import write_secret
from nvi.core.model import LinkKind

T = TypeVar("T")
# Where an operator on the directory's own machine finds it, when nothing else is configured.
LOCAL_DIRECTORY = "https://127.0.0.1:7480"
NETWORK_COLUMNS = ["tenant", "name", "cidr", "gateway", "outbound"]
LINK_COLUMNS = ["tenant", "id", "kind", "a", "b"]
NODE_COLUMNS = ["tenant", "name", "kind", "network", "ip", "mac", "locator", "server", "id"]
SERVER_COLUMNS = ["name", "pools", "floating", "created"]
FLOATING_COLUMNS = ["address", "tenant", "node", "server"]
TOKEN_COLUMNS = ["tenant", "id", "description", "created"]

directory = click.Group(
    "directory",
    help="The federation directory: tenants, tokens, networks, links, servers and lookups.",
    commands=dict(service_commands.commands),
)
_options = option_group(profile_options, output_option)


def _call(use: Callable[[DirectoryClient], Awaitable[T]]) -> T:
    """One call of the directory's client on the profile's directories, in fail-over order."""
    chosen = profile()

    async def go() -> T:
        urls = list(chosen.directory) or [LOCAL_DIRECTORY]
        async with Cloud(urls, chosen.token, chosen.ca_file) as cloud:
            return await cloud.directory(use)

    return asyncio.run(go())


def _done(output: str, title: str, row: dict[str, Any], result: str = "deleted") -> None:
    show_rows(output, title, [row | {"result": result}], [*row, "result"])


@directory.command()
@_options
def health(output: str) -> None:
    """Check that the service and its storage answer."""
    show_rows(output, "health", [_call(DirectoryClient.health)], ["status", "backend", "revision"])


@directory.command()
@_options
def whoami(output: str) -> None:
    """Who the credential is: admin, a tenant, or a server."""
    show_rows(output, "identity", [_call(DirectoryClient.whoami)], ["role", "tenant", "server"])


@directory.group()
def tenant() -> None:
    """Tenants (admin token; a tenant sees only itself)."""


@tenant.command("create")
@click.argument("name")
@_options
def tenant_create(name: str, output: str) -> None:
    """Create tenant NAME and its first token (shown once)."""

    async def call(client: DirectoryClient) -> Any:
        await client.create_tenant(name)
        return await client.create_token(name, "first token")

    show_rows(output, "tenant", [_call(call)], ["tenant", "id", "token"])


@tenant.command("list")
@_options
def tenant_list(output: str) -> None:
    """List tenants."""
    show_rows(output, "tenants", _call(DirectoryClient.list_tenants), ["name"])


@tenant.command("show")
@click.argument("name")
@_options
def tenant_show(name: str, output: str) -> None:
    """Show tenant NAME."""
    found = _call(lambda c: c.get_tenant(name))
    show_rows(output, "tenant", [found], list(found.model_dump()))


@tenant.command("delete")
@click.argument("name")
@_options
def tenant_delete(name: str, output: str) -> None:
    """Delete tenant NAME (it must have no networks)."""
    _call(lambda c: c.delete_tenant(name))
    _done(output, "tenant", {"name": name})


@directory.group()
def token() -> None:
    """Tenant tokens (admin token, or one of the tenant's own)."""


@token.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.option("--description", default="", help="what the token is for")
@_options
def token_create(tenant_name: str, description: str, output: str) -> None:
    """Issue a new token for TENANT (the secret is shown once)."""
    created = _call(lambda c: c.create_token(tenant_name, description))
    show_rows(output, "token", [created], ["tenant", "id", "description", "token"])


@token.command("list")
@click.argument("tenant_name", metavar="TENANT")
@_options
def token_list(tenant_name: str, output: str) -> None:
    """List TENANT's tokens (their ids and descriptions; the secrets are never shown again)."""
    show_rows(output, "tokens", _call(lambda c: c.list_tokens(tenant_name)), TOKEN_COLUMNS)


@token.command("revoke")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("token_id", metavar="ID")
@_options
def token_revoke(tenant_name: str, token_id: str, output: str) -> None:
    """Revoke TENANT's token ID; every agent refuses it within a few seconds."""
    _call(lambda c: c.delete_token(tenant_name, token_id))
    _done(output, "token", {"tenant": tenant_name, "id": token_id}, "revoked")


@directory.group()
def network() -> None:
    """A tenant's networks (tenant token; admin may act for any tenant)."""


@network.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@click.argument("cidr")
@click.option("--gateway", help="Default: the first host address")
@click.option(
    "--outbound",
    type=click.Choice(["on", "off"]),
    default="off",
    show_default=True,
    help="Nodes reach addresses outside the tenant through their server's address (SNAT)",
)
@_options
def network_create(
    tenant_name: str, name: str, cidr: str, gateway: str | None, outbound: str, output: str
) -> None:
    """Create network NAME with CIDR (another tenant may use the same CIDR)."""
    created = _call(
        lambda c: c.create_network(tenant_name, name, cidr, gateway, outbound=outbound == "on")
    )
    show_rows(output, "network", [created], NETWORK_COLUMNS)


@network.command("update")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@click.option(
    "--outbound",
    type=click.Choice(["on", "off"]),
    required=True,
    help="Nodes reach addresses outside the tenant through their server's address (SNAT)",
)
@_options
def network_update(tenant_name: str, name: str, outbound: str, output: str) -> None:
    """Turn outbound access of network NAME on or off; every server follows within a second."""
    updated = _call(lambda c: c.update_network(tenant_name, name, outbound=outbound == "on"))
    show_rows(output, "network", [updated], NETWORK_COLUMNS)


@network.command("list")
@click.argument("tenant_name", metavar="TENANT")
@_options
def network_list(tenant_name: str, output: str) -> None:
    """List TENANT's networks."""
    show_rows(output, "networks", _call(lambda c: c.list_networks(tenant_name)), NETWORK_COLUMNS)


@network.command("show")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@_options
def network_show(tenant_name: str, name: str, output: str) -> None:
    """Show network NAME."""
    found = _call(lambda c: c.get_network(tenant_name, name))
    show_rows(output, "network", [found], NETWORK_COLUMNS)


@network.command("delete")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@_options
def network_delete(tenant_name: str, name: str, output: str) -> None:
    """Delete network NAME (it must have no nodes)."""
    _call(lambda c: c.delete_network(tenant_name, name))
    _done(output, "network", {"tenant": tenant_name, "name": name})


@directory.group()
def link() -> None:
    """A tenant's links: traffic allowed between two of its networks or two of its nodes."""


@link.command("create")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("kind", type=click.Choice([str(kind) for kind in LinkKind]))
@click.argument("a")
@click.argument("b")
@_options
def link_create(tenant_name: str, kind: str, a: str, b: str, output: str) -> None:
    """Allow traffic between networks (KIND network) or nodes (KIND node) A and B."""
    created = _call(lambda c: c.create_link(tenant_name, kind, a, b))
    show_rows(output, "link", [created], LINK_COLUMNS)


@link.command("list")
@click.argument("tenant_name", metavar="TENANT")
@_options
def link_list(tenant_name: str, output: str) -> None:
    """List TENANT's links."""
    show_rows(output, "links", _call(lambda c: c.list_links(tenant_name)), LINK_COLUMNS)


@link.command("delete")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("link_id", metavar="ID")
@_options
def link_delete(tenant_name: str, link_id: str, output: str) -> None:
    """Remove link ID (`kind:a:b`, as listed); conversations it allowed stop within a second."""
    _call(lambda c: c.delete_link(tenant_name, link_id))
    _done(output, "link", {"tenant": tenant_name, "id": link_id})


@directory.command("nodes")
@click.argument("tenant_name", metavar="TENANT")
@click.option("--network", help="only this network's nodes")
@_options
def nodes(tenant_name: str, network: str | None, output: str) -> None:
    """List the directory records of TENANT's nodes (`nvi node list` adds their state)."""
    show_rows(output, "nodes", _call(lambda c: c.list_nodes(tenant_name, network)), NODE_COLUMNS)


@directory.command()
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@_options
def withdraw(tenant_name: str, name: str, output: str) -> None:
    """Remove node NAME's directory record, and only the record: for a node whose server is
    gone for good (`nvi node delete` removes a live node and its record)."""
    _call(lambda c: c.delete_node(tenant_name, name))
    show_rows(
        output,
        "node",
        [{"tenant": tenant_name, "name": name, "result": "withdrawn"}],
        ["tenant", "name", "result"],
    )


@directory.command()
@click.argument("locator")
@_options
def locate(locator: str, output: str) -> None:
    """Show the node that holds underlay address LOCATOR."""
    found = _call(lambda c: c.locate(locator))
    show_rows(output, "node", [found.node], ["tenant", "name", "network", "ip", "mac", "server"])


@directory.command()
@click.argument("tenant_name", metavar="TENANT")
@click.argument("network_name", metavar="NETWORK")
@click.argument("source_ip", metavar="SOURCE_IP")
@click.argument("destination", metavar="DESTINATION_IP")
@_options
def resolve(
    tenant_name: str, network_name: str, source_ip: str, destination: str, output: str
) -> None:
    """What a controller would be told: which node DESTINATION_IP is for the node at
    SOURCE_IP on NETWORK, and whether policy lets them talk."""
    found = _call(
        lambda c: c.resolve(
            destination, tenant=tenant_name, network=network_name, source_ip=source_ip
        )
    )
    row = {
        "source": f"{found.source.name} ({found.source.ip})",
        "destination": f"{found.destination.name} ({found.destination.ip})",
        "server": found.destination.server,
        "allowed": found.allowed,
        "revision": found.revision,
    }
    show_rows(output, "resolution", [found if output != "table" else row], list(row))


@directory.command()
@click.argument("tenant_name", metavar="TENANT")
@click.argument("node_name", metavar="NODE")
@click.argument("destination", metavar="DESTINATION_IP")
@_options
def outbound(tenant_name: str, node_name: str, destination: str, output: str) -> None:
    """What a controller would be told: whether NODE may reach DESTINATION_IP, outside its
    tenant, through its server's source NAT."""

    async def ask(c: DirectoryClient) -> Outbound:
        node = await c.get_node(tenant_name, node_name)
        return await c.outbound(node.id, destination)

    found = _call(ask)
    row = {"node": node_name, "destination": destination, **found.model_dump()}
    show_rows(output, "outbound", [found if output != "table" else row], list(row))


@directory.command()
@click.option("--since", type=click.IntRange(0), help="Last revision seen (default: now)")
@click.option("--wait", type=click.FloatRange(0, 60), default=0, help="Seconds to wait for one")
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant's (repeat)")
@_options
def changes(since: int | None, wait: float, tenants: tuple[str, ...], output: str) -> None:
    """Changes to node records and links after revision --since (the change stream)."""
    page = _call(lambda c: c.changes(since, wait=wait, tenants=tenants))
    rows = [
        {
            "revision": change.revision,
            "type": str(change.type),
            "tenant": change.tenant,
            "what": change.node.name if change.node else change.link.id if change.link else "",
        }
        for change in page.changes
    ]
    if output != "table":
        show_rows(output, "changes", [page], [])
        return
    show_rows(
        output,
        f"changes (now at revision {page.revision})",
        rows,
        list(rows[0]) if rows else ["revision"],
    )


@directory.group()
def server() -> None:
    """Enrolled servers (admin token): each publishes nodes only on its own locator pools.
    (What servers offer users is the catalogue: `nvi server list`.)"""


@server.command("enroll")
@click.argument("name")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    required=True,
    metavar="CIDR|FIRST-LAST",
    help="a locator pool of the server (repeat for several); pools never overlap another's",
)
@click.option(
    "--floating",
    "floating",
    multiple=True,
    metavar="CIDR|FIRST-LAST",
    help="a pool of public addresses its nodes may be given (repeat for several); no pool, "
    "locator or floating, overlaps another",
)
@click.option(
    "--credential-file",
    type=click.Path(dir_okay=False),
    help="write the server's credential here (mode 0600) instead of showing it",
)
@_options
def server_enroll(
    name: str,
    pools: tuple[str, ...],
    floating: tuple[str, ...],
    credential_file: str | None,
    output: str,
) -> None:
    """Enroll server NAME; its credential is shown (or written) once."""
    enrolled = _call(lambda c: c.enroll_server(name, list(pools), floating))
    row = enrolled.model_dump(mode="json")
    if credential_file:
        write_secret(Path(credential_file), enrolled.token)
        row["token"] = f"written to {credential_file}"
    show_rows(output, "server", [row], [*SERVER_COLUMNS, "token"])


@server.command("list")
@_options
def server_list(output: str) -> None:
    """List enrolled servers and their pools (locator and floating)."""
    show_rows(output, "servers", _call(DirectoryClient.list_servers), SERVER_COLUMNS)


@server.command("show")
@click.argument("name")
@_options
def server_show(name: str, output: str) -> None:
    """Show server NAME."""
    show_rows(output, "server", [_call(lambda c: c.get_server(name))], SERVER_COLUMNS)


@server.command("revoke")
@click.argument("name")
@_options
def server_revoke(name: str, output: str) -> None:
    """Revoke server NAME's credential and withdraw the nodes it published."""
    withdrawn = _call(lambda c: c.revoke_server(name))
    show_rows(output, "withdrawn", withdrawn, ["tenant", "name", "ip", "locator"])


@directory.group()
def floating() -> None:
    """Floating addresses: which node each attached one is attached to (servers attach them
    for their nodes: `nvi node floating attach`)."""


@floating.command("list")
@click.option("--server", "server_name", help="only the addresses of this server's pools")
@_options
def floating_list(server_name: str | None, output: str) -> None:
    """List attached floating addresses, their nodes and servers (admin token)."""
    found = _call(lambda c: c.list_floating(server_name))
    show_rows(output, "floating addresses", found, FLOATING_COLUMNS)


@floating.command("detach")
@click.argument("tenant_name", metavar="TENANT")
@click.argument("name")
@_options
def floating_detach(tenant_name: str, name: str, output: str) -> None:
    """Release node NAME's floating address in the directory, and only there: for a node whose
    server is gone for good (`nvi node floating detach` also stops its traffic)."""
    _call(lambda c: c.detach_floating(tenant_name, name))
    _done(output, "floating", {"tenant": tenant_name, "node": name}, "detached")
