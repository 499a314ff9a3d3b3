"""The change feed's hosting index, followed from node change records (pure)."""

from __future__ import annotations

from federation.feed import Hosting


def node_change(kind: str, tenant: str, server: str, previous: str | None = None) -> dict:
    change = {"type": kind, "tenant": tenant, "node": {"server": server}}
    return change | ({"previous": {"server": previous}} if previous else {})


def test_a_server_hosts_a_tenant_while_it_has_one_of_its_nodes() -> None:
    hosting = Hosting([("s1", "acme")])
    hosting.apply(node_change("node.created", "acme", "s1"))
    hosting.apply(node_change("node.created", "umbrella", "s2"))
    hosting.apply(node_change("node.deleted", "acme", "s1"))
    assert hosting.tenants("s1") == {"acme"}  # one of its two acme nodes is left
    assert hosting.servers("acme") == {"s1"}
    hosting.apply(node_change("node.moved", "acme", "s2", previous="s1"))
    assert hosting.tenants("s1") == set()
    assert hosting.tenants("s2") == {"acme", "umbrella"}
    assert hosting.servers("acme") == {"s2"}
    hosting.apply({"type": "link.created", "tenant": "acme", "link": {}})
    hosting.apply(node_change("node.deleted", "umbrella", "s2"))
    assert hosting.tenants("s2") == {"acme"} and hosting.servers("umbrella") == set()
