"""A tenant with a valid token, on the lab, trying every way it is allowed to make calls to
reach the underlay: it must never get a packet answered by the directory, a server, a router
or an address of any server's pool (free or not), and never get a record placed there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from federation.client import DirectoryClient
from federation.errors import DirectoryError, Forbidden
from nvi.lab import links
from tests.integration.test_dataplane import Lab, running_lab

pytestmark = pytest.mark.root

DIRECTORY = "198.51.100.2"
UNDERLAY = {
    "the directory": DIRECTORY,
    "server s1": "198.51.100.11",
    "server s2": "198.51.100.12",
    "server s3": "203.0.113.13",
    "router r1 (east)": "198.51.100.1",
    "router r1 (west)": "203.0.113.1",
    "a free locator of s1 (its own server)": "198.51.100.90",
    "a free locator of s2": "198.51.100.120",
    "a free locator of s3": "203.0.113.90",
    "an unused underlay address": "198.51.100.200",
}


class TenantLab(Lab):
    token: str = ""  # the tenant's own token: all it holds


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TenantLab]:
    """Tenant evil: a network like anyone's, and networks laid over both clouds' underlay
    subnets (a tenant chooses its own addresses), linked together, with nodes on s1, s2, s3."""
    with running_lab(tmp_path_factory) as net:
        lab = TenantLab(net)

        async def tenant(client: DirectoryClient) -> str:
            await client.create_tenant("evil")
            await client.create_network("evil", "net", "10.0.0.0/24")
            await client.create_network("evil", "east", "198.51.100.0/24")
            await client.create_network("evil", "west", "203.0.113.0/24")
            for a, b in (("net", "east"), ("net", "west"), ("east", "west")):
                await client.create_link("evil", "network", a, b)
            return (await client.create_token("evil", "the tenant's own")).token

        lab.token = net.call_directory(tenant)
        lab.add("s1", "evil", "net", "a", "10.0.0.11")
        lab.add("s3", "evil", "net", "b", "10.0.0.13")
        lab.add("s2", "evil", "east", "u", "198.51.100.50")  # a tenant address in the underlay
        yield lab


def test_the_tenant_reaches_its_own_nodes(lab: TenantLab) -> None:
    """The probes below can succeed: the same nodes reach each other across clouds, also at a
    tenant address that lies in the underlay's range."""
    assert lab.pings("a", "10.0.0.13")
    assert lab.pings("a", "198.51.100.50")
    assert lab.pings("u", "10.0.0.11")


def test_no_call_the_tenant_may_make_places_a_record_on_the_underlay(lab: TenantLab) -> None:
    before = lab.net.call_directory(lambda admin: admin.list_nodes("evil"))

    async def attempts(client: DirectoryClient) -> list[str]:
        accepted = []
        for what, address in UNDERLAY.items():
            for attempt in (
                client.create_node("evil", "x", kind="vm", network="net", locator=address),
                client.move_node("evil", "b", locator=address),
            ):
                try:
                    await attempt
                    accepted.append(what)
                except Forbidden:
                    pass
        return accepted

    assert lab.net.call_directory(attempts, token=lab.token) == []
    # Its token passed as if it acted through a server changes nothing either.
    with pytest.raises(DirectoryError):
        lab.net.call_directory(
            lambda c: c.create_node("evil", "x", kind="vm", network="net", locator=DIRECTORY),
            token=lab.token,
            tenant_token=lab.token,
        )
    assert lab.net.call_directory(lambda admin: admin.list_nodes("evil")) == before


@pytest.mark.parametrize("node", ["a", "u"])
def test_no_tenant_packet_is_answered_from_the_underlay(lab: TenantLab, node: str) -> None:
    answered = [what for what, address in UNDERLAY.items() if lab.pings(node, address)]
    assert answered == []
    netns = lab.nodes[node].netns
    assert not links.accepts_tcp(netns, DIRECTORY, 7480), "the directory's API answered"
    stats = lab.net.controller_stats(lab.net.lab.server(lab.nodes[node].server)) or {}
    assert stats.get("errors_packet_in", 0) == 0, stats
