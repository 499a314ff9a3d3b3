"""The node ports on this server's Open vSwitch bridge, through OVSDB (ovs-vsctl).

Each port's Interface `external_ids` are exactly what `nvi/ports.py` defines (the controller
learns its local nodes from those and nothing else), plus keys of the agent's own: its id,
so reconciliation removes exactly the ports it made, and the node's local id and name.
"""

from __future__ import annotations

import ipaddress
import json

from hostagent.models import NodeInfo
from hostagent.plumbing import run
from nvi.ports import LOCATOR, NodePort

AGENT_KEY = "nvi-agent"


class Switch:
    def __init__(self, db: str, bridge: str, agent_id: str) -> None:
        self.db = db
        self.bridge = bridge
        self.agent_id = agent_id

    async def vsctl(self, *args: str) -> str:
        return await run("ovs-vsctl", f"--db={self.db}", "--timeout=10", *args)

    async def plug(self, node: NodeInfo) -> None:
        """Add the node's port afresh: vswitchd keeps reading from a vanished veth otherwise."""
        await self.unplug(node.port)
        external = {
            AGENT_KEY: self.agent_id,
            "nvi-node": node.id,
            "nvi-name": node.name,
            **node_port(node).external_ids(),
        }
        await self.vsctl(
            "add-port",
            self.bridge,
            node.port,
            "--",
            "set",
            "interface",
            node.port,
            *(f'external_ids:"{key}"="{value}"' for key, value in external.items()),
        )

    async def unplug(self, port: str) -> None:
        await self.vsctl("--if-exists", "del-port", self.bridge, port)

    async def ports(self) -> dict[str, int]:
        """This agent's ports on the bridge, with the kernel ifindex vswitchd opened."""
        answer = await self.vsctl(
            "--format=json",
            "--columns=name,ifindex",
            "find",
            "interface",
            f'external_ids:"{AGENT_KEY}"="{self.agent_id}"',
        )
        rows = json.loads(answer)["data"]
        return {name: ifindex if isinstance(ifindex, int) else 0 for name, ifindex in rows}

    async def locators(self) -> set[str]:
        """Locators held by any port on the bridge, the agent's or not (in the lab, namespace
        nodes share the server's pool)."""
        answer = await self.vsctl("--format=json", "--columns=external_ids", "list", "interface")
        return {
            value
            for ((_, pairs),) in json.loads(answer)["data"]
            for key, value in pairs
            if key == LOCATOR
        }

    async def health(self) -> str:
        try:
            await self.vsctl("br-exists", self.bridge)
        except Exception as error:  # noqa: BLE001 - a status line, not a failure
            return f"unreachable ({error})"
        return "ok"


def node_port(node: NodeInfo) -> NodePort:
    """What the controller must know of a plugged node (the node is published by now)."""
    assert node.directory_id and node.ip and node.mac and node.gateway
    assert node.prefixlen is not None
    cidr = ipaddress.ip_interface(f"{node.ip}/{node.prefixlen}").network
    return NodePort(
        node_id=node.directory_id,
        tenant=node.tenant,
        network=node.network,
        ip=node.ip,
        cidr=str(cidr),
        gateway=node.gateway,
        locator=node.locator,
        mac=node.mac,
    )
