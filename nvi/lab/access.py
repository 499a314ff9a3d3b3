"""The lab's access link: how this machine's own (root) namespace reaches the lab's public
services, the directory and the agents, over HTTPS, as a user's computer reaches a cloud
through the internet.

It is a veth from the root namespace to one of the lab's routers, on a small segment of its
own (a /29 of 100.64.0.0/10 chosen by the lab's name). The root namespace gets a host route
(/32) for each of the lab's public services only — the directory and every server's agent —
via the router, never a whole cloud subnet: the lab's subnets are documentation ranges, and
the machine may reach real things in them (a package mirror); an address on one of the
machine's own links is never taken over. Every lab member gets a route back to the segment,
computed like its routes between clouds. Tenant nodes gain nothing: they never reach the
underlay at all (tests/integration/test_trust.py).

The root end is named `nvi-<lab>-x` (the tag: `down` removes exactly it; its routes go with
it), with the alias `nvi-lab=<lab>`. The router's end lives and dies with the router.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from dataclasses import dataclass

from pyroute2 import IPRoute

from nvi.core.errors import NviError
from nvi.lab import links
from nvi.lab.spec import Cloud, Lab, Router

SEGMENT = "-access"
"""The access segment's name as a pseudo-cloud: not a valid member name, so never a clash."""
ROUTER_END = "_access"
"""The router's end of the link (cloud names, which name router interfaces, have no '_')."""
SPACE = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True)
class AccessLink:
    """Where the link goes, and its addresses: pure facts from the lab file."""

    lab: str
    router: str
    subnet: str
    router_address: str
    root_address: str

    @property
    def root_end(self) -> str:
        return f"nvi-{self.lab}-x"

    @property
    def alias(self) -> str:
        return f"nvi-lab={self.lab}"

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def plan(lab: Lab) -> AccessLink | None:
    """The link of a lab with a directory: to a router on the directory's cloud (else the
    first router). None for labs without a directory or without a router."""
    if lab.directory is None or not lab.routers:
        return None
    on_directory = [r for r in lab.routers if lab.directory.cloud in r.addresses]
    router = (on_directory or lab.routers)[0]
    blocks = SPACE.num_addresses // 8
    index = int.from_bytes(hashlib.sha256(lab.name.encode()).digest()[:4], "big") % blocks
    subnet = ipaddress.ip_network((int(SPACE.network_address) + 8 * index, 29))
    return AccessLink(lab.name, router.name, str(subnet), str(subnet[1]), str(subnet[2]))


def routing(lab: Lab, link: AccessLink | None) -> Lab:
    """The lab as its members route: with the access segment as one more cloud, on which the
    chosen router has an address (not validated: the segment is no member's to name)."""
    if link is None:
        return lab
    segment = Cloud.model_construct(name=SEGMENT, subnet=link.subnet)
    routers = [
        Router.model_construct(name=r.name, addresses={**r.addresses, SEGMENT: link.router_address})
        if r.name == link.router
        else r
        for r in lab.routers
    ]
    return lab.model_copy(update={"clouds": [*lab.clouds, segment], "routers": routers})


