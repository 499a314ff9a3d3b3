"""The node ports on this server's Open vSwitch bridge, through one OVSDB connection.

Each port's Interface `external_ids` are exactly what `nvi/ports.py` defines (the controller
learns its local nodes from those and nothing else), plus the agent's own (`AgentPort`): its
id, so reconciliation removes exactly the ports it made, and the node's local id and name.
A port and its `external_ids` are written in one transaction, so no reader ever sees a node
port without its identity.
"""

from __future__ import annotations

import ipaddress

from ovsdbapp.backend.ovs_idl.command import BaseCommand

from hostagent.errors import Failed
from hostagent.models import NodeInfo
from nvi.core.ovsdb import Interface, Ovsdb, OvsdbError
from nvi.core.ports import LOCATOR, AgentPort, NodePort


class Switch:
    def __init__(self, db: str, bridge: str, agent_id: str) -> None:
        self.ovsdb = Ovsdb(db)
        self.bridge = bridge
        self.agent_id = agent_id

    async def start(self) -> None:
        try:
            await self.ovsdb.start()
        except OvsdbError as error:
            raise Failed(str(error)) from None

    async def close(self) -> None:
        await self.ovsdb.close()

    async def plug(self, node: NodeInfo) -> None:
        """Add the node's port afresh: vswitchd keeps reading from a vanished veth otherwise
        (so the removal is a transaction of its own, which vswitchd applies first)."""
        await self.unplug(node.port)
        add = self.ovsdb.api.add_port(
            self.bridge, node.port, may_exist=False, external_ids=self._external_ids(node)
        )
        await self._transact(add)

    async def sync(self, node: NodeInfo) -> bool:
        """Make a plugged port's keys the node's (its ways in changed, or a restarted agent
        finds older ones): the whole set is written and the optional keys the node lacks are
        removed, in one transaction. Whether anything changed (an unplugged port: nothing)."""
        wanted = self._external_ids(node)
        found = next((i for i in await self._interfaces() if i.name == node.port), None)
        if found is None or found.external_ids == wanted:
            return False
        api = self.ovsdb.api
        commands = [api.db_set("Interface", node.port, ("external_ids", wanted))]
        if absent := [key for key in found.external_ids if key not in wanted]:
            commands.append(api.db_remove("Interface", node.port, "external_ids", *absent))
        await self._transact(*commands)
        return True

    def _external_ids(self, node: NodeInfo) -> dict[str, str]:
        return {
            **AgentPort(self.agent_id, node.id, node.name).external_ids(),
            **node_port(node).external_ids(),
        }

    async def unplug(self, port: str) -> None:
        await self._transact(self.ovsdb.api.del_port(port, self.bridge, if_exists=True))

    async def ports(self) -> dict[str, int]:
        """This agent's ports on the bridge, with the kernel ifindex vswitchd opened."""
        return {
            interface.name: interface.ifindex or 0
            for interface in await self._interfaces()
            if (owner := AgentPort.from_external_ids(interface.external_ids))
            and owner.agent == self.agent_id
        }

    async def locators(self) -> set[str]:
        """Locators held by any port on the bridge, the agent's or not (in the lab, namespace
        nodes share the server's pool)."""
        return {
            locator
            for interface in await self._interfaces()
            if (locator := interface.external_ids.get(LOCATOR))
        }

    async def health(self) -> str:
        try:
            if not await self.ovsdb.bridge_exists(self.bridge):
                return f"no bridge {self.bridge}"
        except Exception as error:  # noqa: BLE001 - a status line, not a failure
            return f"unreachable ({error})"
        return "ok"

    async def _transact(self, *commands: BaseCommand) -> None:
        try:
            await self.ovsdb.transact(*commands)
        except OvsdbError as error:
            raise Failed(str(error)) from None

    async def _interfaces(self) -> list[Interface]:
        try:
            return await self.ovsdb.interfaces()
        except OvsdbError as error:
            raise Failed(str(error)) from None


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
        floating=node.floating or "",
        published=tuple(node.published),
    )
