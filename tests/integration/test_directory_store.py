"""The directory's rules, run against both backends (a real sqlite file, a real etcd cluster)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from federation.directory import Directory
from federation.errors import Conflict, Forbidden, Gone, InvalidRequest, NotFound
from federation.models import (
    ChangeType,
    LinkCreate,
    NetworkCreate,
    NodeCreate,
    NodeUpdate,
    ResolveQuery,
)
from nvi.core.model import Node, Server

pytest_plugins = ["integration.directory_fixtures"]

NOW = datetime.now(UTC)
S1 = Server(name="s1", pools=["192.0.2.0/24"], created=NOW)
S2 = Server(name="s2", pools=["198.51.100.0/24"], created=NOW)


def spec(name: str, network: str = "front", locator: str | None = None, **fields) -> NodeCreate:  # noqa: ANN003
    locator = locator or f"192.0.2.{abs(hash(name)) % 250 + 1}"
    return NodeCreate(name=name, kind="vm", network=network, locator=locator, **fields)


@pytest.fixture(autouse=True)
async def enrolled(directory: Directory) -> None:
    """Servers s1 and s2 with the pools the tests publish in."""
    for server in (S1, S2):
        await directory.enroll_server(server.name, server.pools)


async def tenant_of(directory: Directory, secret: str) -> str | None:
    return (await directory.credentials(secret))[0]


async def tenant_with_networks(directory: Directory, tenant: str = "acme") -> None:
    await directory.create_tenant(tenant)
    await directory.create_network(tenant, NetworkCreate(name="front", cidr="10.0.0.0/24"))
    await directory.create_network(tenant, NetworkCreate(name="back", cidr="10.0.1.0/24"))


async def state(directory: Directory, tenant: str) -> tuple:
    """Everything a tenant has, to show that a refused change changed nothing."""
    return (
        await directory.list_networks(tenant),
        await directory.list_nodes(tenant),
        await directory.list_links(tenant),
    )


async def test_tenants_are_unique_and_deleted_only_when_empty(directory: Directory) -> None:
    await tenant_with_networks(directory)
    with pytest.raises(Conflict):
        await directory.create_tenant("acme")
    with pytest.raises(Conflict, match="still has networks"):
        await directory.delete_tenant("acme")
    await directory.delete_network("acme", "front")
    await directory.delete_network("acme", "back")
    token = await directory.create_token("acme")
    await directory.delete_tenant("acme")
    assert await directory.list_tenants() == []
    assert await tenant_of(directory, token.token) is None
    with pytest.raises(NotFound):
        await directory.get_tenant("acme")


async def test_tokens_are_stored_hashed_and_revocable(directory: Directory) -> None:
    await directory.create_tenant("acme")
    token = await directory.create_token("acme", "agent")
    assert await tenant_of(directory, token.token) == "acme"
    assert await tenant_of(directory, token.token + "x") is None
    for prefix in ("tok/", "tt/"):
        stored = (await directory.store.scan(prefix)).entries.values()
        assert stored and not any(
            token.token in e.key or token.token.encode() in e.value for e in stored
        )
    assert [t.id for t in await directory.list_tokens("acme")] == [token.id]
    await directory.delete_token("acme", token.id)
    assert await tenant_of(directory, token.token) is None


async def test_networks_may_overlap_across_tenants_only(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    before = await state(directory, "acme")
    with pytest.raises(Conflict, match="overlaps"):
        await directory.create_network("acme", NetworkCreate(name="x", cidr="10.0.0.128/25"))
    with pytest.raises(Conflict, match="already has a network"):
        await directory.create_network("acme", NetworkCreate(name="front", cidr="10.9.0.0/24"))
    with pytest.raises(InvalidRequest, match="gateway"):
        await directory.create_network(
            "acme", NetworkCreate(name="x", cidr="10.9.0.0/24", gateway="10.9.0.255")
        )
    assert await state(directory, "acme") == before
    network = await directory.get_network("umbrella", "front")
    assert (network.cidr, network.gateway) == ("10.0.0.0/24", "10.0.0.1")


async def test_node_addresses_are_allocated_and_never_given_twice(directory: Directory) -> None:
    await tenant_with_networks(directory)
    first = await directory.create_node("acme", spec("a", locator="192.0.2.1"), S1)
    second = await directory.create_node("acme", spec("b", locator="192.0.2.2"), S1)
    assert (first.ip, second.ip) == ("10.0.0.2", "10.0.0.3")  # .1 is the gateway
    assert first.mac != second.mac and first.mac.startswith("02:")
    before = await state(directory, "acme")
    refused = [
        (Conflict, spec("a", locator="192.0.2.9")),
        (Conflict, spec("c", locator="192.0.2.9", ip="10.0.0.2")),
        (Conflict, spec("c", locator="192.0.2.1")),
        (Conflict, spec("c", locator="192.0.2.9", mac=first.mac)),
        (Conflict, spec("c", locator="192.0.2.9", ip="10.0.1.5")),
        (Conflict, spec("c", locator="192.0.2.9", ip="10.0.0.1")),
        (Conflict, spec("c", locator="192.0.2.9", ip="10.0.0.255")),
        (NotFound, spec("c", network="nowhere", locator="192.0.2.9")),
    ]
    for error, bad in refused:
        with pytest.raises(error):
            await directory.create_node("acme", bad, S1)
    assert await state(directory, "acme") == before


async def test_a_batch_of_nodes_is_published_completely_or_not_at_all(
    directory: Directory,
) -> None:
    await tenant_with_networks(directory)
    batch = [spec(f"n{i}", locator=f"192.0.2.{i + 1}") for i in range(5)]
    batch.append(spec("n9", locator="192.0.2.1"))  # the same locator as n0
    with pytest.raises(Conflict):
        await directory.create_nodes("acme", batch, S1)
    assert await directory.list_nodes("acme") == []
    with pytest.raises(NotFound):
        await directory.locate("192.0.2.1")


async def test_concurrent_claims_of_one_address_or_locator_have_one_winner(
    directory: Directory,
) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    same_ip = [spec(f"n{i}", locator=f"192.0.2.{i + 1}", ip="10.0.0.7") for i in range(8)]
    results = await asyncio.gather(
        *(directory.create_node("acme", s, S1) for s in same_ip), return_exceptions=True
    )
    assert sum(isinstance(r, Node) for r in results) == 1
    assert all(isinstance(r, Node | Conflict) for r in results)
    same_locator = [
        directory.create_node(tenant, spec(f"m{tenant}", locator="198.51.100.1"), S2)
        for tenant in ("acme", "umbrella")
    ]
    results = await asyncio.gather(*same_locator, return_exceptions=True)
    assert sum(isinstance(r, Node) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 1


async def test_resolve_applies_policy_and_stays_inside_the_tenant(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    a1 = await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    a2 = await directory.create_node("acme", spec("a2", locator="192.0.2.2"), S1)
    b1 = await directory.create_node("acme", spec("b1", "back", locator="192.0.2.3"), S1)
    u1 = await directory.create_node("umbrella", spec("u1", locator="192.0.2.4", ip=a2.ip), S1)

    async def allowed(source: Node, ip: str) -> bool:
        by_id = await directory.resolve(ResolveQuery(ip=ip, source=source.id))
        by_address = await directory.resolve(
            ResolveQuery(ip=ip, tenant=source.tenant, network=source.network, source_ip=source.ip)
        )
        by_locator = await directory.resolve(
            ResolveQuery(locator=by_id.destination.locator, source=source.id)
        )
        assert by_id.destination == by_address.destination == by_locator.destination
        assert by_id.allowed == by_locator.allowed
        assert by_id.destination.tenant == source.tenant
        return by_id.allowed

    assert await allowed(a1, a2.ip)  # one network: allowed by default
    assert (await directory.resolve(ResolveQuery(ip=a2.ip, source=u1.id))).destination == u1
    assert not await allowed(a1, b1.ip)
    await directory.create_link("acme", LinkCreate(kind="network", ends={"back", "front"}))
    assert await allowed(a1, b1.ip) and await allowed(b1, a1.ip)
    await directory.delete_link("acme", "network:back:front")
    assert not await allowed(b1, a2.ip)
    await directory.create_link("acme", LinkCreate(kind="node", ends={"b1", "a2"}))
    assert await allowed(b1, a2.ip) and not await allowed(b1, a1.ip)

    with pytest.raises(NotFound):  # acme's source cannot see into another tenant
        await directory.resolve(ResolveQuery(ip=a1.ip, source=a1.id), tenant="umbrella")
    with pytest.raises(NotFound):
        await directory.resolve(
            ResolveQuery(ip=a1.ip, tenant="acme", network="back", source_ip=a1.ip)
        )
    with pytest.raises(NotFound):
        await directory.resolve(ResolveQuery(ip="10.0.0.99", source=a1.id))
    with pytest.raises(NotFound):  # another tenant's locator looks like a free one
        await directory.resolve(ResolveQuery(locator=u1.locator, source=a1.id))
    with pytest.raises(NotFound):
        await directory.resolve(ResolveQuery(locator="192.0.2.250", source=a1.id))
    with pytest.raises(ValueError, match="name the destination"):
        ResolveQuery(ip=a1.ip, locator=a1.locator, source=a1.id)
    location = await directory.locate(u1.locator)
    assert location.node == u1
    with pytest.raises(NotFound):
        await directory.locate(u1.locator, tenant="acme")


async def test_links_need_both_ends_and_go_with_them(directory: Directory) -> None:
    await tenant_with_networks(directory)
    await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    await directory.create_node("acme", spec("b1", "back", locator="192.0.2.2"), S1)
    with pytest.raises(NotFound):
        await directory.create_link("acme", LinkCreate(kind="node", ends={"a1", "ghost"}))
    with pytest.raises(ValueError, match="two different"):
        LinkCreate.model_validate({"kind": "node", "ends": ["a1", "a1"]})
    link = await directory.create_link("acme", LinkCreate(kind="node", ends={"b1", "a1"}))
    assert link.id == "node:a1:b1"
    with pytest.raises(Conflict):
        await directory.create_link("acme", LinkCreate(kind="node", ends={"a1", "b1"}))
    await directory.create_link("acme", LinkCreate(kind="network", ends={"front", "back"}))
    await directory.delete_node("acme", "a1")
    assert [link.id for link in await directory.list_links("acme")] == ["network:back:front"]
    await directory.delete_node("acme", "b1")
    await directory.delete_network("acme", "back")
    assert await directory.list_links("acme") == []


async def test_a_move_changes_the_locator_and_is_announced(directory: Directory) -> None:
    await tenant_with_networks(directory)
    node = await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    other = await directory.create_node("acme", spec("a2", locator="192.0.2.2"), S1)
    start = (await directory.changes(None)).revision
    with pytest.raises(Conflict):
        await directory.move_node("acme", "a1", NodeUpdate(locator=other.locator), S1)
    moved = await directory.move_node("acme", "a1", NodeUpdate(locator="198.51.100.7"), S2)
    assert (moved.id, moved.ip, moved.server) == (node.id, node.ip, "s2")
    with pytest.raises(NotFound):
        await directory.locate("192.0.2.1")
    assert (await directory.locate("198.51.100.7")).node == moved
    resolved = await directory.resolve(ResolveQuery(ip=node.ip, source=other.id))
    assert resolved.destination.locator == "198.51.100.7"
    page = await directory.changes(start)
    assert [(c.type, c.node, c.previous) for c in page.changes] == [
        (ChangeType.NODE_MOVED, moved, node)
    ]


async def test_changes_resume_filter_and_wake_a_waiting_reader(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    start = (await directory.changes(None)).revision
    await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    await directory.create_node("umbrella", spec("u1", locator="192.0.2.2"), S1)
    await directory.create_link("acme", LinkCreate(kind="network", ends={"front", "back"}))
    await directory.delete_node("acme", "a1")

    everything = await directory.changes(start)
    assert [c.type for c in everything.changes] == [
        ChangeType.NODE_CREATED,
        ChangeType.NODE_CREATED,
        ChangeType.LINK_CREATED,
        ChangeType.NODE_DELETED,
    ]
    paged, cursor = [], start
    while True:  # reading in small pages loses nothing and repeats nothing
        page = await directory.changes(cursor, limit=1)
        paged += page.changes
        cursor = page.revision
        if not page.more:
            break
    assert paged == everything.changes
    only_umbrella = await directory.changes(start, tenants=["umbrella"])
    assert [c.node.name for c in only_umbrella.changes] == ["u1"]

    waiting = asyncio.create_task(directory.changes(everything.revision, wait=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    began = time.monotonic()
    await directory.delete_link("acme", "network:back:front")
    page = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - began < 1
    assert [c.type for c in page.changes] == [ChangeType.LINK_REMOVED]

    quiet = await directory.changes(page.revision, wait=0.3)
    assert quiet.changes == [] and quiet.revision >= page.revision


async def test_pruned_changes_answer_gone(directory: Directory) -> None:
    await tenant_with_networks(directory)
    start = (await directory.changes(None)).revision
    for i in range(4):
        await directory.create_node("acme", spec(f"n{i}", locator=f"192.0.2.{i + 1}"), S1)
    await directory.prune(keep=2)
    with pytest.raises(Gone):
        await directory.changes(start)
    latest = await directory.changes(start + 2)
    assert [c.node.name for c in latest.changes] == ["n2", "n3"]


async def test_servers_publish_only_on_their_own_pools(directory: Directory) -> None:
    await tenant_with_networks(directory)
    before = await state(directory, "acme")
    for locator in ("198.51.100.9", "203.0.113.1", "192.0.3.1"):  # s2's pool, outside any
        with pytest.raises(Forbidden, match="not in the pools of server 's1'"):
            await directory.create_node("acme", spec("a", locator=locator), S1)
    with pytest.raises(Forbidden):  # a batch with one foreign locator publishes nothing
        await directory.create_nodes(
            "acme", [spec("a", locator="192.0.2.1"), spec("b", locator="198.51.100.2")], S1
        )
    node = await directory.create_node("acme", spec("a", locator="192.0.2.1"), S1)
    with pytest.raises(Forbidden):
        await directory.move_node("acme", "a", NodeUpdate(locator="198.51.100.3"), S1)
    assert await directory.list_nodes("acme") == [node]
    assert (await state(directory, "acme"))[0] == before[0]


async def test_pools_of_two_servers_never_overlap(directory: Directory) -> None:
    for pools in (["192.0.2.200-192.0.2.210"], ["192.0.0.0/16"], ["198.51.100.255/32"]):
        with pytest.raises(Conflict, match="overlaps"):
            await directory.enroll_server("s3", pools)
    with pytest.raises(Conflict, match="enrolled already"):
        await directory.enroll_server("s1", ["203.0.113.0/28"])
    with pytest.raises(InvalidRequest, match="overlap"):
        await directory.enroll_server("s3", ["203.0.113.0/28", "203.0.113.8-203.0.113.20"])
    assert [s.name for s in await directory.list_servers()] == ["s1", "s2"]
    s3 = await directory.enroll_server("s3", ["203.0.113.0/28"])
    assert (await directory.credentials(s3.token))[1] == await directory.get_server("s3")


async def test_a_server_sees_only_what_it_hosts(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    start = (await directory.changes(None)).revision
    a1 = await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    a2 = await directory.create_node("acme", spec("a2", locator="198.51.100.2"), S2)
    u1 = await directory.create_node("umbrella", spec("u1", locator="198.51.100.3"), S2)
    answer = await directory.resolve(ResolveQuery(ip=a2.ip, source=a1.id), server=S1)
    assert answer.destination == a2
    for query in (  # sources s1 does not host, whatever they ask about
        ResolveQuery(ip=a1.ip, source=a2.id),
        ResolveQuery(locator=a1.locator, source=u1.id),
        ResolveQuery(ip=a1.ip, tenant="acme", network="front", source_ip=a2.ip),
    ):
        with pytest.raises(NotFound):
            await directory.resolve(query, server=S1)
    with pytest.raises(NotFound):  # another tenant's locator is not found from s1's node
        await directory.resolve(ResolveQuery(locator=u1.locator, source=a1.id), server=S1)
    assert (await directory.locate(a1.locator, server=S1)).node == a1
    with pytest.raises(NotFound):
        await directory.locate(u1.locator, server=S1)
    seen = await directory.changes(start, hosted_by="s1")
    assert {c.tenant for c in seen.changes} == {"acme"}
    assert {c.node.name for c in (await directory.changes(start, hosted_by="s2")).changes} == {
        "a1",
        "a2",
        "u1",
    }
    assert (await directory.changes(start, hosted_by="nobody")).changes == []


async def test_a_server_withdraws_only_its_own_records(directory: Directory) -> None:
    await tenant_with_networks(directory)
    await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    await directory.create_node("acme", spec("a2", locator="198.51.100.2"), S2)
    for tenant, name in (("acme", "a2"), ("acme", "ghost"), ("nobody", "a1")):
        with pytest.raises(NotFound, match="server 's1' hosts no node"):
            await directory.delete_node(tenant, name, server=S1)
    with pytest.raises(NotFound, match="no longer holds"):
        await directory.delete_node("acme", "a1", server=S1, locator="192.0.2.9")
    await directory.delete_node("acme", "a1", server=S1, locator="192.0.2.1")
    assert [n.name for n in await directory.list_nodes("acme")] == ["a2"]


async def test_revoking_a_server_withdraws_its_nodes_and_its_credential(
    directory: Directory,
) -> None:
    await tenant_with_networks(directory)
    s3 = await directory.enroll_server("s3", ["203.0.113.0/28"])
    server = await directory.get_server("s3")
    await directory.create_node("acme", spec("a1", locator="203.0.113.1"), server)
    await directory.create_node("acme", spec("a2", locator="192.0.2.2"), S1)
    start = (await directory.changes(None)).revision
    withdrawn = await directory.revoke_server("s3")
    assert [n.name for n in withdrawn] == ["a1"]
    assert [n.name for n in await directory.list_nodes("acme")] == ["a2"]
    assert [c.type for c in (await directory.changes(start)).changes] == [ChangeType.NODE_DELETED]
    assert await directory.credentials(s3.token) == (None, None, None)
    with pytest.raises(Forbidden, match="not enrolled"):  # a request that raced the revocation
        await directory.create_node("acme", spec("a3", locator="203.0.113.2"), server)
    with pytest.raises(NotFound):
        await directory.revoke_server("s3")
    await directory.enroll_server("s4", ["203.0.113.0/28"])  # the pool is free again


async def test_resolve_by_name_stays_inside_the_tenant(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    a1 = await directory.create_node("acme", spec("a1", locator="192.0.2.1"), S1)
    a2 = await directory.create_node("acme", spec("a2", locator="198.51.100.2"), S2)
    u1 = await directory.create_node("umbrella", spec("u1", locator="192.0.2.4"), S1)

    by_name = await directory.resolve(ResolveQuery(name="a2", source=a1.id))
    assert by_name.destination == a2 and by_name.allowed
    by_address = await directory.resolve(
        ResolveQuery(name="a2", tenant="acme", network=a1.network, source_ip=a1.ip)
    )
    assert by_address.destination == a2
    for source, name in ((a1, "u1"), (u1, "a2"), (a1, "nobody")):
        with pytest.raises(NotFound):  # another tenant's name is like no name at all
            await directory.resolve(ResolveQuery(name=name, source=source.id))
    with pytest.raises(NotFound):  # a server resolves only for the nodes it hosts
        await directory.resolve(ResolveQuery(name="a1", source=a2.id), server=S1)
    with pytest.raises(ValueError, match="name the destination"):
        ResolveQuery(ip=a2.ip, name="a2", source=a1.id)
