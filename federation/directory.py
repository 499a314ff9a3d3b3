"""The directory's rules, written once on top of any `Store`.

Keys (every value is JSON):

    t/{tenant}                       Tenant; re-written by every change of the tenant
    tok/{sha256 of secret}           {tenant, id}
    tt/{tenant}/{token id}           TokenInfo + hash
    w/{tenant}/{network}             Network
    n/{tenant}/{node name}           Node          (and the same Node under:)
    id/{node id}, ip/{tenant}/{ip}, loc/{locator}
    mac/{tenant}/{network}/{mac}     node id
    l/{tenant}/{link id}             Link
    srv                              the pool registry; re-written by every enrolment
    s/{server}                       Server (name, pools, floating pools)
    stok/{sha256 of secret}          Server (the credential's server)
    sn/{server}/{node id}            {tenant, name}: the nodes a server hosts
    fip/{address}                    FloatingAddress {address, tenant, node, server}: the node a
                                     floating address is attached to (that Node's `floating`)
    cat/{server}                     the server's catalogue entry (a lease; never logged)

Every write of a tenant's records expects `t/{tenant}` unchanged since it was read and
re-writes it, so the writes of one tenant are serialised (optimistic concurrency: a loser
re-reads and tries again). Checks that span tenants (tenant names, locators, floating
addresses, token hashes) are expectations on the unique key itself. Each write appends one
change record, in the same transaction, when it matters to controllers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard, TypeVar

import netaddr
from pydantic import BaseModel

from federation.errors import (
    Conflict,
    FloatingAttached,
    FloatingTaken,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from federation.feed import Feed, Record
from federation.models import (
    Announcement,
    CatalogueEntry,
    Change,
    ChangePage,
    ChangeType,
    FloatingAddress,
    LinkCreate,
    Location,
    NetworkCreate,
    NetworkUpdate,
    NodeCreate,
    NodeUpdate,
    Outbound,
    OutboundQuery,
    Resolution,
    ResolveQuery,
    ServerEnrolled,
    TokenCreated,
    TokenInfo,
)
from federation.storage import Delete, Expect, Put, Snapshot, Store
from nvi.core.model import Link, LinkKind, Network, Node, Server, Tenant, parse_pool
from nvi.core.tokens import new_token, token_hash

_ATTEMPTS = 50


def _dump(record: BaseModel | dict[str, Any]) -> bytes:
    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


M = TypeVar("M", bound=BaseModel)


def _load(model: type[M], raw: bytes) -> M:
    return model.model_validate_json(raw)


def _hosts(server: Server, node: Node) -> bool:
    return node.server == server.name and server.holds(node.locator)


def _visible(node: Node | None, tenant: str | None, server: Server | None) -> TypeGuard[Node]:
    """Whether a lookup's caller sees `node`: a tenant only its own, a server only the nodes it
    hosts (the admin every one); an unseen node answers like a missing one."""
    return (
        node is not None
        and tenant in (None, node.tenant)
        and (server is None or _hosts(server, node))
    )


def _server(raw: bytes) -> Server:
    data = json.loads(raw)
    data.pop("hash", None)
    return Server.model_validate(data)


def _entry(raw: bytes, now: datetime) -> CatalogueEntry:
    data = json.loads(raw)
    expires = datetime.fromisoformat(data["expires"])
    return CatalogueEntry.model_validate(data | {"alive": now < expires})


def _identity(entry: CatalogueEntry) -> tuple:
    """What an audit reader cares about in an entry; free capacity and times change often."""
    return (entry.agent_url, entry.cloud, sorted(entry.kinds), entry.version)


def _overlap(first: netaddr.IPRange, second: netaddr.IPRange) -> bool:
    return first.first <= second.last and second.first <= first.last


def _random_mac() -> str:
    octets = [0x02] + [random.randrange(256) for _ in range(5)]
    return ":".join(f"{octet:02x}" for octet in octets)


@dataclass
class _Write:
    """What one attempt of a change wants to commit, and what to return if it does."""

    expects: list[Expect] = field(default_factory=list)
    ops: list[Put | Delete] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None

    def put(self, key: str, record: BaseModel | dict[str, Any]) -> None:
        self.ops.append(Put(key, _dump(record)))

    def delete(self, *keys: str) -> None:
        self.ops.extend(Delete(key) for key in keys)

    def change(self, kind: ChangeType, tenant: str, **records: BaseModel | None) -> None:
        self.changes.append(
            {"type": kind.value, "tenant": tenant}
            | {name: r.model_dump(mode="json") for name, r in records.items() if r is not None}
        )


def _destination_key(query: ResolveQuery, tenant: str | None) -> str:
    """Where a lookup's destination is kept: by locator, or by name or address in the tenant."""
    if query.locator:
        return f"loc/{query.locator}"
    if query.name:
        return f"n/{tenant}/{query.name}"
    return f"ip/{tenant}/{query.ip}"


