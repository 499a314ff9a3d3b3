"""Asyncio client of the directory, used by host agents (to publish) and controllers (to look up).

`DirectoryClient` is one method per API operation. `CachedResolver` answers a controller's
lookups from memory and follows the change stream to keep that memory correct.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, TypeAdapter

from federation.errors import DirectoryError, Gone, Unavailable, from_status
from federation.models import (
    Announcement,
    CatalogueEntry,
    Change,
    ChangePage,
    ChangeType,
    FloatingAddress,
    Health,
    Identity,
    Location,
    Outbound,
    Resolution,
    ServerEnrolled,
    TokenCreated,
    TokenInfo,
)
from nvi.core.errors import NviError
from nvi.core.model import Link, LinkKind, Network, Node, NodeKind, Server, Tenant
from nvi.core.tls import client_context, tls_failure

log = logging.getLogger(__name__)
T = TypeVar("T", bound=Resolution | Location)  # what the directory answers and the cache keeps


@functools.cache
def _adapter(answer: Any) -> TypeAdapter:
    """Building a TypeAdapter costs more than a lookup; build each one once."""
    return TypeAdapter(answer)


class DirectoryClient:
    """`async with DirectoryClient(url, token) as directory: ...`

    A server acting for a tenant passes its own credential as `token` and the tenant's token
    as `tenant_token`. The directory speaks HTTPS only; its certificate is verified against
    `ca_file`, or the system's trust store when None.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        tenant_token: str | None = None,
        timeout: float = 10,
        ca_file: Path | None = None,
    ) -> None:
        if not url.startswith("https://"):
            raise NviError(f"directory at {url}: the directory speaks only https://")
        self.url = url.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if tenant_token:
            headers["X-Tenant-Token"] = tenant_token
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=client_context(ca_file))
        )

    async def __aenter__(self) -> DirectoryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self,
        method: str,
        path: str,
        answer: Any = None,
        *,
        json: Any = None,
        params: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """One request; an error answer raises the matching DirectoryError."""
        url = self.url + path
        try:
            async with self._session.request(
                method,
                url,
                json=json,
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as response:
                body = await response.read()
                if response.status >= 400:
                    code = None
                    try:
                        answer_body = _adapter(dict).validate_json(body)
                        message, code = answer_body["error"], answer_body.get("code")
                    except (ValueError, KeyError):
                        message = body.decode(errors="replace")[:200] or response.reason
                    raise from_status(response.status, message, code)
        except (aiohttp.ClientError, TimeoutError) as error:
            reason = tls_failure("directory", self.url, error)
            raise Unavailable(
                reason or f"directory at {self.url}: {error or type(error).__name__}"
            ) from None
        return _adapter(answer).validate_json(body) if answer is not None else None

    async def health(self) -> Health:
        return await self._call("GET", "/v1/health", Health)

    # tenants and tokens

    async def whoami(self) -> Identity:
        return await self._call("GET", "/v1/whoami", Identity)

    async def create_tenant(self, name: str) -> Tenant:
        return await self._call("POST", "/v1/tenants", Tenant, json={"name": name})

    async def list_tenants(self) -> list[Tenant]:
        return await self._call("GET", "/v1/tenants", list[Tenant])

    async def get_tenant(self, tenant: str) -> Tenant:
        return await self._call("GET", f"/v1/tenants/{tenant}", Tenant)

    async def delete_tenant(self, tenant: str) -> None:
        await self._call("DELETE", f"/v1/tenants/{tenant}")

    async def create_token(self, tenant: str, description: str = "") -> TokenCreated:
        body = {"description": description}
        return await self._call("POST", f"/v1/tenants/{tenant}/tokens", TokenCreated, json=body)

    async def list_tokens(self, tenant: str) -> list[TokenInfo]:
        return await self._call("GET", f"/v1/tenants/{tenant}/tokens", list[TokenInfo])

    async def delete_token(self, tenant: str, token_id: str) -> None:
        await self._call("DELETE", f"/v1/tenants/{tenant}/tokens/{token_id}")

    # servers

    async def enroll_server(
        self, name: str, pools: list[str], floating: Iterable[str] = ()
    ) -> ServerEnrolled:
        body = {"name": name, "pools": pools, "floating": list(floating)}
        return await self._call("POST", "/v1/servers", ServerEnrolled, json=body)

    async def list_servers(self) -> list[Server]:
        return await self._call("GET", "/v1/servers", list[Server])

    async def get_server(self, name: str) -> Server:
        return await self._call("GET", f"/v1/servers/{name}", Server)

    async def revoke_server(self, name: str) -> list[Node]:
        return await self._call("DELETE", f"/v1/servers/{name}", list[Node])

    async def announce(self, announcement: Announcement) -> CatalogueEntry:
        """Announce (or renew) the calling server in the catalogue. Servers never read the
        catalogue, so this client has no method that does."""
        body = announcement.model_dump(mode="json")
        return await self._call("PUT", "/v1/catalogue", CatalogueEntry, json=body)

    # networks, nodes, links

    async def create_network(
        self,
        tenant: str,
        name: str,
        cidr: str,
        gateway: str | None = None,
        *,
        outbound: bool = False,
    ) -> Network:
        body: dict[str, Any] = {"name": name, "cidr": cidr}
        body |= ({"gateway": gateway} if gateway else {}) | ({"outbound": True} if outbound else {})
        return await self._call("POST", f"/v1/tenants/{tenant}/networks", Network, json=body)

    async def update_network(self, tenant: str, name: str, *, outbound: bool) -> Network:
        body = {"outbound": outbound}
        return await self._call(
            "PATCH", f"/v1/tenants/{tenant}/networks/{name}", Network, json=body
        )

    async def list_networks(self, tenant: str) -> list[Network]:
        return await self._call("GET", f"/v1/tenants/{tenant}/networks", list[Network])

    async def get_network(self, tenant: str, name: str) -> Network:
        return await self._call("GET", f"/v1/tenants/{tenant}/networks/{name}", Network)

    async def delete_network(self, tenant: str, name: str) -> None:
        await self._call("DELETE", f"/v1/tenants/{tenant}/networks/{name}")

    async def create_node(
        self,
        tenant: str,
        name: str,
        *,
        kind: NodeKind | str,
        network: str,
        locator: str,
        ip: str | None = None,
        mac: str | None = None,
    ) -> Node:
        """Publish a node on the calling server (its credential, with the tenant's token)."""
        body = {"name": name, "kind": str(kind), "network": network, "locator": locator}
        body |= {key: value for key, value in (("ip", ip), ("mac", mac)) if value}
        return await self._call("POST", f"/v1/tenants/{tenant}/nodes", Node, json=body)

    async def list_nodes(self, tenant: str, network: str | None = None) -> list[Node]:
        params = {"network": network} if network else None
        return await self._call("GET", f"/v1/tenants/{tenant}/nodes", list[Node], params=params)

    async def get_node(self, tenant: str, name: str) -> Node:
        return await self._call("GET", f"/v1/tenants/{tenant}/nodes/{name}", Node)

    async def move_node(self, tenant: str, name: str, *, locator: str) -> Node:
        """Move a node to the calling server (its credential, with the tenant's token)."""
        body = {"locator": locator}
        return await self._call("PATCH", f"/v1/tenants/{tenant}/nodes/{name}", Node, json=body)

    async def delete_node(self, tenant: str, name: str, *, locator: str | None = None) -> None:
        """`locator`: only while the node holds it (a server withdrawing its own record)."""
        params = {"locator": locator} if locator else None
        await self._call("DELETE", f"/v1/tenants/{tenant}/nodes/{name}", params=params)

    async def attach_floating(self, tenant: str, name: str, address: str) -> Node:
        """Attach floating address `address` of the calling server's pools to node `name` it
        hosts (its credential, with the tenant's token). The address attached to another node
        raises Conflict with `code` floating_taken; the node having another one, with
        floating_attached."""
        body = {"address": address}
        path = f"/v1/tenants/{tenant}/nodes/{name}/floating"
        return await self._call("PUT", path, Node, json=body)

    async def detach_floating(self, tenant: str, name: str) -> None:
        """Release node `name`'s floating address; nothing attached is a success too."""
        await self._call("DELETE", f"/v1/tenants/{tenant}/nodes/{name}/floating")

    async def list_floating(self, server: str | None = None) -> list[FloatingAddress]:
        """Every attached floating address (of `server`'s pools, if given): admin only."""
        params = {"server": server} if server else None
        return await self._call("GET", "/v1/floating", list[FloatingAddress], params=params)

    async def create_link(self, tenant: str, kind: LinkKind | str, a: str, b: str) -> Link:
        body = {"kind": str(kind), "ends": [a, b]}
        return await self._call("POST", f"/v1/tenants/{tenant}/links", Link, json=body)

    async def list_links(self, tenant: str) -> list[Link]:
        return await self._call("GET", f"/v1/tenants/{tenant}/links", list[Link])

    async def delete_link(self, tenant: str, link_id: str) -> None:
        await self._call("DELETE", f"/v1/tenants/{tenant}/links/{link_id}")

    # lookups and changes

    async def resolve(
        self,
        ip: str | None = None,
        *,
        locator: str | None = None,
        name: str | None = None,
        source: str | None = None,
        tenant: str | None = None,
        network: str | None = None,
        source_ip: str | None = None,
    ) -> Resolution:
        """Name the destination by tenant address, locator or node name; the source by node id,
        or by tenant, network and source_ip."""
        params = {
            "ip": ip,
            "locator": locator,
            "name": name,
            "source": source,
            "tenant": tenant,
            "network": network,
            "source_ip": source_ip,
        }
        params = {key: value for key, value in params.items() if value is not None}
        return await self._call("GET", "/v1/resolve", Resolution, params=params)

    async def outbound(self, source: str, ip: str) -> Outbound:
        """Whether node `source` may reach `ip`, outside its tenant, through source NAT."""
        params = {"source": source, "ip": ip}
        return await self._call("GET", "/v1/outbound", Outbound, params=params)

    async def locate(self, locator: str) -> Location:
        return await self._call("GET", f"/v1/locators/{locator}", Location)

    async def changes(
        self,
        since: int | None = None,
        *,
        wait: float = 0,
        limit: int = 500,
        tenants: Iterable[str] = (),
    ) -> ChangePage:
        """Changes after `since`; `since=None` only reports the current revision."""
        params: list[tuple[str, str]] = [("limit", str(limit)), ("wait", str(wait))]
        params += [("tenant", tenant) for tenant in tenants]
        if since is not None:
            params.append(("since", str(since)))
        return await self._call(
            "GET", "/v1/changes", ChangePage, params=params, timeout=wait + self.timeout
        )


class LookupCache:
    """Lookup answers, and which changes make them stale.

    An answer read at revision R is kept only if no change after R has been applied yet;
    every later change that touches it evicts it, so a cached answer is always one that the
    directory would still give.
    """

    def __init__(self) -> None:
        self.revision = 0
        self._answers: dict[tuple, BaseModel] = {}
        self._by_node: dict[str, set[tuple]] = defaultdict(set)
        self._by_tenant: dict[str, set[tuple]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: tuple) -> Any:
        return self._answers.get(key)

    def store(self, key: tuple, answer: Resolution | Location) -> None:
        if answer.revision < self.revision:
            return  # a change we already applied may postdate this answer
        self._answers[key] = answer
        nodes = (
            [answer.node] if isinstance(answer, Location) else [answer.source, answer.destination]
        )
        for node in nodes:
            self._by_node[node.id].add(key)
            self._by_tenant[node.tenant].add(key)

    def apply(self, change: Change) -> None:
        if change.type in (ChangeType.LINK_CREATED, ChangeType.LINK_REMOVED):
            self._evict(self._by_tenant.pop(change.tenant, set()))
        elif change.node is not None and change.type != ChangeType.NODE_CREATED:
            self._evict(self._by_node.pop(change.node.id, set()))
        self.revision = max(self.revision, change.revision)

    def _evict(self, keys: set[tuple]) -> None:
        for key in keys:
            self._answers.pop(key, None)

    def clear(self) -> None:
        self._answers.clear()
        self._by_node.clear()
        self._by_tenant.clear()


Callback = Callable[[Change], Awaitable[None] | None]


class CachedResolver:
    """A controller's view of the directory: cached lookups, and a feed of relevant changes.

    `on_change` is called for every change (drop flows for a moved or deleted node, or for a
    removed link); `on_resync` when changes were lost (the log was pruned while this resolver
    was away): the controller should then drop every flow it derived from lookups.
    """

    def __init__(
        self,
        client: DirectoryClient,
        *,
        tenants: Iterable[str] = (),
        on_change: Callback | None = None,
        on_resync: Callable[[], Any] | None = None,
        wait: float = 25,
    ) -> None:
        self.client = client
        self.tenants = list(tenants)
        self.on_change = on_change
        self.on_resync = on_resync
        self.wait = wait
        self.cache = LookupCache()
        # Lookups answered from the cache (hit), asked of the directory (miss), or asked
        # uncached because the change stream is not followed (bypass): for the metrics.
        self.lookups: Counter[str] = Counter()
        self.live = False
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> CachedResolver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Begin at the directory's current revision and follow changes from there."""
        self.cache.revision = (await self.client.changes(None)).revision
        self.live = True
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def resolve(self, ip: str | None = None, **names: str) -> Resolution:
        key = ("resolve", ip, *sorted(names.items()))
        return await self._cached(key, lambda: self.client.resolve(ip, **names))

    async def outbound(self, source: str, ip: str) -> Outbound:
        """Not cached: its answer becomes flows, and a network.updated change removes them."""
        return await self.client.outbound(source, ip)

    async def locate(self, locator: str) -> Location:
        return await self._cached(("locate", locator), lambda: self.client.locate(locator))

    async def _cached(self, key: tuple, fetch: Callable[[], Awaitable[T]]) -> T:
        if self.live and (answer := self.cache.get(key)) is not None:
            self.lookups["hit"] += 1
            return answer
        self.lookups["miss" if self.live else "bypass"] += 1
        answer = await fetch()
        if self.live:
            self.cache.store(key, answer)
        return answer

    async def _follow(self) -> None:
        """Long-poll the change log from the last applied revision; reconnecting resumes."""
        delay = 0.1
        resync = False
        while True:
            try:
                if resync:
                    self.cache.clear()
                    self.cache.revision = (await self.client.changes(None)).revision
                    resync = False
                    if self.on_resync:
                        await _maybe_await(self.on_resync())
                page = await self.client.changes(
                    self.cache.revision,
                    wait=0 if not self.live else self.wait,
                    tenants=self.tenants,
                )
            except Gone:
                log.warning(
                    "directory changes after %s were pruned; resynchronising", self.cache.revision
                )
                self.live, resync = False, True
                continue
            except DirectoryError as error:
                if self.live:
                    log.warning("lost the directory change stream: %s", error)
                self.live = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
                continue
            for change in page.changes:
                self.cache.apply(change)
                if self.on_change:
                    await _maybe_await(self.on_change(change))
            self.cache.revision = max(self.cache.revision, page.revision)
            self.live = not page.more  # cached answers are served only when caught up
            delay = 0.1


async def _maybe_await(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
