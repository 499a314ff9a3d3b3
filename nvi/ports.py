"""What a node's port on a server's bridge says about the node (OVSDB `external_ids`).

Whoever plugs a node into the bridge (the host agent, or the lab's namespace nodes) writes
these keys on the OVS Interface; the server's controller reads them to know its local nodes.
It is the only channel between the two, so both sides use this one definition.
"""

from __future__ import annotations

from dataclasses import dataclass

NODE_ID = "nvi-node-id"
TENANT = "nvi-tenant"
NETWORK = "nvi-network"
IP = "nvi-ip"
CIDR = "nvi-cidr"
GATEWAY = "nvi-gateway"  # the network's gateway address (the directory's Network.gateway)
LOCATOR = "nvi-locator"
MAC = "attached-mac"  # the OVS convention for the MAC behind the port
KEYS = (NODE_ID, TENANT, NETWORK, IP, CIDR, GATEWAY, LOCATOR, MAC)


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

    def external_ids(self) -> dict[str, str]:
        return {
            NODE_ID: self.node_id,
            TENANT: self.tenant,
            NETWORK: self.network,
            IP: self.ip,
            CIDR: self.cidr,
            GATEWAY: self.gateway,
            LOCATOR: self.locator,
            MAC: self.mac,
        }

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
        )
