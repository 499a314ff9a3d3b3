"""How the agent tells the world where its nodes are: the federation directory. It publishes
with the server's own credential together with the tenant's token (neither alone may), and
withdraws its own records with its credential alone (a node went away; a crash to repair).
Behind a small protocol so the agent's logic does not depend on the directory's HTTP details.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from federation.client import DirectoryClient
from federation.errors import Forbidden, NotFound, Unauthorized
from hostagent.models import NodeInfo
from nvi.core.model import Network, Node


class Publisher(Protocol):
    async def network(self, token: str, tenant: str, network: str) -> Network:
        """The tenant's network (raises a 4xx NviError if it does not exist)."""

    async def publish(self, token: str, node: NodeInfo, ip: str | None) -> Node:
        """Publish the node with its locator for the tenant whose token this is; the
        directory assigns its id, ip (unless given) and mac."""

    async def unpublish(self, tenant: str, name: str, locator: str) -> None:
        """Withdraw the node's record if it still holds `locator`; absent is fine."""

    async def attach_floating(self, token: str, tenant: str, name: str, address: str) -> Node:
        """Record that `address` (of this server's floating pool) is the node's, for the
        tenant whose token this is; 409 if another node holds it."""

    async def detach_floating(self, tenant: str, name: str) -> None:
        """Release the node's floating address; nothing attached (or no record) is fine."""

    async def is_admin(self, token: str) -> bool:
        """Whether the token is the directory's admin credential."""

    async def health(self) -> str:
        """A one-word state for `nvi agent status`."""

    async def close(self) -> None: ...


class DirectoryPublisher:
    """The real directory, through its asyncio client, as this enrolled server."""

    def __init__(
        self, url: str, credential: str, timeout: float = 10, ca_file: Path | None = None
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.ca_file = ca_file
        self._server = DirectoryClient(url, credential, timeout=timeout, ca_file=ca_file)
        self._credential = credential

    def _client(self, token: str, on_behalf: bool = False) -> DirectoryClient:
        if on_behalf:
            return DirectoryClient(
                self.url,
                self._credential,
                tenant_token=token,
                timeout=self.timeout,
                ca_file=self.ca_file,
            )
        return DirectoryClient(self.url, token, timeout=self.timeout, ca_file=self.ca_file)

    async def network(self, token: str, tenant: str, network: str) -> Network:
        async with self._client(token) as client:
            return await client.get_network(tenant, network)

    async def publish(self, token: str, node: NodeInfo, ip: str | None) -> Node:
        async with self._client(token, on_behalf=True) as client:
            return await client.create_node(
                node.tenant,
                node.name,
                kind=node.kind,
                network=node.network,
                locator=node.locator,
                ip=ip,
            )

    async def unpublish(self, tenant: str, name: str, locator: str) -> None:
        try:
            await self._server.delete_node(tenant, name, locator=locator)
        except NotFound:
            return

    async def attach_floating(self, token: str, tenant: str, name: str, address: str) -> Node:
        async with self._client(token, on_behalf=True) as client:
            return await client.attach_floating(tenant, name, address)

    async def detach_floating(self, tenant: str, name: str) -> None:
        try:
            await self._server.detach_floating(tenant, name)
        except NotFound:
            return

    async def is_admin(self, token: str) -> bool:
        async with self._client(token) as client:
            try:
                return (await client.whoami()).role == "admin"
            except (Unauthorized, Forbidden):
                return False

    async def health(self) -> str:
        """Whether the directory answers, and still knows this server's credential."""
        try:
            identity = await self._server.whoami()
        except Unauthorized:
            return "credential refused (revoked, or never enrolled)"
        except Exception as error:  # noqa: BLE001 - a status line, not a failure
            return f"unreachable ({error})"
        return f"ok (server {identity.server})"

    async def close(self) -> None:
        await self._server.close()
