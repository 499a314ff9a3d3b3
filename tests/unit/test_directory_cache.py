"""The controller-side cache: which changes make which cached answers stale."""

from __future__ import annotations

from federation.client import LookupCache
from federation.models import Change, ChangeType, Location, Resolution
from nvi.core.model import Link, LinkKind, Node


def node(name: str, tenant: str = "acme", network: str = "front", locator: str = "") -> Node:
    number = sum(map(ord, name)) % 200 + 2
    return Node(
        id=f"{number:032x}",
        tenant=tenant,
        name=name,
        kind="vm",
        network=network,
        ip=f"10.0.0.{number}",
        mac=f"02:00:00:00:00:{number:02x}",
        locator=locator or f"192.0.2.{number}",
        server="s1",
    )


def resolution(source: Node, destination: Node, revision: int = 10) -> Resolution:
    return Resolution(source=source, destination=destination, allowed=True, revision=revision)


def change(kind: ChangeType, revision: int, **records) -> Change:  # noqa: ANN003
    return Change(type=kind, revision=revision, tenant="acme", **records)


def filled() -> tuple[LookupCache, Node, Node, Node]:
    cache = LookupCache()
    cache.revision = 10
    a, b, c = node("a"), node("b"), node("c", network="back")
    cache.store(("r", "ab"), resolution(a, b))
    cache.store(("r", "ac"), resolution(a, c))
    cache.store(("l", c.locator), Location(node=c, revision=10))
    cache.store(("r", "other"), resolution(node("u", "umbrella"), node("v", "umbrella")))
    return cache, a, b, c


def test_a_moved_or_deleted_node_evicts_every_answer_naming_it() -> None:
    cache, a, b, c = filled()
    cache.apply(change(ChangeType.NODE_MOVED, 11, node=c, previous=c))
    assert cache.get(("r", "ac")) is None and cache.get(("l", c.locator)) is None
    assert cache.get(("r", "ab")) is not None
    cache.apply(change(ChangeType.NODE_DELETED, 12, node=b))
    assert cache.get(("r", "ab")) is None
    assert len(cache) == 1 and cache.revision == 12


def test_a_link_change_evicts_the_tenants_resolutions_only() -> None:
    cache, *_ = filled()
    link = Link(tenant="acme", id="network:back:front", kind=LinkKind.NETWORK, a="back", b="front")
    cache.apply(change(ChangeType.LINK_REMOVED, 11, link=link))
    assert cache.get(("r", "ab")) is None and cache.get(("r", "ac")) is None
    assert cache.get(("r", "other")) is not None


def test_a_new_node_evicts_nothing() -> None:
    cache, *_ = filled()
    cache.apply(change(ChangeType.NODE_CREATED, 11, node=node("d")))
    assert len(cache) == 4


def test_an_answer_older_than_an_applied_change_is_not_kept() -> None:
    cache, a, b, _ = filled()
    cache.apply(change(ChangeType.NODE_CREATED, 20, node=node("d")))
    cache.store(("r", "late"), resolution(a, b, revision=19))
    assert cache.get(("r", "late")) is None
    cache.store(("r", "fresh"), resolution(a, b, revision=20))
    assert cache.get(("r", "fresh")) is not None
