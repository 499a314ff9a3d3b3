"""The directory's rules, run against both backends (a real sqlite file, a real etcd cluster)."""

from __future__ import annotations

import asyncio
import time

import pytest

from federation.directory import Directory
from federation.errors import Conflict, Gone, InvalidRequest, NotFound
from federation.models import (
    ChangeType,
    LinkCreate,
    NetworkCreate,
    NodeCreate,
    NodeUpdate,
    ResolveQuery,
)
from nvi.model import Node

pytest_plugins = ["integration.directory_fixtures"]


def spec(name: str, network: str = "front", locator: str | None = None, **fields) -> NodeCreate:  # noqa: ANN003
    locator = locator or f"192.0.2.{abs(hash(name)) % 250 + 1}"
    return NodeCreate(name=name, kind="vm", network=network, locator=locator, server="s1", **fields)


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
    assert await directory.tenant_of(token.token) is None
    with pytest.raises(NotFound):
        await directory.get_tenant("acme")


async def test_tokens_are_stored_hashed_and_revocable(directory: Directory) -> None:
    await directory.create_tenant("acme")
    token = await directory.create_token("acme", "agent")
    assert await directory.tenant_of(token.token) == "acme"
    assert await directory.tenant_of(token.token + "x") is None
    for prefix in ("tok/", "tt/"):
        stored = (await directory.store.scan(prefix)).entries.values()
        assert stored and not any(
            token.token in e.key or token.token.encode() in e.value for e in stored
        )
    assert [t.id for t in await directory.list_tokens("acme")] == [token.id]
    await directory.delete_token("acme", token.id)
    assert await directory.tenant_of(token.token) is None


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
    first = await directory.create_node("acme", spec("a", locator="192.0.2.1"))
    second = await directory.create_node("acme", spec("b", locator="192.0.2.2"))
    assert (first.ip, second.ip) == ("10.0.0.2", "10.0.0.3")  # .1 is the gateway
    assert first.mac != second.mac and first.mac.startswith("02:")
    before = await state(directory, "acme")
    refused = [
        (Conflict, spec("a", locator="192.0.2.9")),
        (Conflict, spec("c", locator="192.0.2.9", ip="10.0.0.2")),
        (Conflict, spec("c", locator="192.0.2.1")),
        (Conflict, spec("c", locator="192.0.2.9", mac=first.mac)),
        (InvalidRequest, spec("c", locator="192.0.2.9", ip="10.0.1.5")),
        (InvalidRequest, spec("c", locator="192.0.2.9", ip="10.0.0.1")),
        (InvalidRequest, spec("c", locator="192.0.2.9", ip="10.0.0.255")),
        (InvalidRequest, spec("c", network="nowhere", locator="192.0.2.9")),
    ]
    for error, bad in refused:
        with pytest.raises(error):
            await directory.create_node("acme", bad)
    assert await state(directory, "acme") == before


async def test_a_batch_of_nodes_is_published_completely_or_not_at_all(
    directory: Directory,
) -> None:
    await tenant_with_networks(directory)
    batch = [spec(f"n{i}", locator=f"192.0.2.{i + 1}") for i in range(5)]
    batch.append(spec("n9", locator="192.0.2.1"))  # the same locator as n0
    with pytest.raises(Conflict):
        await directory.create_nodes("acme", batch)
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
        *(directory.create_node("acme", s) for s in same_ip), return_exceptions=True
    )
    assert sum(isinstance(r, Node) for r in results) == 1
    assert all(isinstance(r, Node | Conflict) for r in results)
    same_locator = [
        directory.create_node(tenant, spec(f"m{tenant}", locator="198.51.100.1"))
        for tenant in ("acme", "umbrella")
    ]
    results = await asyncio.gather(*same_locator, return_exceptions=True)
    assert sum(isinstance(r, Node) for r in results) == 1
    assert sum(isinstance(r, Conflict) for r in results) == 1


async def test_resolve_applies_policy_and_stays_inside_the_tenant(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    a1 = await directory.create_node("acme", spec("a1", locator="192.0.2.1"))
    a2 = await directory.create_node("acme", spec("a2", locator="192.0.2.2"))
    b1 = await directory.create_node("acme", spec("b1", "back", locator="192.0.2.3"))
    u1 = await directory.create_node("umbrella", spec("u1", locator="192.0.2.4", ip=a2.ip))

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
    await directory.create_link("acme", LinkCreate(kind="network", a="back", b="front"))
    assert await allowed(a1, b1.ip) and await allowed(b1, a1.ip)
    await directory.delete_link("acme", "network:back:front")
    assert not await allowed(b1, a2.ip)
    await directory.create_link("acme", LinkCreate(kind="node", a="b1", b="a2"))
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
    await directory.create_node("acme", spec("a1", locator="192.0.2.1"))
    await directory.create_node("acme", spec("b1", "back", locator="192.0.2.2"))
    with pytest.raises(InvalidRequest):
        await directory.create_link("acme", LinkCreate(kind="node", a="a1", b="ghost"))
    link = await directory.create_link("acme", LinkCreate(kind="node", a="b1", b="a1"))
    assert link.id == "node:a1:b1"
    with pytest.raises(Conflict):
        await directory.create_link("acme", LinkCreate(kind="node", a="a1", b="b1"))
    await directory.create_link("acme", LinkCreate(kind="network", a="front", b="back"))
    await directory.delete_node("acme", "a1")
    assert [link.id for link in await directory.list_links("acme")] == ["network:back:front"]
    await directory.delete_node("acme", "b1")
    await directory.delete_network("acme", "back")
    assert await directory.list_links("acme") == []


async def test_a_move_changes_the_locator_and_is_announced(directory: Directory) -> None:
    await tenant_with_networks(directory)
    node = await directory.create_node("acme", spec("a1", locator="192.0.2.1"))
    other = await directory.create_node("acme", spec("a2", locator="192.0.2.2"))
    start = (await directory.changes(None)).revision
    with pytest.raises(Conflict):
        await directory.move_node("acme", "a1", NodeUpdate(locator=other.locator))
    moved = await directory.move_node("acme", "a1", NodeUpdate(locator="192.0.2.7", server="s2"))
    assert (moved.id, moved.ip, moved.server) == (node.id, node.ip, "s2")
    with pytest.raises(NotFound):
        await directory.locate("192.0.2.1")
    assert (await directory.locate("192.0.2.7")).node == moved
    resolved = await directory.resolve(ResolveQuery(ip=node.ip, source=other.id))
    assert resolved.destination.locator == "192.0.2.7"
    page = await directory.changes(start)
    assert [(c.type, c.node, c.previous) for c in page.changes] == [
        (ChangeType.NODE_MOVED, moved, node)
    ]


async def test_changes_resume_filter_and_wake_a_waiting_reader(directory: Directory) -> None:
    await tenant_with_networks(directory, "acme")
    await tenant_with_networks(directory, "umbrella")
    start = (await directory.changes(None)).revision
    await directory.create_node("acme", spec("a1", locator="192.0.2.1"))
    await directory.create_node("umbrella", spec("u1", locator="192.0.2.2"))
    await directory.create_link("acme", LinkCreate(kind="network", a="front", b="back"))
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
        await directory.create_node("acme", spec(f"n{i}", locator=f"192.0.2.{i + 1}"))
    await directory.store.prune(keep=2)
    with pytest.raises(Gone):
        await directory.changes(start)
    latest = await directory.changes(start + 2)
    assert [c.node.name for c in latest.changes] == ["n2", "n3"]
