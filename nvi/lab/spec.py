"""The lab file: a plain description of clouds, routers and servers, checked before anything runs.

Like Mininet's `topo.py`, this module only describes; `nvi.lab.net` realises the description on
the machine. Every check a lab file can fail happens here, so a bad file creates nothing.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import netaddr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nvi.core.errors import NviError
from nvi.core.model import CIDR, IPAddress, Name, NodeKind, parse_pool
from openflow.flows import PAIR_IDLE_TIMEOUT

# Lab names carry no dash, so the prefix `nvi-<lab>-` of one lab never matches another lab's.
LabName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,7}$")]
# Member names become interface names inside namespaces: at most 12 characters.
MemberName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,11}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Cloud(_Strict):
    """One underlay L2 segment: a data centre or a provider's network."""

    name: MemberName
    subnet: str

    @field_validator("subnet")
    @classmethod
    def _cidr(cls, value: str) -> str:
        network = _parse_network(value)
        if network.version != 4 or network.prefixlen > 29:
            raise ValueError(f"{value} must be an IPv4 subnet of /29 or larger")
        return str(network.cidr)

    @property
    def network(self) -> netaddr.IPNetwork:
        return netaddr.IPNetwork(self.subnet)


class Router(_Strict):
    """Routes between the clouds it has an address in, like an internet path between sites."""

    name: MemberName
    addresses: dict[MemberName, str] = Field(min_length=1)

    @field_validator("addresses")
    @classmethod
    def _ips(cls, value: dict[str, str]) -> dict[str, str]:
        return {cloud: _parse_ip(address) for cloud, address in value.items()}


class Server(_Strict):
    """One independent server: its own OVS, and only its own underlay facts."""

    name: MemberName
    cloud: MemberName
    address: str
    locators: str = Field(description="pool of underlay addresses for nodes: CIDR or first-last")
    floating: str | None = Field(
        None, description="pool of floating addresses tenants attach to its nodes (1:1 NAT)"
    )

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _parse_ip(value)

    @field_validator("locators", "floating")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None and parse_pool(value).version != 4:
            raise ValueError(f"{value} is not an IPv4 pool")
        return value

    @property
    def locator_pool(self) -> netaddr.IPRange:
        return parse_pool(self.locators)

    def pools(self) -> list[tuple[str, netaddr.IPRange]]:
        """Its underlay pools, each named by what it is for and as written."""
        named = [("locator pool", self.locators), ("floating pool", self.floating)]
        return [(f"{kind} {text}", parse_pool(text)) for kind, text in named if text is not None]


class SingleHomed(_Strict):
    """A member on one cloud at one address (the directory, the outside host)."""

    name: MemberName
    cloud: MemberName
    address: str

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        return _parse_ip(value)


class Directory(SingleHomed):
    """The federation directory: a service on one cloud's underlay, reached by IP like any
    internet service. With it, every server also runs its controller."""

    name: MemberName = "directory"
    port: int = Field(7480, ge=1, le=65535)

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"


class Portal(_Strict):
    """The tenants' web portal, run on this machine (it reaches the directory and the agents
    through the lab's access link, so a lab without a directory or a router has none); plain
    HTTP, so on loopback only."""

    port: int = Field(7443, ge=1, le=65535)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Outside(SingleHomed):
    """A host beyond a router that stands for the internet: on no server, at an address outside
    every cloud's servers and every tenant network, serving a page that tells each client the
    address it came from (what tenants' outbound access looks like from outside)."""

    name: MemberName = "outside"
    port: int = Field(80, ge=1, le=65535)

    @property
    def url(self) -> str:
        port = "" if self.port == 80 else f":{self.port}"
        return f"http://{self.address}{port}/"


class ControllerSettings(_Strict):
    """What every server's controller is given besides its own facts (tests shorten the
    idle timeout to watch conversations expire)."""

    idle_timeout: int = Field(
        PAIR_IDLE_TIMEOUT, ge=1, le=65535, description="seconds a silent conversation lasts"
    )


class TenantNetwork(_Strict):
    name: Name
    cidr: CIDR
    outbound: bool = False


class Tenant(_Strict):
    """A tenant the lab creates in its directory, with its networks."""

    name: Name
    networks: list[TenantNetwork] = Field(min_length=1)


