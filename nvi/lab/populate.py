"""Bring a running lab's declared tenants, networks and nodes into being, idempotently.

Tenants and networks go to the directory with the lab operator's admin credential; each
tenant gets a token of its own (kept in the lab's run directory, mode 0600), and nodes are
asked of their server's host agent with that token, exactly as a tenant would. What exists
already is left alone, so running it again changes nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from federation.client import DirectoryClient
from federation.errors import Conflict
from hostagent.client import AgentClient
from hostagent.errors import AgentError
from nvi.core.config import write_secret
from nvi.lab.net import LabNet
from nvi.lab.nodes import with_directory


def populate(net: LabNet) -> list[str]:
    """Create what the lab file declares and is missing; returns what was created."""
    if not net.lab.tenants and not net.lab.nodes:
        return []
    changes, tokens = with_directory(net, lambda client: _tenants(net, client))
    net.write_client_config()
    return changes + asyncio.run(_nodes(net, tokens))


async def _tenants(net: LabNet, client: DirectoryClient) -> tuple[list[str], dict[str, str]]:
    changes: list[str] = []
    tokens: dict[str, str] = {}
    for tenant in net.lab.tenants:
        try:
            await client.create_tenant(tenant.name)
            changes.append(f"created tenant {tenant.name}")
        except Conflict:
            pass
        for network in tenant.networks:
            try:
                await client.create_network(
                    tenant.name, network.name, network.cidr, outbound=network.outbound
                )
                changes.append(f"created network {tenant.name}/{network.name} ({network.cidr})")
            except Conflict:
                found = await client.get_network(tenant.name, network.name)
                if found.outbound != network.outbound:
                    await client.update_network(
                        tenant.name, network.name, outbound=network.outbound
                    )
                    turned = "on" if network.outbound else "off"
                    changes.append(f"turned outbound {turned} for {tenant.name}/{network.name}")
        path = token_path(net, tenant.name)
        if not path.exists():
            created = await client.create_token(tenant.name, f"lab {net.lab.name}")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_secret(path, created.token)
        tokens[tenant.name] = path.read_text().strip()
    return changes, tokens


async def _nodes(net: LabNet, tokens: dict[str, str]) -> list[str]:
    changes = []
    for node in net.lab.nodes:
        socket = str(net.rundir / node.server / "agent.sock")
        async with AgentClient(socket, tenant_token=tokens[node.tenant]) as agent:
            try:
                await agent.show(node.tenant, node.name)
                continue
            except AgentError as error:
                if getattr(error, "status", None) != 404:
                    raise
            created = await agent.create(
                name=node.name,
                tenant=node.tenant,
                network=node.network,
                kind=node.kind,
                ip=node.ip,
            )
            changes.append(
                f"created {node.kind} {node.tenant}/{node.name} on {node.server} ({created.ip})"
            )
    return changes


def token_path(net: LabNet, tenant: str) -> Path:
    """Where the lab keeps a tenant's token (mode 0600), for the tenant's CLI calls."""
    return net.rundir / "tenants" / f"{tenant}.token"
