"""How the agent tells the world where its nodes are: the federation directory, on the tenant's
behalf and with the tenant's own token. Behind a small protocol so the agent's logic does not
depend on the directory's HTTP details.
"""

from __future__ import annotations

from typing import Protocol

from federation.client import DirectoryClient
from federation.errors import Forbidden, NotFound, Unauthorized
from hostagent.models import NodeInfo
from nvi.model import Network, Node


class Publisher(Protocol):
    async def network(self, token: str, tenant: str, network: str) -> Network:
        """The tenant's network (raises a 4xx NviError if it does not exist)."""

    async def publish(self, token: str, node: NodeInfo, server: str, ip: str | None) -> Node:
        """Publish the node with its locator; the directory assigns its id, ip (unless given)
        and mac."""

    async def node(self, token: str, tenant: str, name: str) -> Node | None:
        """The published record of a node, or None."""

    async def unpublish(self, token: str, tenant: str, name: str, locator: str) -> None:
        """Remove the node's record if it is the one holding `locator`; absent is fine."""

    async def is_admin(self, token: str) -> bool:
        """Whether the token is the directory's admin credential."""

    async def health(self) -> str:
        """A one-word state for `nvi agent status`."""

    async def close(self) -> None: ...


class DirectoryPublisher:
    """The real directory, through its asyncio client (one session, a token per request)."""

    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url
        self.timeout = timeout
        self._anonymous = DirectoryClient(url, timeout=timeout)

    def _client(self, token: str) -> DirectoryClient:
        return DirectoryClient(self.url, token, timeout=self.timeout)

    async def network(self, token: str, tenant: str, network: str) -> Network:
        async with self._client(token) as client:
            return await client.get_network(tenant, network)

    async def publish(self, token: str, node: NodeInfo, server: str, ip: str | None) -> Node:
        async with self._client(token) as client:
            return await client.create_node(
                node.tenant,
                node.name,
                kind=node.kind,
                network=node.network,
                locator=node.locator,
                server=server,
                ip=ip,
            )

    async def node(self, token: str, tenant: str, name: str) -> Node | None:
        async with self._client(token) as client:
            try:
                return await client.get_node(tenant, name)
            except NotFound:
                return None

    async def unpublish(self, token: str, tenant: str, name: str, locator: str) -> None:
        async with self._client(token) as client:
            try:
                record = await client.get_node(tenant, name)
                if record.locator == locator:
                    await client.delete_node(tenant, name)
            except NotFound:
                return

    async def is_admin(self, token: str) -> bool:
        async with self._client(token) as client:
            try:
                return (await client.whoami()).role == "admin"
            except (Unauthorized, Forbidden):
                return False

    async def health(self) -> str:
        try:
            return (await self._anonymous.health()).status
        except Exception as error:  # noqa: BLE001 - a status line, not a failure
            return f"unreachable ({error})"

    async def close(self) -> None:
        await self._anonymous.close()
