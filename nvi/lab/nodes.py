"""Tenant nodes as plain network namespaces on a lab server: the smallest thing that sends
packets like a VM or a container, published to the directory like one.

Tests, benchmarks and the data-plane demo use these until (and beside) the host agent's
containers and VMs. A node's namespace is `nvi-<lab>-<server>.<node>`, so `nvi lab down`
removes it with its server.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from federation.client import DirectoryClient
from federation.errors import NotFound, Unauthorized
from nvi.core.config import write_secret
from nvi.core.errors import NviError
from nvi.core.ports import LOCATOR, NodePort, vsctl_rows, vsctl_set_args
from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.ovs import BRIDGE
from nvi.lab.spec import Server

INSIDE = "eth0"
T = TypeVar("T")


@dataclass(frozen=True)
class NetnsNode:
    name: str
    tenant: str
    network: str
    server: str
    netns: str
    port: str
    ip: str
    mac: str
    locator: str
    dhcp: bool = False  # configure eth0 by DHCP (from the server's controller), like a VM


def node_mac(tenant: str, name: str) -> str:
    digest = hashlib.sha256(f"{tenant}/{name}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x52, 0x54, *digest[:4]))


def free_locator(net: LabNet, server: Server) -> str:
    """The first locator of the server's pool that no port on its bridge holds."""
    answer = net.ovs(server).vsctl("--format=json", "--columns=external_ids", "list", "Interface")
    used = {row["external_ids"].get(LOCATOR) for row in vsctl_rows(answer)}
    for address in server.locator_pool:
        if str(address) not in used:
            return str(address)
    raise NviError(f"server {server.name}: locator pool {server.locators} is exhausted")


async def add_node(
    net: LabNet,
    client: DirectoryClient,
    server_name: str,
    tenant: str,
    network: str,
    name: str,
    ip: str,
    dhcp: bool = False,
) -> NetnsNode:
    """Publish the node, then plug it: a namespace with eth0 on the server's bridge, its
    address set statically or (`dhcp`) left for a DHCP client to ask the server for."""
    server = net.lab.server(server_name)
    record = await client.get_network(tenant, network)
    locator = free_locator(net, server)
    mac = node_mac(tenant, name)
    async with DirectoryClient(
        client.url,
        net.server_token(server),
        tenant_token=await tenant_token(net, client, tenant),
        ca_file=net.ca_file,
    ) as publisher:
        published = await publisher.create_node(
            tenant, name=name, kind="container", network=network, ip=ip, mac=mac, locator=locator
        )
    node = NetnsNode(
        name=name,
        tenant=tenant,
        network=network,
        server=server.name,
        netns=f"{net.netns(server.name)}.{name}",
        port="n" + hashlib.sha256(f"{tenant}/{name}".encode()).hexdigest()[:10],
        ip=ip,
        mac=mac,
        locator=locator,
        dhcp=dhcp,
    )
    try:
        await asyncio.to_thread(_plug, net, server, node, record.cidr, record.gateway, published.id)
    except BaseException:
        await asyncio.to_thread(_unplug, net, node)
        await client.delete_node(tenant, name)
        raise
    return node


async def tenant_token(net: LabNet, admin: DirectoryClient, tenant: str) -> str:
    """A token of the tenant, made once by the lab's admin: a server publishes a node only
    with the tenant's token, as an agent does with the token its tenant gave it."""
    path = net.rundir / "tenants" / f"{tenant}.token"
    if path.exists():
        secret = path.read_text().strip()
        async with DirectoryClient(admin.url, secret, ca_file=net.ca_file) as client:
            try:
                if (await client.whoami()).tenant == tenant:
                    return secret
            except Unauthorized:
                pass  # the tenant was re-created since: make a new token
    secret = (await admin.create_token(tenant, "lab nodes")).token
    path.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(path, secret)
    net.write_client_config()
    return secret


async def remove_node(net: LabNet, client: DirectoryClient, node: NetnsNode) -> None:
    """Unpublish, then unplug; both are harmless when already done."""
    try:
        await client.delete_node(node.tenant, node.name)
    except NotFound:
        pass
    await asyncio.to_thread(_unplug, net, node)


def _unplug(net: LabNet, node: NetnsNode) -> None:
    net.ovs(net.lab.server(node.server)).vsctl("--if-exists", "del-port", BRIDGE, node.port)
    links.remove_netns(node.netns)


def _plug(
    net: LabNet, server: Server, node: NetnsNode, cidr: str, gateway: str, node_id: str
) -> None:
    server_ns = net.netns(server.name)
    links.ensure_netns(
        node.netns,
        {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"},
    )
    links.ensure_veth(server_ns, node.port, node.netns, INSIDE)
    links.run_in(node.netns, ["ip", "link", "set", INSIDE, "address", node.mac])
    links.ensure_up(server_ns, node.port)
    links.ensure_up(node.netns, INSIDE)
    if not node.dhcp:
        prefixlen = ipaddress.ip_network(cidr).prefixlen
        links.ensure_address(node.netns, INSIDE, node.ip, prefixlen)
        links.ensure_route(node.netns, "0.0.0.0/0", gateway)
    ids = NodePort(
        node_id=node_id,
        tenant=node.tenant,
        network=node.network,
        ip=node.ip,
        cidr=cidr,
        gateway=gateway,
        locator=node.locator,
        mac=node.mac,
    ).external_ids()
    net.ovs(server).vsctl(
        "--may-exist",
        "add-port",
        BRIDGE,
        node.port,
        "--",
        "set",
        "interface",
        node.port,
        *vsctl_set_args(ids),
    )


def with_directory(net: LabNet, work: Callable[[DirectoryClient], Awaitable[T]]) -> T:
    """Run `work` with an admin client of the lab's directory, from inside the lab."""
    return net.call_directory(work)