class LabNode(_Strict):
    """A node the lab asks a server's host agent for, on the tenant's behalf."""

    name: Name
    tenant: Name
    network: Name
    server: MemberName
    kind: NodeKind = NodeKind.CONTAINER
    ip: IPAddress | None = None


class Lab(_Strict):
    """A whole lab; checks that span several sections run when it is built."""

    name: LabName
    clouds: list[Cloud] = Field(min_length=1)
    routers: list[Router] = []
    servers: list[Server] = Field(min_length=1)
    directory: Directory | None = None
    portal: Portal | None = None
    outside: Outside | None = None
    controller: ControllerSettings = ControllerSettings()
    tenants: list[Tenant] = []
    nodes: list[LabNode] = []

    @model_validator(mode="after")
    def _consistent(self) -> Lab:
        for problem in _problems(self):
            raise ValueError(problem)
        return self

    def cloud(self, name: str) -> Cloud:
        return next(c for c in self.clouds if c.name == name)

    def server(self, name: str) -> Server:
        for server in self.servers:
            if server.name == name:
                return server
        raise NviError(f"lab {self.name} has no server {name!r}")

    def member_names(self) -> list[str]:
        members: list[Cloud | Router | Server | Directory] = [
            *self.clouds,
            *self.routers,
            *self.servers,
        ]
        if self.directory:
            members.append(self.directory)
        names = [m.name for m in members]
        return [*names, self.outside.name] if self.outside else names

    def gateways(self, clouds: set[str], member: str) -> list[tuple[str, str]]:
        """(subnet, gateway) routes for a member attached to `clouds`, towards every other cloud.

        Clouds form a graph whose edges are routers; each route goes via the address, on one
        of the member's own clouds, of the next router on a shortest path. A member never
        routes via itself, so a router gets routes only to clouds beyond its neighbours.
        """
        routes = []
        for target in self.clouds:
            if target.name in clouds:
                continue
            distance = self._distances_to(target.name)
            best: tuple[int, str] | None = None
            for router in self.routers:
                if router.name == member:
                    continue
                for here in sorted(clouds & router.addresses.keys()):
                    beyond = [distance[c] for c in router.addresses if c in distance]
                    if here in distance and beyond and min(beyond) == distance[here] - 1:
                        if best is None or distance[here] < best[0]:
                            best = (distance[here], router.addresses[here])
            if best is not None:
                routes.append((target.subnet, best[1]))
        return routes

    def _distances_to(self, target: str) -> dict[str, int]:
        """Router hops from each cloud to `target` (breadth-first over the cloud graph)."""
        distance = {target: 0}
        frontier = [target]
        while frontier:
            following = []
            for cloud in frontier:
                for router in self.routers:
                    if cloud in router.addresses:
                        for neighbour in router.addresses:
                            if neighbour not in distance:
                                distance[neighbour] = distance[cloud] + 1
                                following.append(neighbour)
            frontier = following
        return distance


def _parse_network(text: str) -> netaddr.IPNetwork:
    try:
        return netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError) as error:
        raise ValueError(f"{text!r} is not a CIDR subnet") from error


def _parse_ip(text: str) -> str:
    try:
        address = netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError) as error:
        raise ValueError(f"{text!r} is not an IP address") from error
    if address.version != 4:
        raise ValueError(f"{text} is not an IPv4 address")
    return str(address)