def _node_keys(node: Node) -> list[str]:
    return [
        f"n/{node.tenant}/{node.name}",
        f"id/{node.id}",
        f"ip/{node.tenant}/{node.ip}",
        f"loc/{node.locator}",
    ]


def _hosting_key(node: Node) -> str:
    return f"sn/{node.server}/{node.id}"


def _floating_keys(node: Node) -> list[str]:
    """The index entry of the node's floating address, if it has one."""
    return [f"fip/{node.floating}"] if node.floating else []


def _put_node(write: _Write, node: Node) -> None:
    for key in _node_keys(node):
        write.put(key, node)


def _in_pools(pools: Iterable[str], address: str) -> bool:
    ip = netaddr.IPAddress(address)
    return any(ip in parse_pool(pool) for pool in pools)


def _check_locators(server: Server, locators: Iterable[str]) -> None:
    """A server places nodes only on its own locators."""
    for locator in locators:
        if not server.holds(locator):
            raise Forbidden(
                f"locator {locator} is not in the pools of server {server.name!r} "
                f"({', '.join(server.pools)})"
            )


class Directory:
    """Tenants, tokens, networks, nodes, links, lookups and the change log."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.feed = Feed(store)

    async def start(self) -> None:
        """Start following the change log (needed by `changes`)."""
        await self.feed.start()

    async def stop(self) -> None:
        await self.feed.stop()

    async def prune(self, keep: int) -> None:
        """Drop all but the newest `keep` change records, from the log and from memory."""
        await self.store.prune(keep)
        self.feed.forget(keep)

    async def _write(self, attempt: Callable[[], Awaitable[_Write]]) -> Any:
        """Run `attempt` until its expectations hold at commit time; an attempt that finds
        nothing to change (the same again) returns without a commit."""
        for tries in range(_ATTEMPTS):
            write = await attempt()
            if not write.ops:
                return write.result
            record = json.dumps(write.changes).encode() if write.changes else None
            if await self.store.commit(write.expects, write.ops, record) is not None:
                return write.result
            await asyncio.sleep(random.uniform(0, 0.001 * tries))
        raise Unavailable("the directory is too busy with changes to this tenant; try again")

    async def _lock_tenant(self, tenant: str, *keys: str) -> tuple[_Write, Snapshot]:
        """Read the tenant (and `keys`) and start a write that serialises with its others."""
        snapshot = await self.store.get(f"t/{tenant}", *keys)
        raw = snapshot.value(f"t/{tenant}")
        if raw is None:
            raise NotFound(f"no tenant {tenant!r}")
        write = _Write(expects=[Expect(f"t/{tenant}", snapshot.mod_rev(f"t/{tenant}"))])
        write.ops.append(Put(f"t/{tenant}", raw))
        return write, snapshot

    async def _lock_record(self, tenant: str, key: str, missing: str) -> tuple[_Write, bytes]:
        """Start a tenant write that changes the existing record at `key`."""
        write, snapshot = await self._lock_tenant(tenant, key)
        raw = snapshot.value(key)
        if raw is None:
            raise NotFound(missing)
        return write, raw

    async def _read_record(self, tenant: str, key: str, missing: str) -> bytes:
        snapshot = await self.store.get(f"t/{tenant}", key)
        if f"t/{tenant}" not in snapshot.entries:
            raise NotFound(f"no tenant {tenant!r}")
        raw = snapshot.value(key)
        if raw is None:
            raise NotFound(missing)
        return raw

    # tenants and tokens

    async def create_tenant(self, name: str) -> Tenant:
        tenant = Tenant(name=name)

        async def attempt() -> _Write:
            if (await self.store.get(f"t/{name}")).entries:
                raise Conflict(f"tenant {name!r} exists")
            write = _Write(expects=[Expect(f"t/{name}", 0)], result=tenant)
            write.put(f"t/{name}", tenant)
            return write

        return await self._write(attempt)

    async def get_tenant(self, name: str) -> Tenant:
        raw = (await self.store.get(f"t/{name}")).value(f"t/{name}")
        if raw is None:
            raise NotFound(f"no tenant {name!r}")
        return _load(Tenant, raw)

    async def list_tenants(self) -> list[Tenant]:
        return [_load(Tenant, e.value) for e in (await self.store.scan("t/")).entries.values()]

    async def delete_tenant(self, name: str) -> None:
        async def attempt() -> _Write:
            write, _ = await self._lock_tenant(name)
            if (await self.store.scan(f"w/{name}/")).entries:
                raise Conflict(f"tenant {name!r} still has networks; delete them first")
            tokens = (await self.store.scan(f"tt/{name}/")).entries.values()
            write.ops = [Delete(f"t/{name}")]
            for entry in tokens:
                write.delete(entry.key, f"tok/{json.loads(entry.value)['hash']}")
            return write

        await self._write(attempt)

    async def create_token(self, tenant: str, description: str = "") -> TokenCreated:
        secret = new_token()
        digest = token_hash(secret)
        info = TokenInfo(
            id=secrets.token_hex(8),
            tenant=tenant,
            description=description,
            created=datetime.now(UTC),
        )

        async def attempt() -> _Write:
            write, _ = await self._lock_tenant(tenant)
            write.expects.append(Expect(f"tok/{digest}", 0))
            write.put(f"tok/{digest}", {"tenant": tenant, "id": info.id})
            write.put(f"tt/{tenant}/{info.id}", info.model_dump(mode="json") | {"hash": digest})
            write.result = TokenCreated(**info.model_dump(), token=secret)
            return write

        return await self._write(attempt)

    async def list_tokens(self, tenant: str) -> list[TokenInfo]:
        await self.get_tenant(tenant)
        entries = (await self.store.scan(f"tt/{tenant}/")).entries.values()
        return [TokenInfo.model_validate_json(entry.value) for entry in entries]

    async def delete_token(self, tenant: str, token_id: str) -> None:
        async def attempt() -> _Write:
            key = f"tt/{tenant}/{token_id}"
            write, raw = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no token {token_id!r}"
            )
            write.delete(key, f"tok/{json.loads(raw)['hash']}")
            return write

        await self._write(attempt)

    async def credentials(
        self, secret: str, tenant_secret: str | None = None
    ) -> tuple[str | None, Server | None, str | None]:
        """(tenant of `secret`, server of `secret`, tenant of `tenant_secret`), in one read."""
        tenant_key, server_key = f"tok/{token_hash(secret)}", f"stok/{token_hash(secret)}"
        keys = [tenant_key, server_key]
        if tenant_secret is not None:
            keys.append(f"tok/{token_hash(tenant_secret)}")
        snapshot = await self.store.get(*keys)
        tenant = snapshot.value(tenant_key)
        server = snapshot.value(server_key)
        on_behalf = snapshot.value(keys[-1]) if tenant_secret is not None else None
        return (
            json.loads(tenant)["tenant"] if tenant else None,
            _load(Server, server) if server else None,
            json.loads(on_behalf)["tenant"] if on_behalf else None,
        )

    # servers

    async def enroll_server(
        self, name: str, pools: list[str], floating: Sequence[str] = ()
    ) -> ServerEnrolled:
        """Register a server, its locator pools and its floating pools. No pool overlaps
        another, locator or floating, of this server or any other: every address has one
        owner and one use."""
        secret = new_token()
        digest = token_hash(secret)
        server = Server(name=name, pools=pools, floating=list(floating), created=datetime.now(UTC))
        ranges = [parse_pool(pool) for pool in (*server.pools, *server.floating)]
        for i, first in enumerate(ranges):
            for second in ranges[i + 1 :]:
                if _overlap(first, second):
                    raise InvalidRequest(f"pools {first} and {second} overlap")

        async def attempt() -> _Write:
            registry = await self.store.get("srv", f"s/{name}")
            if f"s/{name}" in registry.entries:
                raise Conflict(f"server {name!r} is enrolled already")
            for other in await self.list_servers():
                for theirs in (*other.pools, *other.floating):
                    for mine in ranges:
                        if _overlap(mine, parse_pool(theirs)):
                            raise Conflict(
                                f"pool {mine} overlaps pool {theirs} of server {other.name!r}"
                            )
            write = _Write(
                expects=[
                    Expect("srv", registry.mod_rev("srv")),
                    Expect(f"s/{name}", 0),
                    Expect(f"stok/{digest}", 0),
                ],
                result=ServerEnrolled(**server.model_dump(), token=secret),
            )
            write.put("srv", {"servers": "registry"})
            write.put(f"s/{name}", server.model_dump(mode="json") | {"hash": digest})
            write.put(f"stok/{digest}", server)
            return write

        return await self._write(attempt)

    async def list_servers(self) -> list[Server]:
        entries = (await self.store.scan("s/")).entries.values()
        return [_server(entry.value) for entry in entries]

    async def get_server(self, name: str) -> Server:
        raw = (await self.store.get(f"s/{name}")).value(f"s/{name}")
        if raw is None:
            raise NotFound(f"no server {name!r}")
        return _server(raw)

    async def revoke_server(self, name: str) -> list[Node]:
        """Withdraw the server's credential, then every node it published; returns those.
        Each step is whole on its own, so an interrupted revocation can be run again."""
        raw = (await self.store.get(f"s/{name}")).value(f"s/{name}")
        if raw is None:
            raise NotFound(f"no server {name!r}")
        digest = json.loads(raw)["hash"]
        await self.store.commit([], [Delete(f"stok/{digest}")], None)
        withdrawn = []
        for entry in (await self.store.scan(f"sn/{name}/")).entries.values():
            hosted = json.loads(entry.value)
            try:
                withdrawn.append(await self.delete_node(hosted["tenant"], hosted["name"]))
            except NotFound:
                await self.store.commit([], [Delete(entry.key)], None)
        await self.store.commit([], [Delete(f"s/{name}"), Delete(f"cat/{name}")], None)
        return withdrawn

    # the catalogue

    async def announce(
        self, server: Server, announcement: Announcement
    ) -> tuple[CatalogueEntry, bool]:
        """Record or renew the server's catalogue entry, a lease of `lease_seconds` by the
        directory's own clock (servers' clocks may drift). Returns the entry and whether it is
        new or says something new (agent_url, cloud, kinds, version): renewals of the same
        entry stay out of the audit log. Never on the change stream: no controller needs it."""
        key, enrolled = f"cat/{server.name}", f"s/{server.name}"

        async def attempt() -> _Write:
            snapshot = await self.store.get(key, enrolled)
            if enrolled not in snapshot.entries:
                raise Forbidden(f"server {server.name!r} is not enrolled")
            now = datetime.now(UTC)
            entry = CatalogueEntry(
                **announcement.model_dump(),
                server=server.name,
                announced=now,
                expires=now + timedelta(seconds=announcement.lease_seconds),
                alive=True,
            )
            previous = snapshot.value(key)
            changed = previous is None or _identity(_entry(previous, now)) != _identity(entry)
            write = _Write(
                expects=[
                    Expect(enrolled, snapshot.mod_rev(enrolled)),  # a revocation wins the race
                    Expect(key, snapshot.mod_rev(key)),
                ],
                result=(entry, changed),
            )
            write.put(key, entry.model_dump(mode="json", exclude={"alive"}))
            return write

        return await self._write(attempt)

    async def catalogue(self) -> list[CatalogueEntry]:
        """Every announced server, by name; `alive` while its lease runs. A dead server's
        entry stays until the server is revoked."""
        now = datetime.now(UTC)
        return [_entry(e.value, now) for e in (await self.store.scan("cat/")).entries.values()]

    async def catalogue_entry(self, server: str) -> CatalogueEntry:
        raw = (await self.store.get(f"cat/{server}")).value(f"cat/{server}")
        if raw is None:
            raise NotFound(f"server {server!r} has not announced itself")
        return _entry(raw, datetime.now(UTC))

    # networks

    async def create_network(self, tenant: str, spec: NetworkCreate) -> Network:
        cidr = ipaddress.ip_network(spec.cidr)
        gateway = spec.gateway or str(next(cidr.hosts()))
        network = Network(
            tenant=tenant, name=spec.name, cidr=spec.cidr, gateway=gateway, outbound=spec.outbound
        )
        if ipaddress.ip_address(gateway) not in cidr or gateway in (
            str(cidr.network_address),
            str(cidr.broadcast_address),
        ):
            raise InvalidRequest(f"gateway {gateway} is not a host address of {cidr}")

        async def attempt() -> _Write:
            write, _ = await self._lock_tenant(tenant)
            for entry in (await self.store.scan(f"w/{tenant}/")).entries.values():
                other = _load(Network, entry.value)
                if other.name == spec.name:
                    raise Conflict(f"tenant {tenant!r} already has a network {spec.name!r}")
                if cidr.overlaps(ipaddress.ip_network(other.cidr)):
                    raise Conflict(
                        f"{cidr} overlaps network {other.name!r} ({other.cidr}); "
                        "the networks of one tenant must not overlap"
                    )
            write.put(f"w/{tenant}/{spec.name}", network)
            write.result = network
            return write

        return await self._write(attempt)

    async def get_network(self, tenant: str, name: str) -> Network:
        missing = f"tenant {tenant!r} has no network {name!r}"
        return _load(Network, await self._read_record(tenant, f"w/{tenant}/{name}", missing))

    async def list_networks(self, tenant: str) -> list[Network]:
        await self.get_tenant(tenant)
        entries = (await self.store.scan(f"w/{tenant}/")).entries.values()
        return [_load(Network, entry.value) for entry in entries]

    async def update_network(self, tenant: str, name: str, spec: NetworkUpdate) -> Network:
        """Turn outbound access on or off; controllers learn it from the change stream."""

        async def attempt() -> _Write:
            key = f"w/{tenant}/{name}"
            write, raw = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no network {name!r}"
            )
            network = _load(Network, raw).model_copy(update={"outbound": spec.outbound})
            write.put(key, network)
            write.change(ChangeType.NETWORK_UPDATED, tenant, network=network)
            write.result = network
            return write

        return await self._write(attempt)

    async def delete_network(self, tenant: str, name: str) -> None:
        async def attempt() -> _Write:
            key = f"w/{tenant}/{name}"
            write, _ = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no network {name!r}"
            )
            if any(node.network == name for node in await self._nodes(tenant)):
                raise Conflict(f"network {name!r} still has nodes; delete them first")
            write.delete(key)
            self._remove_links(write, await self._links(tenant), LinkKind.NETWORK, name)
            return write

        await self._write(attempt)

    # nodes

    async def _nodes(self, tenant: str) -> list[Node]:
        entries = (await self.store.scan(f"n/{tenant}/")).entries.values()
        return [_load(Node, entry.value) for entry in entries]

    async def create_node(self, tenant: str, spec: NodeCreate, server: Server) -> Node:
        return (await self.create_nodes(tenant, [spec], server))[0]

    async def create_nodes(
        self, tenant: str, specs: list[NodeCreate], server: Server
    ) -> list[Node]:
        """Publish nodes of `server` atomically: all of them, complete, or none."""
        ids = [uuid.uuid4().hex for _ in specs]
        _check_locators(server, (spec.locator for spec in specs))

        async def attempt() -> _Write:
            write, _ = await self._lock_tenant(tenant)
            networks = {n.name: n for n in await self.list_networks(tenant)}
            existing = await self._nodes(tenant)
            names = {node.name for node in existing}
            used_ips = {node.ip for node in existing}
            macs = {(node.network, node.mac) for node in existing}
            nodes = []
            for node_id, spec in zip(ids, specs, strict=True):
                network = networks.get(spec.network)
                if network is None:  # state, not form: 404 (docs/decisions.md)
                    raise NotFound(f"tenant {tenant!r} has no network {spec.network!r}")
                if spec.name in names:
                    raise Conflict(f"tenant {tenant!r} already has a node {spec.name!r}")
                ip = spec.ip or self._free_ip(network, used_ips)
                if not network.usable(ip):  # the stored network decides: 409
                    raise Conflict(
                        f"{ip} is not a usable address of network {network.name!r} "
                        f"({network.cidr}, gateway {network.gateway})"
                    )
                if ip in used_ips:
                    raise Conflict(f"{ip} is already used in tenant {tenant!r}")
                mac = spec.mac or _random_mac()
                if (spec.network, mac) in macs:
                    raise Conflict(f"MAC {mac} is already used in network {spec.network!r}")
                node = Node(
                    id=node_id,
                    tenant=tenant,
                    name=spec.name,
                    kind=spec.kind,
                    network=spec.network,
                    ip=ip,
                    mac=mac,
                    locator=spec.locator,
                    server=server.name,
                )
                names.add(node.name)
                used_ips.add(ip)
                macs.add((node.network, mac))
                nodes.append(node)
            await self._claim_locators(write, [node.locator for node in nodes])
            await self._expect_enrolled(write, server)
            for node in nodes:
                _put_node(write, node)
                write.put(f"mac/{tenant}/{node.network}/{node.mac}", {"id": node.id})
                write.put(_hosting_key(node), {"tenant": tenant, "name": node.name})
                write.change(ChangeType.NODE_CREATED, tenant, node=node)
            write.result = nodes
            return write

        return await self._write(attempt)

    async def _claim_locators(self, write: _Write, locators: list[str]) -> None:
        """Locators are global: expect each to be unused at commit, whichever tenant races."""
        if len(set(locators)) != len(locators):
            raise Conflict("the same locator is given twice")
        taken = await self.store.get(*(f"loc/{locator}" for locator in locators))
        for entry in taken.entries.values():
            raise Conflict(f"locator {entry.key[4:]} is already in use")
        write.expects.extend(Expect(f"loc/{locator}", 0) for locator in locators)

    async def _expect_enrolled(self, write: _Write, server: Server) -> None:
        """Commit only while the server is still enrolled (a revocation wins the race)."""
        snapshot = await self.store.get(f"s/{server.name}")
        if f"s/{server.name}" not in snapshot.entries:
            raise Forbidden(f"server {server.name!r} is not enrolled")
        write.expects.append(Expect(f"s/{server.name}", snapshot.mod_rev(f"s/{server.name}")))

    @staticmethod
    def _free_ip(network: Network, used: set[str]) -> str:
        for host in ipaddress.ip_network(network.cidr).hosts():
            if str(host) not in used and network.usable(str(host)):
                return str(host)
        raise Conflict(f"network {network.name!r} ({network.cidr}) has no free address")

    async def get_node(self, tenant: str, name: str) -> Node:
        missing = f"tenant {tenant!r} has no node {name!r}"
        return _load(Node, await self._read_record(tenant, f"n/{tenant}/{name}", missing))

    async def list_nodes(self, tenant: str, network: str | None = None) -> list[Node]:
        await self.get_tenant(tenant)
        return [n for n in await self._nodes(tenant) if network in (None, n.network)]

    async def move_node(self, tenant: str, name: str, update: NodeUpdate, server: Server) -> Node:
        """Move a node to `server` (the one publishing the move); controllers holding flows
        for it are told. A move to another server releases the node's floating address (it is
        of the old server's pools)."""
        _check_locators(server, [update.locator])

        async def attempt() -> _Write:
            key = f"n/{tenant}/{name}"
            write, raw = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no node {name!r}"
            )
            old = _load(Node, raw)
            moved: dict[str, Any] = {"locator": update.locator, "server": server.name}
            if old.server != server.name:
                moved["floating"] = None
            new = old.model_copy(update=moved)
            write.result = new
            if new == old:
                return _Write(result=old)
            if new.locator != old.locator:
                await self._claim_locators(write, [new.locator])
                write.delete(f"loc/{old.locator}")
            await self._expect_enrolled(write, server)
            if old.server != new.server:
                write.delete(_hosting_key(old), *_floating_keys(old))
            write.put(_hosting_key(new), {"tenant": tenant, "name": name})
            _put_node(write, new)
            write.change(ChangeType.NODE_MOVED, tenant, node=new, previous=old)
            return write

        return await self._write(attempt)

    async def _lock_node(
        self, tenant: str, name: str, server: Server | None
    ) -> tuple[_Write, Node]:
        """Start a tenant write that changes node `name`; `server`: only one it hosts (to a
        server, what it does not host does not exist: nor does the tenant)."""
        key = f"n/{tenant}/{name}"
        if server is None:
            write, raw = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no node {name!r}"
            )
            return write, _load(Node, raw)
        missing = f"server {server.name!r} hosts no node {tenant}/{name}"
        try:
            write, raw = await self._lock_record(tenant, key, missing)
        except NotFound:
            raise NotFound(missing) from None
        node = _load(Node, raw)
        if not _hosts(server, node):
            raise NotFound(missing)
        return write, node

    async def delete_node(
        self, tenant: str, name: str, *, server: Server | None = None, locator: str | None = None
    ) -> Node:
        """Delete a node's record, and release its floating address; `server`: only one it
        published (a withdrawal, which needs no tenant token), `locator`: only while it holds
        that locator (it has not moved)."""

        async def attempt() -> _Write:
            write, node = await self._lock_node(tenant, name, server)
            if locator is not None and node.locator != locator:
                raise NotFound(f"node {tenant}/{name} no longer holds locator {locator}")
            write.delete(
                *_node_keys(node),
                f"mac/{tenant}/{node.network}/{node.mac}",
                _hosting_key(node),
                *_floating_keys(node),
            )
            write.change(ChangeType.NODE_DELETED, tenant, node=node)
            self._remove_links(write, await self._links(tenant), LinkKind.NODE, name)
            write.result = node
            return write

        return await self._write(attempt)

    # floating addresses

    async def attach_floating(self, tenant: str, name: str, address: str, server: Server) -> Node:
        """Attach `address`, of `server`'s floating pools, to a node that server hosts. An
        address has one node, of any tenant, and a node one address; the same again is a
        success that changes nothing. No change record: no other server needs it."""
        if not _in_pools(server.floating, address):
            pools = ", ".join(server.floating) or "none"
            raise Forbidden(
                f"{address} is not in the floating pools of server {server.name!r} ({pools})"
            )
        key, claim = f"n/{tenant}/{name}", f"fip/{address}"

        async def attempt() -> _Write:
            write, snapshot = await self._lock_tenant(tenant, key, claim)
            raw = snapshot.value(key)
            if raw is None:
                raise NotFound(f"tenant {tenant!r} has no node {name!r}")
            node = _load(Node, raw)
            if not _hosts(server, node):
                raise Forbidden(f"server {server.name!r} does not host node {tenant}/{name}")
            if node.floating == address:
                return _Write(result=node)
            if claim in snapshot.entries:  # whose is not this tenant's business
                raise FloatingTaken(f"{address} is attached to another node")
            if node.floating is not None:
                raise FloatingAttached(
                    f"node {tenant}/{name} has floating address {node.floating}; detach it first"
                )
            await self._expect_enrolled(write, server)
            write.expects.append(Expect(claim, 0))
            attached = node.model_copy(update={"floating": address})
            _put_node(write, attached)
            write.put(
                claim,
                FloatingAddress(address=address, tenant=tenant, node=name, server=server.name),
            )
            write.result = attached
            return write

        return await self._write(attempt)

    async def detach_floating(
        self, tenant: str, name: str, *, server: Server | None = None
    ) -> None:
        """Release a node's floating address, if it has one; `server`: only of a node it hosts
        (as delete_node)."""

        async def attempt() -> _Write:
            write, node = await self._lock_node(tenant, name, server)
            if node.floating is None:
                return _Write()
            write.delete(*_floating_keys(node))
            _put_node(write, node.model_copy(update={"floating": None}))
            return write

        await self._write(attempt)

    async def list_floating(self, server: str | None = None) -> list[FloatingAddress]:
        """Every attached floating address (of `server`'s pools, if given), in address order."""
        entries = (await self.store.scan("fip/")).entries.values()
        found = [_load(FloatingAddress, entry.value) for entry in entries]
        return sorted(
            (f for f in found if server in (None, f.server)),
            key=lambda f: netaddr.IPAddress(f.address),
        )

    # links

    async def _links(self, tenant: str) -> list[Link]:
        entries = (await self.store.scan(f"l/{tenant}/")).entries.values()
        return [_load(Link, entry.value) for entry in entries]

    @staticmethod
    def _remove_links(write: _Write, links: Iterable[Link], kind: LinkKind, end: str) -> None:
        for link in links:
            if link.kind == kind and end in (link.a, link.b):
                write.delete(f"l/{link.tenant}/{link.id}")
                write.change(ChangeType.LINK_REMOVED, link.tenant, link=link)

    async def create_link(self, tenant: str, spec: LinkCreate) -> Link:
        a, b = spec.pair
        link_id = Link.make_id(spec.kind, a, b)
        link = Link(tenant=tenant, id=link_id, kind=spec.kind, a=a, b=b)
        prefix = "w" if spec.kind == LinkKind.NETWORK else "n"
        ends = [f"{prefix}/{tenant}/{a}", f"{prefix}/{tenant}/{b}"]

        async def attempt() -> _Write:
            write, snapshot = await self._lock_tenant(tenant, f"l/{tenant}/{link_id}", *ends)
            for end, name in zip(ends, (a, b), strict=True):
                if end not in snapshot.entries:
                    raise NotFound(f"tenant {tenant!r} has no {spec.kind.value} {name!r}")
            if f"l/{tenant}/{link_id}" in snapshot.entries:
                raise Conflict(f"link {link_id!r} exists")
            write.put(f"l/{tenant}/{link_id}", link)
            write.change(ChangeType.LINK_CREATED, tenant, link=link)
            write.result = link
            return write

        return await self._write(attempt)

    async def list_links(self, tenant: str) -> list[Link]:
        await self.get_tenant(tenant)
        return await self._links(tenant)

    async def delete_link(self, tenant: str, link_id: str) -> None:
        async def attempt() -> _Write:
            key = f"l/{tenant}/{link_id}"
            write, raw = await self._lock_record(
                tenant, key, f"tenant {tenant!r} has no link {link_id!r}"
            )
            write.delete(key)
            write.change(ChangeType.LINK_REMOVED, tenant, link=_load(Link, raw))
            return write

        await self._write(attempt)

    # lookups

    async def resolve(
        self, query: ResolveQuery, tenant: str | None = None, server: Server | None = None
    ) -> Resolution:
        """Destination node of `query.ip` in the source's tenant, and whether policy allows it.

        `tenant`, when given, is the caller's tenant, and `server` the calling server: a
        source outside the tenant, or not hosted by the server, is not found.
        """
        by_locator = f"loc/{query.locator}" if query.locator else None
        if query.source is not None:
            source_key = f"id/{query.source}"
            snapshot = await self.store.get(source_key, *filter(None, [by_locator]))
        else:
            source_key = f"ip/{query.tenant}/{query.source_ip}"
            snapshot = await self.store.get(source_key, _destination_key(query, query.tenant))
        raw = snapshot.value(source_key)
        source = _load(Node, raw) if raw else None
        if not _visible(source, tenant, server) or query.network not in (None, source.network):
            raise NotFound("no such source node")
        destination_key = _destination_key(query, source.tenant)
        if destination_key not in snapshot.entries and query.source is not None:
            snapshot.entries.update((await self.store.get(destination_key)).entries)
        destination_raw = snapshot.value(destination_key)
        destination = _load(Node, destination_raw) if destination_raw else None
        if destination is None or destination.tenant != source.tenant:
            # Another tenant's locator answers exactly like a free one.
            wanted = (
                f"name {query.name}"
                if query.name
                else f"locator {query.locator}"
                if by_locator
                else f"address {query.ip}"
            )
            raise NotFound(f"no node with {wanted} in the source's tenant")
        return Resolution(
            source=source,
            destination=destination,
            allowed=await self._allowed(source, destination),
            revision=snapshot.revision,
        )

    async def outbound(
        self, query: OutboundQuery, tenant: str | None = None, server: Server | None = None
    ) -> Outbound:
        """Whether source node `query.source` may reach `query.ip` through its server's source
        NAT: its network has outbound on and the address is outside every network of its
        tenant. A source outside the caller's tenant or not hosted by the server is not found."""
        snapshot = await self.store.get(f"id/{query.source}")
        raw = snapshot.value(f"id/{query.source}")
        source = _load(Node, raw) if raw else None
        if not _visible(source, tenant, server):
            raise NotFound("no such source node")
        networks = await self.store.scan(f"w/{source.tenant}/")
        loaded = [_load(Network, entry.value) for entry in networks.entries.values()]
        own = next((n for n in loaded if n.name == source.network), None)
        inside = any(n.contains(query.ip) for n in loaded)
        allowed = own is not None and own.outbound and not inside
        return Outbound(
            allowed=allowed, outside=not inside, revision=max(snapshot.revision, networks.revision)
        )

    async def _allowed(self, source: Node, destination: Node) -> bool:
        if source.network == destination.network:
            return True
        tenant = source.tenant
        keys = [
            f"l/{tenant}/{Link.make_id(LinkKind.NETWORK, source.network, destination.network)}",
            f"l/{tenant}/{Link.make_id(LinkKind.NODE, source.name, destination.name)}",
        ]
        return bool((await self.store.get(*keys)).entries)

    async def locate(
        self, locator: str, tenant: str | None = None, server: Server | None = None
    ) -> Location:
        """The node holding a locator; a tenant sees only its own, a server only its own."""
        snapshot = await self.store.get(f"loc/{locator}")
        raw = snapshot.value(f"loc/{locator}")
        node = _load(Node, raw) if raw else None
        if not _visible(node, tenant, server):
            raise NotFound(f"no node has locator {locator}")
        return Location(node=node, revision=snapshot.revision)

    # the change log

    async def changes(
        self,
        since: int | None,
        limit: int = 500,
        wait: float = 0,
        tenants: Iterable[str] = (),
        hosted_by: str | None = None,
    ) -> ChangePage:
        """Changes after revision `since` (of `tenants`, if given), waiting up to `wait` s.
        `hosted_by`: only of the tenants that server hosts nodes of, as they are when each
        change is read. Recent changes come from the feed's memory, older ones from the log."""
        asked = set(tenants)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        if since is None:
            return ChangePage(changes=[], revision=(await self.store.get()).revision)
        await self.feed.catch_up()
        while True:
            if self.feed.covers(since):
                records, head = self.feed.after(since, limit), self.feed.head
            else:
                page = await self.store.log(since, limit)
                records = [Record(rev, json.loads(raw)) for rev, raw in page.records]
                head = page.head
            wanted: set[str] | None = asked or None
            if hosted_by is not None:
                hosted = self.feed.hosting.tenants(hosted_by)
                wanted = hosted & asked if asked else hosted
            changes = [
                Change(revision=record.revision, **change)
                for record in records
                for change in record.changes
                if wanted is None or change["tenant"] in wanted
            ]
            full = len(records) == limit
            cursor = records[-1].revision if full else max(head, since)
            if changes or full or loop.time() >= deadline:
                self.feed.delivered += len(changes)
                return ChangePage(changes=changes, revision=cursor, more=full)
            since = cursor
            await self.feed.wait(since, deadline - loop.time(), asked, hosted_by)
