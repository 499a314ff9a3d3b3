"""The OVS port contract: what a node's port on a server's bridge says about the node
(OVSDB Interface `external_ids`), and the cookie of the flows that are not the controller's.

Whoever plugs a node into the bridge (the host agent, or the lab's namespace nodes) writes
these keys on the OVS Interface; the server's controller reads them to know its local nodes.
It is the only channel between the two, so every side (agent, controller, lab, trace, tests)
spells the keys and decodes them through this one module.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from nvi.core.model import PublishedPort

NODE_ID = "nvi-node-id"
TENANT = "nvi-tenant"
NETWORK = "nvi-network"
IP = "nvi-ip"
CIDR = "nvi-cidr"
GATEWAY = "nvi-gateway"  # the network's gateway address (the directory's Network.gateway)
LOCATOR = "nvi-locator"
MAC = "attached-mac"  # the OVS convention for the MAC behind the port
KEYS = (NODE_ID, TENANT, NETWORK, IP, CIDR, GATEWAY, LOCATOR, MAC)
# Ways in, optional (absent when the node has none): its floating address, one of the server's
# floating pool, mapped 1:1 to the node; and its published ports, `PublishedPort`s joined by
# commas (`8080:80/tcp,5353:53/udp`), forwarded from the server's own address.
FLOATING = "nvi-floating"
PUBLISH = "nvi-publish"

# The host agent's own keys: whose port it is (reconciliation removes exactly its own ports),
# and the node's local id and name (for people reading the bridge, and for `nvi trace`).
AGENT = "nvi-agent"
AGENT_NODE = "nvi-node"
NAME = "nvi-name"

# Flows the lab installs so the server itself reaches the underlay; the controller owns the rest.
HOST_COOKIE = 0x4E56490000000001


@dataclass(frozen=True)
class NodePort:
    node_id: str
    tenant: str
    network: str
    ip: str
    cidr: str
    gateway: str
    locator: str
    mac: str
    floating: str = ""
    published: tuple[PublishedPort, ...] = ()

    def external_ids(self) -> dict[str, str]:
        """Every key of the contract; the optional ones only when set (a writer replacing a
        port's keys removes the optional ones it does not write)."""
        ids = {
            NODE_ID: self.node_id,
            TENANT: self.tenant,
            NETWORK: self.network,
            IP: self.ip,
            CIDR: self.cidr,
            GATEWAY: self.gateway,
            LOCATOR: self.locator,
            MAC: self.mac,
        }
        if self.floating:
            ids[FLOATING] = self.floating
        if self.published:
            ids[PUBLISH] = ",".join(map(str, self.published))
        return ids

    @classmethod
    def from_external_ids(cls, ids: dict[str, str]) -> NodePort | None:
        """None for ports that are not NVI nodes (the uplink, or a half-configured port)."""
        if not all(ids.get(key) for key in KEYS):
            return None
        return cls(
            node_id=ids[NODE_ID],
            tenant=ids[TENANT],
            network=ids[NETWORK],
            ip=ids[IP],
            cidr=ids[CIDR],
            gateway=ids[GATEWAY],
            locator=ids[LOCATOR],
            mac=ids[MAC].lower(),
            floating=_ipv4_or_empty(ids.get(FLOATING, "")),
            published=_published(ids.get(PUBLISH, "")),
        )


def _ipv4_or_empty(text: str) -> str:
    """A malformed optional key is ignored (the node keeps its other flows, gains no way in)."""
    try:
        return str(ipaddress.IPv4Address(text)) if text else ""
    except ValueError:
        return ""


def _published(text: str) -> tuple[PublishedPort, ...]:
    ports = []
    for item in filter(None, text.split(",")):
        try:
            ports.append(PublishedPort.parse(item))
        except ValueError:
            continue
    return tuple(ports)


@dataclass(frozen=True)
class AgentPort:
    """Which agent made a port, for which of its nodes: written next to the `NodePort` keys."""

    agent: str
    node: str
    name: str

    def external_ids(self) -> dict[str, str]:
        return {AGENT: self.agent, AGENT_NODE: self.node, NAME: self.name}

    @classmethod
    def from_external_ids(cls, ids: dict[str, str]) -> AgentPort | None:
        """None for ports no agent made (the lab's namespace nodes, the uplink)."""
        if not all(ids.get(key) for key in (AGENT, AGENT_NODE)):
            return None
        return cls(agent=ids[AGENT], node=ids[AGENT_NODE], name=ids.get(NAME, ""))


def vsctl_set_args(ids: dict[str, str]) -> list[str]:
    """`ovs-vsctl set interface PORT ...` arguments writing `ids` (quoted: values hold colons
    and slashes, which ovs-vsctl would otherwise parse)."""
    return [f"external_ids:{json.dumps(key)}={json.dumps(value)}" for key, value in ids.items()]


def vsctl_rows(answer: str) -> list[dict[str, Any]]:
    """The rows of `ovs-vsctl --format=json list|find ...`, column name -> plain Python value
    (maps as dicts, sets as lists, uuids as strings); the lab and tests read OVSDB this way."""
    table = json.loads(answer)
    return [
        dict(zip(table["headings"], map(_ovsdb_value, row), strict=True)) for row in table["data"]
    ]


def _ovsdb_value(value: Any) -> Any:
    """OVSDB's JSON encoding (RFC 7047 5.1): atoms stay, ["map"|"set"|"uuid", ...] decode."""
    if not isinstance(value, list):
        return value
    kind, inner = value
    if kind == "map":
        return {_ovsdb_value(k): _ovsdb_value(v) for k, v in inner}
    if kind == "set":
        return [_ovsdb_value(v) for v in inner]
    return inner  # "uuid" and "named-uuid"
