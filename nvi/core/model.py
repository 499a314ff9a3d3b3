"""Domain types shared by the directory, the host agent and the controller.

They are pydantic models so that the same definition validates API input, serialises API
output and documents both in the OpenAPI schema.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import netaddr
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, WithJsonSchema

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
"""A DNS label: safe in URLs, storage keys and interface names, and easy to type."""

Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=63)]


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_IPV6 = "(([0-9a-f]{1,4}:){7}[0-9a-f]{1,4}|([0-9a-f]{1,4}:){1,7}:|:(:[0-9a-f]{1,4}){1,7}|::)"
"""IPv4 as `ipaddress` reads it (no leading zeros), and IPv6 in full or with a leading or
trailing `::`: patterns for JSON schemas, where formats cannot be combined with a prefix."""


def _canonical_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _canonical_cidr(value: str) -> str:
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise ValueError(f"{value!r} is not a network in CIDR notation ({error})") from None
    if network.num_addresses < 4:
        raise ValueError(f"{value!r} leaves no room for a gateway and a node")
    return str(network)


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def _canonical_mac(value: str) -> str:
    mac = value.lower().replace("-", ":")
    if not _MAC.match(mac):
        raise ValueError(f"{value!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(mac[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast MAC address")
    if mac == "00:00:00:00:00:00":
        raise ValueError("the all-zero MAC address is not a node address")
    return mac


IPAddress = Annotated[
    str,
    StringConstraints(max_length=45),
    AfterValidator(_canonical_ip),
    WithJsonSchema(
        {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}], "maxLength": 45}
    ),
]
CIDR = Annotated[
    str,
    StringConstraints(max_length=49),
    AfterValidator(_canonical_cidr),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 49,
            "anyOf": [
                {"pattern": f"^{_IPV4}/([0-9]|[12][0-9]|30)$"},
                {"pattern": f"^{_IPV6}/([0-9]|[1-9][0-9]|1[01][0-9]|12[0-6])$"},
            ],
            "description": "Host bits zero, room for a gateway and a node (IPv4: /0 to /30)",
            "examples": ["10.0.0.0/24"],
        }
    ),
]
MAC = Annotated[
    str,
    StringConstraints(max_length=17),
    AfterValidator(_canonical_mac),
    WithJsonSchema(
        {
            "type": "string",
            "description": "A unicast MAC address, not all zeros",
            "pattern": "^[0-9a-fA-F][02468aceACE]([:-][0-9a-fA-F]{2}){5}$",
            "not": {"pattern": "^00([:-]00){5}$"},
        }
    ),
]


SERVER_NAT_PORTS = (61000, 65535)
"""The server's own source ports for outbound NAT (above Linux's ephemeral range, 32768-60999):
never a published port, so a reply to a NATed flow is never taken for a published one."""


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


_PUBLISHED = re.compile(r"^(\d{1,5}):(\d{1,5})(?:/(tcp|udp))?$")


class PublishedPort(BaseModel):
    """A port of the server's own address forwarded to a port of one node (`docker run -p`):
    written `HOST:NODE[/tcp|udp]`, TCP by default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_port: int = Field(
        ge=1,
        le=SERVER_NAT_PORTS[0] - 1,
        description="On the server's underlay address; below the server's NAT ports",
    )
    node_port: int = Field(ge=1, le=65535)
    protocol: Protocol = Protocol.TCP

    @classmethod
    def parse(cls, text: str) -> PublishedPort:
        """`8080:80/tcp`, `5353:53/udp` or `8080:80`; ValueError says what is wrong."""
        match = _PUBLISHED.match(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not HOST_PORT:NODE_PORT[/tcp|udp] (e.g. 8080:80/tcp)")
        host, node, protocol = match.groups()
        return cls(host_port=int(host), node_port=int(node), protocol=Protocol(protocol or "tcp"))

    def __str__(self) -> str:
        return f"{self.host_port}:{self.node_port}/{self.protocol}"


def parse_pool(text: str) -> netaddr.IPRange:
    """A pool of underlay addresses written as `a.b.c.d/n` or `first-last`."""
    try:
        if "-" in text:
            first, last = (part.strip() for part in text.split("-", 1))
            return netaddr.IPRange(first, last)
        network = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError) as error:
        raise ValueError(f"{text!r} is not a CIDR or a first-last range") from error
    return netaddr.IPRange(network.first, network.last)


def _canonical_pool(value: str) -> str:
    pool = parse_pool(value)
    if pool.version != 4:
        raise ValueError(f"{value!r} is not an IPv4 pool")
    return f"{pool[0]}-{pool[-1]}"


Pool = Annotated[
    str,
    StringConstraints(max_length=64),
    AfterValidator(_canonical_pool),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 64,
            "pattern": f"^{_IPV4}(/([0-9]|[12][0-9]|3[0-2])|-{_IPV4})?$",
            "description": "IPv4: an address, a CIDR, or first-last (first not after last)",
            "examples": ["198.51.100.64/27", "192.0.2.10-192.0.2.19"],
        }
    ),
]
"""An IPv4 pool given as CIDR or first-last, kept as `first-last`."""

Label = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[\x21-\x7e]+$")]


class NodeKind(StrEnum):
    VM = "vm"
    CONTAINER = "container"


class LinkKind(StrEnum):
    NETWORK = "network"
    NODE = "node"


class Record(BaseModel):
    """Records are immutable values; a change is a new record."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Tenant(Record):
    name: Name


class Network(Record):
    tenant: Name
    name: Name
    cidr: CIDR
    gateway: IPAddress = Field(description="The first host address, answered by each server")
    outbound: bool = Field(
        False,
        description="Nodes reach addresses outside every network of the tenant, source-NATed "
        "to their own server's address",
    )

    def contains(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(self.cidr)

    def usable(self, ip: str) -> bool:
        """A node may hold any address of the network except its own, broadcast and gateway."""
        network = ipaddress.ip_network(self.cidr)
        address = ipaddress.ip_address(ip)
        reserved = {network.network_address, network.broadcast_address}
        return address in network and address not in reserved and str(address) != self.gateway


class Node(Record):
    id: str = Field(description="Assigned by the directory; a re-created node gets a new id")
    tenant: Name
    name: Name
    kind: NodeKind
    network: Name
    ip: IPAddress = Field(description="The tenant address, unique within the tenant")
    mac: MAC
    locator: IPAddress = Field(description="The underlay address, unique in the directory")
    server: Label = Field(description="Opaque label of the server hosting the node")
    floating: IPAddress | None = Field(
        None, description="The floating address attached to it, from its server's floating pools"
    )


class Link(Record):
    """Allows traffic between two networks, or two nodes, of one tenant (both directions)."""

    tenant: Name
    id: str = Field(description="kind:a:b with a < b, so a pair has exactly one link")
    kind: LinkKind
    a: Name
    b: Name

    @staticmethod
    def make_id(kind: LinkKind, a: str, b: str) -> str:
        first, second = sorted((a, b))
        return f"{kind.value}:{first}:{second}"


class Server(Record):
    """A server enrolled with the directory: it may publish nodes only on locators in its pools."""

    name: Name
    pools: list[Pool] = Field(min_length=1)
    floating: list[Pool] = Field(
        default_factory=list, description="Public addresses its nodes may be reached at (1:1)"
    )
    created: datetime

    def holds(self, address: str) -> bool:
        """Whether `address` lies in one of the server's pools."""
        ip = netaddr.IPAddress(address)
        return any(ip in parse_pool(pool) for pool in self.pools)