def _problems(lab: Lab) -> Iterator[str]:
    """Every cross-section inconsistency, in file order; the first one is reported."""
    yield from _tenant_problems(lab)
    seen: set[str] = set()
    for name in lab.member_names():
        if name in seen:
            yield f"duplicate name {name!r}: clouds, routers and servers share one namespace"
        seen.add(name)

    clouds = {c.name: c for c in lab.clouds}
    for i, a in enumerate(lab.clouds):
        for b in lab.clouds[i + 1 :]:
            if a.network.first <= b.network.last and b.network.first <= a.network.last:
                yield f"clouds {a.name} ({a.subnet}) and {b.name} ({b.subnet}) overlap"

    owners: dict[str, str] = {}

    def claim(address: str, cloud_name: str, owner: str) -> Iterator[str]:
        cloud = clouds.get(cloud_name)
        if cloud is None:
            yield f"{owner}: unknown cloud {cloud_name!r}"
            return
        ip = netaddr.IPAddress(address)
        if ip not in cloud.network or ip in (cloud.network.network, cloud.network.broadcast):
            yield (
                f"{owner}: address {address} is not a host address of cloud {cloud_name} "
                f"({cloud.subnet})"
            )
        if address in owners:
            yield f"{owner}: address {address} is already used by {owners[address]}"
        owners[address] = owner

    for router in lab.routers:
        for cloud_name, address in router.addresses.items():
            yield from claim(address, cloud_name, f"router {router.name}")
    for server in lab.servers:
        yield from claim(server.address, server.cloud, f"server {server.name}")
    if lab.directory:
        yield from claim(lab.directory.address, lab.directory.cloud, "the directory")
    if lab.outside:
        yield from claim(lab.outside.address, lab.outside.cloud, "the outside host")
        outside = ipaddress.ip_address(lab.outside.address)
        for tenant in lab.tenants:
            for network in tenant.networks:
                if outside in ipaddress.ip_network(network.cidr):
                    yield (
                        f"the outside host {outside} is inside network "
                        f"{tenant.name}/{network.name} ({network.cidr})"
                    )

    pools: list[tuple[str, netaddr.IPRange]] = []
    for server in lab.servers:
        cloud = clouds.get(server.cloud)
        if cloud is None:
            continue
        network = cloud.network
        for shown, pool in server.pools():
            if not (network.first < pool.first and pool.last < network.last):
                yield (
                    f"server {server.name}: {shown} is not inside the host addresses of cloud "
                    f"{cloud.name} ({cloud.subnet})"
                )
            for address, owner in owners.items():
                if netaddr.IPAddress(address) in pool:
                    yield f"server {server.name}: {shown} contains {owner}'s address {address}"
            for other, other_pool in pools:
                if pool.first <= other_pool.last and other_pool.first <= pool.last:
                    yield f"server {server.name}: {shown} overlaps {other}"
            pools.append((f"server {server.name}'s {shown}", pool))


def _tenant_problems(lab: Lab) -> Iterator[str]:
    """Tenants and nodes need the directory, and must refer to what the file declares."""
    if (lab.tenants or lab.nodes) and lab.directory is None:
        yield "tenants and nodes need a [directory]"
    networks: dict[tuple[str, str], ipaddress.IPv4Network | ipaddress.IPv6Network] = {}
    for tenant in lab.tenants:
        if any(t == tenant.name for t, _ in networks):
            yield f"duplicate tenant {tenant.name!r}"
        for network in tenant.networks:
            if (tenant.name, network.name) in networks:
                yield f"tenant {tenant.name}: duplicate network {network.name!r}"
            networks[(tenant.name, network.name)] = ipaddress.ip_network(network.cidr)
    servers = {s.name for s in lab.servers}
    taken: set[tuple[str, str]] = set()
    for node in lab.nodes:
        where = f"node {node.tenant}/{node.name}"
        if (node.tenant, node.name) in taken:
            yield f"{where}: declared twice"
        taken.add((node.tenant, node.name))
        if node.server not in servers:
            yield f"{where}: unknown server {node.server!r}"
        cidr = networks.get((node.tenant, node.network))
        if cidr is None:
            yield f"{where}: tenant {node.tenant!r} has no network {node.network!r} in this file"
        elif node.ip and ipaddress.ip_address(node.ip) not in cidr:
            yield f"{where}: {node.ip} is outside {node.network} ({cidr})"


def load_lab(path: str | Path) -> Lab:
    """Read and check a lab file; any problem is one NviError line naming the file and the key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise NviError(f"lab file {path}: not found") from error
    except tomllib.TOMLDecodeError as error:
        raise NviError(f"lab file {path}: {error}") from error
    return parse_lab(data, source=str(path))


def parse_lab(data: dict, source: str = "lab") -> Lab:
    try:
        return Lab.model_validate(data)
    except ValidationError as error:
        raise NviError(f"lab file {source}: {_describe(error, data)}") from error


def _describe(error: ValidationError, data: dict) -> str:
    """The first validation problem as `key.path (member name): message`."""
    first = error.errors()[0]
    location = first["loc"]
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    named = _member_name(data, location)
    where = f"{path} ({named})" if named else path
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "missing key"
    else:
        message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _member_name(data: dict, location: tuple) -> str | None:
    if len(location) >= 2 and isinstance(location[1], int):
        section = data.get(location[0])
        if isinstance(section, list) and location[1] < len(section):
            entry = section[location[1]]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                return entry["name"]
    return None
