"""The change feed on both backends: a change wakes only the followers interested in its
tenant, every follower gets exactly its tenants' changes in order whatever the interleaving,
and with etcd a change made through one directory process reaches followers of another."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime

from federation.config import StorageConfig
from federation.directory import Directory
from federation.models import Change, LinkCreate, NetworkCreate, NodeCreate
from federation.service import open_store
from nvi.core.model import Server
from nvi.lab.directories import EtcdCluster

pytest_plugins = ["integration.directory_fixtures"]

NOW = datetime.now(UTC)
TENANTS = [f"t{i}" for i in range(5)]


def host(i: int) -> Server:
    """Server h<i> hosts only tenant t<i>'s nodes, on locators 203.0.113.<16i>/28."""
    return Server(name=f"h{i}", pools=[f"203.0.113.{16 * i}/28"], created=NOW)


async def tenants_with_hosts(directory: Directory) -> None:
    for i, tenant in enumerate(TENANTS):
        await directory.create_tenant(tenant)
        await directory.create_network(tenant, NetworkCreate(name="a", cidr="10.0.0.0/24"))
        await directory.create_network(tenant, NetworkCreate(name="b", cidr="10.0.1.0/24"))
        await directory.enroll_server(host(i).name, host(i).pools)
        await create(directory, i, "first", 1)


async def create(directory: Directory, i: int, name: str, slot: int) -> None:
    locator = f"203.0.113.{16 * i + slot}"
    spec = NodeCreate(name=name, kind="container", network="a", locator=locator)
    await directory.create_node(TENANTS[i], spec, host(i))


async def test_a_change_wakes_only_the_followers_of_its_tenant(directory: Directory) -> None:
    await tenants_with_hosts(directory)
    start = (await directory.changes(None)).revision
    by_server = asyncio.create_task(directory.changes(start, wait=10, hosted_by="h0"))
    by_tenant = asyncio.create_task(directory.changes(start, wait=10, tenants=["t0"]))
    other = asyncio.create_task(directory.changes(start, wait=10, tenants=["t1"]))
    await asyncio.sleep(0.2)
    woken = directory.feed.woken
    for slot in range(2, 6):  # four changes of t1: only its follower wakes, once
        await create(directory, 1, f"n{slot}", slot)
    page = await asyncio.wait_for(other, 5)
    names = [c.node.name for c in page.changes if c.node]
    assert names and names == ["n2", "n3", "n4", "n5"][: len(names)]
    await asyncio.sleep(0.3)
    assert directory.feed.woken == woken + 1
    assert not by_server.done() and not by_tenant.done()
    await directory.create_link("t0", LinkCreate(kind="network", ends={"a", "b"}))
    pages = await asyncio.wait_for(asyncio.gather(by_server, by_tenant), 5)
    assert directory.feed.woken == woken + 3
    for page in pages:
        assert [(c.tenant, c.type) for c in page.changes] == [("t0", "link.created")]


async def test_a_server_is_woken_for_a_tenant_it_starts_to_host(directory: Directory) -> None:
    await tenants_with_hosts(directory)
    await directory.enroll_server("newcomer", ["192.0.2.128/28"])
    newcomer = await directory.get_server("newcomer")
    start = (await directory.changes(None)).revision
    waiting = asyncio.create_task(directory.changes(start, wait=10, hosted_by="newcomer"))
    await asyncio.sleep(0.2)
    spec = NodeCreate(name="moved-in", kind="vm", network="a", locator="192.0.2.129")
    await directory.create_node("t3", spec, newcomer)
    page = await asyncio.wait_for(waiting, 5)
    assert [c.node.name for c in page.changes if c.node] == ["moved-in"]


async def follow(directory: Directory, since: int, stop: asyncio.Event, **interest) -> list[Change]:  # noqa: ANN003
    """A follower that reads in small pages (so it pages with `more`) until told to stop."""
    seen: list[Change] = []
    while True:
        page = await directory.changes(since, limit=3, wait=0.2, **interest)
        seen += page.changes
        since = page.revision
        if stop.is_set() and not page.more and not page.changes:
            return seen


async def test_every_follower_gets_exactly_its_tenants_changes_in_order(
    directory: Directory,
) -> None:
    await tenants_with_hosts(directory)
    directory.feed.keep = 4  # a follower that falls behind is answered from the store
    start = (await directory.changes(None)).revision
    stop = asyncio.Event()
    interests = [
        {"tenants": [TENANTS[k % 5]]} if k % 3 else {"hosted_by": f"h{k % 5}"} for k in range(30)
    ] + [{"tenants": ["t1", "t2"]}, {}]
    followers = [asyncio.create_task(follow(directory, start, stop, **i)) for i in interests]
    rng = random.Random(7)

    async def churn(i: int) -> None:
        for round_ in range(6):
            await asyncio.sleep(rng.uniform(0, 0.05))
            await create(directory, i, f"n{round_}", 2 + round_ % 3)
            await directory.delete_node(TENANTS[i], f"n{round_}")

    await asyncio.gather(*(churn(i) for i in range(5)))
    page = await directory.changes(start, limit=1000)
    everything = page.changes
    assert len(everything) == 60
    while directory.feed.head < page.revision:  # the followers' last wait sees them all
        await asyncio.sleep(0.01)
    stop.set()
    seen = await asyncio.wait_for(asyncio.gather(*followers), 30)
    for interest, changes in zip(interests, seen, strict=True):
        wanted = set(interest.get("tenants") or [])
        if "hosted_by" in interest:
            wanted = {TENANTS[int(interest["hosted_by"][1:])]}
        expected = [c for c in everything if not wanted or c.tenant in wanted]
        assert changes == expected, interest


async def test_a_change_through_one_directory_reaches_a_follower_of_another(
    etcd_cluster: EtcdCluster,
) -> None:
    storage = StorageConfig(
        backend="etcd", endpoints=etcd_cluster.endpoints, prefix=f"/test/{uuid.uuid4().hex}/"
    )
    stores = [open_store(storage), open_store(storage)]
    for store in stores:
        await store.open()
    writer, reader = Directory(stores[0]), Directory(stores[1])
    await reader.start()
    try:
        await tenants_with_hosts(writer)
        start = (await reader.changes(None)).revision
        waiting = asyncio.create_task(reader.changes(start, wait=10, hosted_by="h2"))
        await asyncio.sleep(0.3)
        await create(writer, 2, "elsewhere", 5)
        page = await asyncio.wait_for(waiting, 5)
        assert [c.node.name for c in page.changes if c.node] == ["elsewhere"]
        assert reader.feed.hosting.tenants("h2") == {"t2"}
    finally:
        await reader.stop()
        for store in stores:
            await store.close()