def ensure(link: AccessLink, router_ns: str, lab: Lab) -> list[str]:
    """Create or repair the link and the root namespace's routes; returns what changed. A
    route the machine already has to a lab address through something else (another lab's
    link, its own network) is left alone, which is no change: `routed` shows what goes
    through this link. Routes through it to addresses no longer in the lab are removed."""
    changes = []
    with IPRoute() as ipr, IPRoute(netns=router_ns) as router:
        here = ipr.link_lookup(ifname=link.root_end)
        there = router.link_lookup(ifname=ROUTER_END)
        if not (here and there):
            for index in here:
                ipr.link("del", index=index)
            for index in there:
                router.link("del", index=index)
            ipr.link(
                "add",
                ifname=link.root_end,
                kind="veth",
                peer={"ifname": ROUTER_END, "net_ns_fd": router_ns},
            )
            (index,) = ipr.link_lookup(ifname=link.root_end)
            ipr.link("set", index=index, ifalias=link.alias)
            changes.append(f"access link: created {link.root_end} to router {link.router}")
    if changes:
        # Forwarded TCP with partial checksums would be corrupted by the servers' userspace
        # switches when they rewrite it: compute them in the kernel, as on every lab veth.
        _ethtool_tx_off(link.root_end)
        links.run_in(router_ns, ["ethtool", "-K", ROUTER_END, "tx", "off"])
    if links.ensure_up(router_ns, ROUTER_END):
        changes.append(f"access link: set {ROUTER_END} of {link.router} up")
    if links.ensure_address(router_ns, ROUTER_END, link.router_address, link.prefixlen):
        changes.append(f"access link: router {link.router} address {link.router_address}")
    with IPRoute() as ipr:
        (index,) = ipr.link_lookup(ifname=link.root_end)
        if not ipr.get_links(index)[0]["flags"] & 1:  # IFF_UP
            ipr.link("set", index=index, state="up")
            changes.append(f"access link: set {link.root_end} up")
        present = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=2)}
        if (link.root_address, link.prefixlen) not in present:
            ipr.addr("add", index=index, address=link.root_address, prefixlen=link.prefixlen)
            changes.append(f"access link: this machine's address {link.root_address}")
        wanted = dict(public_addresses(lab))
        routes = ipr.get_routes(family=2, table=254)
        ours = {route.get("dst") for route in _through(routes, index, link)}
        for address in ours - set(wanted.values()):
            ipr.route("del", dst=f"{address}/32", gateway=link.router_address, oif=index)
            changes.append(f"access link: no route to {address} (no longer in the lab)")
        for member, address in wanted.items():
            changes += _ensure_route(ipr, routes, index, member, address, link)
    return changes


def public_addresses(lab: Lab) -> list[tuple[str, str]]:
    """(member, address) of what users reach: the directory and every server's agent."""
    members = [(server.name, server.address) for server in lab.servers]
    return [(lab.directory.name, lab.directory.address), *members] if lab.directory else members


def _ensure_route(
    ipr: IPRoute, routes: list, index: int, member: str, address: str, link: AccessLink
) -> list[str]:
    """A host route to `address` through the link, unless the machine already has one or
    reaches the address otherwise; `routes` is the main table as it was read once."""
    ip = ipaddress.ip_address(address)
    for route in routes:
        dst, length = route.get("dst"), route["dst_len"]
        if (dst, length) == (address, 32) and route.get("oif") == index:
            return []
        if dst is None or route.get("oif") == index:
            continue  # the default route is no claim on the address
        if ip in ipaddress.ip_network(f"{dst}/{length}"):
            return []  # the machine reaches it otherwise (its own network, another lab)
    ipr.route("add", dst=f"{address}/32", gateway=link.router_address, oif=index)
    return [f"access link: route to {member} ({address}) via {link.router_address}"]


def _through(routes: list, index: int, link: AccessLink) -> list:
    """The routes (of the main table, as read) that go through the link."""
    return [
        route
        for route in routes
        if route.get("oif") == index and route.get("gateway") == link.router_address
    ]


def routed(link: AccessLink | None) -> list[str]:
    """The addresses (as /32) the machine routes through this link."""
    if link is None:
        return []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=link.root_end)
        if not found:
            return []
        routes = ipr.get_routes(family=2, table=254)
        return sorted(
            f"{route.get('dst')}/{route['dst_len']}" for route in _through(routes, found[0], link)
        )


def state(link: AccessLink | None) -> str | None:
    """The root end's operational state, or None when it does not exist."""
    if link is None:
        return None
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=link.root_end)
        return ipr.get_links(found[0])[0].get("operstate") if found else None


def remove(link: AccessLink | None) -> list[str]:
    """Delete the root end (its peer and routes go with it); only that link, by its name and
    tag."""
    if link is None:
        return []
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=link.root_end):
            if ipr.get_links(index)[0].get_attr("IFLA_IFALIAS") not in (link.alias, None):
                continue  # not ours after all: someone else's link by that name
            ipr.link("del", index=index)
            return [f"removed the access link {link.root_end}"]
    return []


def _ethtool_tx_off(name: str) -> None:
    result = subprocess.run(["ethtool", "-K", name, "tx", "off"], capture_output=True, text=True)
    if result.returncode != 0:
        raise NviError(f"ethtool on {name} failed: {result.stderr.strip()}")
