"""A tenant's view of the whole cloud: the directory's records and every server's agent.

`Cloud` is what the CLI and the portal use. It reads the catalogue to find each server's
agent, places new nodes by `nvi.client.placement`, and joins the directory's records with
what each agent says of its nodes now. No server process uses it: servers never read the
catalogue (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, Field, TypeAdapter

from federation.client import DirectoryClient
from federation.errors import Unavailable, from_status
from federation.models import CatalogueEntry, Identity
from hostagent.client import AgentClient
from hostagent.errors import Full
from hostagent.models import NodeInfo
from nvi.client.placement import NoServer, candidates
from nvi.client.profiles import Profile
from nvi.core.errors import NviError
from nvi.core.model import Link, Network, Node, NodeKind, PublishedPort
from nvi.core.tls import client_context, tls_failure

T = TypeVar("T")
UNKNOWN = "unknown"
# How long a listing waits for one server's agent before showing its nodes as unknown.
AGENT_TIMEOUT = 5.0
_CATALOGUE = TypeAdapter(list[CatalogueEntry])


class NodeView(BaseModel):
    """A node as its tenant sees it: the directory's record, and its server's live state
    (`unknown` while that server or its agent cannot be reached). Never a locator."""

    tenant: str
    name: str
    kind: NodeKind
    network: str
    ip: str | None = None
    mac: str | None = None
    server: str
    state: str = UNKNOWN
    ready: bool = False
    phase: str = UNKNOWN
    cpus: float | None = None
    memory_mib: int | None = None
    image: str | None = None
    floating: str | None = None
    published: list[PublishedPort] = []
    progress: str = Field("", description="What is happening to it now, as the agent says")

    @classmethod
    def of(cls, record: Node | None, live: NodeInfo | None, server: str) -> NodeView:
        fields: dict[str, Any] = {"server": server}
        if record is not None:
            fields |= record.model_dump(
                include={"tenant", "name", "kind", "network", "ip", "mac", "floating"}
            )
        if live is not None:
            fields |= {key: value for key, value in _live(live).items() if value is not None}
            for key in ("tenant", "name", "kind", "network"):
                fields.setdefault(key, getattr(live, key))
        return cls.model_validate(fields)


def _live(info: NodeInfo) -> dict[str, Any]:
    keep = {"ip", "mac", "state", "ready", "phase", "cpus", "memory_mib", "image", "progress"}
    keep |= {"floating", "published"}
    return info.model_dump(mode="json", include=keep)


def is_full(error: NviError) -> bool:
    """Whether an agent refused a create for lack of room (and so created nothing)."""
    return error.code == Full.code


# Makes the create on one candidate: its entry, a client of its agent, the agent's body.
Create = Callable[[CatalogueEntry, AgentClient, dict[str, Any]], Awaitable[NodeInfo]]


class Cloud:
    """`async with Cloud(["https://dir:7480"], token, ca_file) as cloud: ...`

    `directory` is a list of URLs in fail-over order: a call that cannot reach one tries the
    next, and the one that answered is asked first afterwards. The token is the tenant's (or
    the directory's admin, who then names the tenant in each call); agents are reached with
    it as the tenant's own credential, and their certificates checked with the same CA.
    """

    def __init__(self, directory: list[str], token: str | None, ca_file: Path | None) -> None:
        if not directory:
            raise NviError("no directory URL given")
        self.urls = list(directory)
        self.token = token
        self.ca_file = ca_file
        self._directories = {url: DirectoryClient(url, token, ca_file=ca_file) for url in self.urls}
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            connector=aiohttp.TCPConnector(ssl=client_context(ca_file)),
            timeout=aiohttp.ClientTimeout(total=10),
        )
        self._agents: dict[str, AgentClient] = {}
        self._identity: Identity | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> Cloud:
        profile.require()
        assert profile.token is not None  # require() checked it
        return cls(list(profile.directory), profile.token, profile.ca_file)

    async def __aenter__(self) -> Cloud:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        clients: list[Any] = [*self._directories.values(), *self._agents.values()]
        await asyncio.gather(*(client.__aexit__(None, None, None) for client in clients))
        await self._session.close()

    # the directory

    async def directory(self, call: Callable[[DirectoryClient], Awaitable[T]]) -> T:
        """One call of the directory's client, on the first directory that can be reached."""
        failure: Unavailable | None = None
        for url in list(self.urls):
            try:
                answer = await call(self._directories[url])
            except Unavailable as error:
                failure = error
                continue
            self.urls.remove(url)
            self.urls.insert(0, url)
            return answer
        assert failure is not None
        raise failure

    async def whoami(self) -> Identity:
        if self._identity is None:
            self._identity = await self.directory(DirectoryClient.whoami)
        return self._identity

    async def tenant(self, tenant: str | None = None) -> str:
        """The tenant a call is for: the one named, else the token's own."""
        if tenant:
            return tenant
        identity = await self.whoami()
        if identity.tenant is None:
            raise NviError(f"a {identity.role} credential acts for no tenant: name the tenant")
        return identity.tenant

    async def catalogue(self) -> list[CatalogueEntry]:
        """Every server's catalogue entry, sorted by server; dead ones have alive false."""

        async def read(directory: DirectoryClient) -> list[CatalogueEntry]:
            return await self._get(directory.url, "/v1/catalogue", _CATALOGUE)

        return await self.directory(read)

    async def server(self, name: str) -> CatalogueEntry:
        async def read(directory: DirectoryClient) -> CatalogueEntry:
            adapter = TypeAdapter(CatalogueEntry)
            return await self._get(directory.url, f"/v1/catalogue/{name}", adapter)

        return await self.directory(read)

    async def _get(self, base: str, path: str, answer: TypeAdapter[T]) -> T:
        """A read the directory's own client does not make: servers never read the catalogue."""
        try:
            async with self._session.get(base + path) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = tls_failure("directory", base, error)
            why = reason or f"directory at {base}: {error or type(error).__name__}"
            raise Unavailable(why) from None
        if response.status >= 400:
            try:
                message = TypeAdapter(dict).validate_json(body)["error"]
            except (ValueError, KeyError):
                message = body.decode(errors="replace")[:200] or str(response.reason)
            raise from_status(response.status, message)
        return answer.validate_json(body)

    async def networks(self, *, tenant: str | None = None) -> list[Network]:
        name = await self.tenant(tenant)
        return await self.directory(lambda d: d.list_networks(name))

    async def create_network(
        self, name: str, cidr: str, gateway: str | None = None, *, tenant: str | None = None
    ) -> Network:
        owner = await self.tenant(tenant)
        return await self.directory(lambda d: d.create_network(owner, name, cidr, gateway))

    async def delete_network(self, name: str, *, tenant: str | None = None) -> None:
        owner = await self.tenant(tenant)
        await self.directory(lambda d: d.delete_network(owner, name))

    async def links(self, *, tenant: str | None = None) -> list[Link]:
        name = await self.tenant(tenant)
        return await self.directory(lambda d: d.list_links(name))

    async def create_link(self, kind: str, a: str, b: str, *, tenant: str | None = None) -> Link:
        owner = await self.tenant(tenant)
        return await self.directory(lambda d: d.create_link(owner, kind, a, b))

    async def delete_link(self, link_id: str, *, tenant: str | None = None) -> None:
        owner = await self.tenant(tenant)
        await self.directory(lambda d: d.delete_link(owner, link_id))

    # agents and nodes

    def agent(self, entry: CatalogueEntry, *, timeout: float = 60) -> AgentClient:
        """A client of the entry's agent, with the token as the tenant's own credential."""
        key = f"{entry.server} {entry.agent_url} {timeout}"
        if key not in self._agents:
            self._agents[key] = AgentClient(
                entry.agent_url, tenant_token=self.token, ca_file=self.ca_file, timeout=timeout
            )
        return self._agents[key]

    async def nodes(self, *, tenant: str | None = None) -> list[NodeView]:
        """The tenant's nodes on every server, by name: the directory's records joined with
        each server's agent; a dead or unreachable server's nodes show state `unknown`."""
        owner = await self.tenant(tenant)
        records, entries = await asyncio.gather(
            self.directory(lambda d: d.list_nodes(owner)), self.catalogue()
        )
        by_server: dict[str, list[Node]] = {}
        for record in records:
            by_server.setdefault(record.server, []).append(record)
        catalogue = {entry.server: entry for entry in entries}

        async def server_view(server: str, held: list[Node]) -> list[NodeView]:
            live = await self._live(catalogue.get(server), owner)
            return [NodeView.of(record, live.get(record.name), server) for record in held]

        views = await asyncio.gather(*(server_view(s, held) for s, held in by_server.items()))
        return sorted((view for group in views for view in group), key=lambda v: v.name)

    async def _live(self, entry: CatalogueEntry | None, tenant: str) -> dict[str, NodeInfo]:
        """What a server's agent says of the tenant's nodes; nothing if it cannot say."""
        if entry is None or not entry.alive:
            return {}
        try:
            found = await asyncio.wait_for(
                self.agent(entry, timeout=AGENT_TIMEOUT).list(tenant), AGENT_TIMEOUT
            )
        except (NviError, TimeoutError):
            return {}
        return {info.name: info for info in found}

    async def _record(self, name: str, tenant: str | None) -> tuple[Node, CatalogueEntry | None]:
        owner = await self.tenant(tenant)
        record, entries = await asyncio.gather(
            self.directory(lambda d: d.get_node(owner, name)), self.catalogue()
        )
        return record, next((e for e in entries if e.server == record.server), None)

    async def agent_of(self, name: str, *, tenant: str | None = None) -> AgentClient:
        """The agent of the server that holds node `name`."""
        return (await self._placed(name, tenant))[1]

    async def _placed(self, name: str, tenant: str | None) -> tuple[str, AgentClient]:
        record, entry = await self._record(name, tenant)
        where = f"node {record.tenant}/{name} is on {record.server}"
        if entry is None:
            raise NviError(f"{where}, which is not in the catalogue")
        if not entry.alive:
            raise NviError(f"{where}, which is not alive (its lease lapsed {entry.expires})")
        return record.server, self.agent(entry)

    async def node(self, name: str, *, tenant: str | None = None) -> NodeView:
        record, entry = await self._record(name, tenant)
        live = await self._live(entry, record.tenant)
        return NodeView.of(record, live.get(name), record.server)

    async def stop(self, name: str, *, tenant: str | None = None) -> NodeView:
        owner = await self.tenant(tenant)
        server, agent = await self._placed(name, owner)
        return NodeView.of(None, await agent.stop(owner, name), server)

    async def start(self, name: str, *, tenant: str | None = None) -> NodeView:
        owner = await self.tenant(tenant)
        server, agent = await self._placed(name, owner)
        return NodeView.of(None, await agent.start(owner, name), server)

    async def delete(self, name: str, *, tenant: str | None = None) -> None:
        owner = await self.tenant(tenant)
        await (await self.agent_of(name, tenant=owner)).delete(owner, name)

    async def create_node(
        self,
        spec: dict[str, Any],
        *,
        server: str | None = None,
        cloud: str | None = None,
        create: Create | None = None,
    ) -> NodeInfo:
        """Create a node on the best server that takes it: the placement's candidates in
        order; one that turns out full (its entry was stale) passes to the next, any other
        refusal stops. `spec` is the agent's create body (the tenant defaults to the
        token's); `create` replaces the plain create call (the CLI watches progress)."""
        body = {key: value for key, value in spec.items() if value is not None}
        body["tenant"] = await self.tenant(body.get("tenant"))
        kind = NodeKind(body.get("kind", NodeKind.CONTAINER))
        body["kind"] = str(kind)
        fits = candidates(
            await self.catalogue(),
            kind=kind,
            cpus=float(body.get("cpus", 1)),
            memory_mib=int(body.get("memory_mib", 128)),
            server=server,
            cloud=cloud,
        )
        refusals = []
        for entry in fits:
            agent = self.agent(entry)
            try:
                return await (create or _plain_create)(entry, agent, body)
            except NviError as error:
                if not is_full(error):
                    raise
                refusals.append(f"{entry.server}: {error}")
        raise NoServer("no server had room after all (" + "; ".join(refusals) + ")")


async def _plain_create(
    entry: CatalogueEntry, agent: AgentClient, body: dict[str, Any]
) -> NodeInfo:
    return await agent.create(**body)
