"""The words of an NVI topology for Mininet: underlay segments, servers, routers, tenants and
their nodes.

A topology is only a description, a Mininet `Topo` with NVI's facts in its node and link
options; `nvi.mininet.net.NviNet` realises it (as Mininet's `Mininet` realises a `Topo`). Names
here are short (`s1`, `r1`): the realiser prefixes each with the run's tag, and every interface name
(`<tag>_<name>-eth<port>`) must fit Linux's 15 characters, so keep names to 3 characters.
"""

from __future__ import annotations

import ipaddress

from mininet.topo import Topo

SEGMENT, SERVER, ROUTER, NODE = "segment", "server", "router", "node"
UPLINK_PORT = 1  # a server's port into its segment; its nodes get ports 2, 3, ...


class NviTopo(Topo):
    """Servers, each its own switch with its own controller, on plain-IP underlay segments."""

    def __init__(self, *args: object, **params: object) -> None:
        self.tenants: dict[str, dict[str, str]] = {}  # tenant -> network -> CIDR
        super().__init__(*args, **params)

    def addSegment(self, name: str, subnet: str) -> str:
        """An underlay L2 segment (a data centre's network): a plain learning switch."""
        return self.addSwitch(name, role=SEGMENT, subnet=str(ipaddress.IPv4Network(subnet)))

    def addServer(self, name: str, segment: str, address: str, locators: str) -> str:
        """A server: its own bridge and controller, its `address` on `segment`, and its pool of
        locators there (`a.b.c.d/n` or `first-last`, as in a lab file)."""
        self.addSwitch(name, role=SERVER, segment=segment, address=address, locators=locators)
        self.addLink(name, segment, port1=UPLINK_PORT)
        return name

    def addRouter(self, name: str, addresses: dict[str, str]) -> str:
        """A plain IPv4 router with an address on each segment it joins."""
        self.addHost(name, role=ROUTER, addresses=addresses)
        for segment, address in addresses.items():
            prefixlen = ipaddress.IPv4Network(self.nodeInfo(segment)["subnet"]).prefixlen
            self.addLink(name, segment, params1={"ip": f"{address}/{prefixlen}"})
        return name

    def addTenant(self, name: str, networks: dict[str, str]) -> None:
        """A tenant and its networks (name -> CIDR); tenants may use the same CIDRs."""
        self.tenants[name] = networks

    def addTenantNode(self, name: str, tenant: str, network: str, ip: str, server: str) -> str:
        """A tenant's node (a Mininet host) plugged into `server`'s bridge."""
        if network not in self.tenants.get(tenant, {}):
            raise ValueError(f"node {name}: tenant {tenant} has no network {network}")
        self.addHost(name, role=NODE, tenant=tenant, network=network, ip=ip, server=server)
        self.addLink(name, server)
        return name

    # -- what follows from the description ---------------------------------------------------

    def members(self, role: str) -> list[str]:
        return [name for name in self.nodes() if self.nodeInfo(name)["role"] == role]

    def routes(self, server: str) -> list[tuple[str, str | None]]:
        """The server's underlay routes, as its routing table would hold them: its own segment
        on-link, every other segment through a router on its own segment."""
        own = self.nodeInfo(server)["segment"]
        routes: list[tuple[str, str | None]] = [(self.nodeInfo(own)["subnet"], None)]
        for segment in self.members(SEGMENT):
            if segment == own:
                continue
            via = next(
                (
                    addresses[own]
                    for router in self.members(ROUTER)
                    if {own, segment} <= (addresses := self.nodeInfo(router)["addresses"]).keys()
                ),
                None,
            )
            if via is None:
                raise ValueError(f"segment {segment} is not one router away from {server}")
            routes.append((self.nodeInfo(segment)["subnet"], via))
        return routes
