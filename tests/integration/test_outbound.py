"""Outbound access (SNAT) on the lab: the example lab, whose cloud "internet" beyond router r1
holds the outside host, serving a page naming the address each client came from.

Tenants red and blue use the same 10.0.0.0/24 on the same servers; red's network has outbound
access, blue's has not (until a test turns it on).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nvi.lab.outside import fetch_in
from tests.integration.test_dataplane import (
    Lab,
    capture,
    read_capture,
    running_lab,
    stop_capture,
)

pytestmark = pytest.mark.root

OUTSIDE = "192.0.2.80"
PAGE = f"http://{OUTSIDE}/"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory) as net:
        assert net.lab.outside is not None and net.lab.outside.address == OUTSIDE
        lab = Lab(net)

        async def tenants(client) -> None:  # noqa: ANN001
            for tenant in ("red", "blue"):
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24", outbound=tenant == "red")

        lab.net.call_directory(tenants)
        for tenant in ("red", "blue"):
            lab.add("s1", tenant, "net", f"{tenant}11", "10.0.0.11")
            lab.add("s3", tenant, "net", f"{tenant}13", "10.0.0.13")
        yield lab


def fetch(lab: Lab, node: str, url: str = PAGE, timeout: float = 2) -> str | None:
    """The page's text as the node fetched it, or None if the fetch failed."""
    return fetch_in(lab.nodes[node].netns, url, timeout)


def within(seconds: float, check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def set_outbound(lab: Lab, tenant: str, on: bool) -> None:
    async def update(client) -> None:  # noqa: ANN001
        await client.update_network(tenant, "net", outbound=on)

    lab.net.call_directory(update)


def test_outbound_works_with_snat_on_and_the_outside_sees_only_the_servers_address(
    lab: Lab,
) -> None:
    assert fetch(lab, "red11") == "you are 198.51.100.11"  # s1's own underlay address
    assert fetch(lab, "red13") == "you are 203.0.113.13"  # s3's, in the other cloud
    assert fetch(lab, "blue11") is None  # the same address, outbound off: no way out
    assert fetch(lab, "blue13") is None
    log = (lab.net.rundir / "outside" / "outside.log").read_text()
    clients = {line.split()[0] for line in log.splitlines() if "GET" in line}
    assert clients == {"198.51.100.11", "203.0.113.13"}


def test_turning_outbound_on_and_off_reaches_the_servers_within_seconds(lab: Lab) -> None:
    set_outbound(lab, "blue", True)
    try:
        assert within(3, lambda: fetch(lab, "blue11", timeout=1) == "you are 198.51.100.11")
        assert fetch(lab, "red11") == "you are 198.51.100.11"  # both tenants, one address
    finally:
        set_outbound(lab, "blue", False)
    assert within(2, lambda: fetch(lab, "blue11", timeout=1) is None)
    assert fetch(lab, "red11") == "you are 198.51.100.11"


def test_outbound_never_reaches_infrastructure(lab: Lab) -> None:
    """With outbound on, the server itself, the directory, the routers (on every cloud, the
    outside's side included) and the other servers (the underlay's ranges: s1 knows none of
    them) stay out of reach of tenant packets."""
    directory = lab.net.lab.directory
    assert directory is not None
    assert fetch(lab, "red11", f"https://{directory.address}:{directory.port}/v1/health") is None
    for address in ("198.51.100.11", directory.address, "198.51.100.1", "192.0.2.1"):
        assert not lab.pings("red11", address), address
    for other_server in ("198.51.100.12", "203.0.113.13"):
        assert not lab.pings("red11", other_server), other_server
        assert fetch(lab, "red11", f"https://{other_server}:7490/v1/status") is None
    assert lab.pings("red11", OUTSIDE)  # while the outside answers
    # the base flows dropped them before any controller; the only NATed flows go outside
    nated = [
        line for line in lab.ofctl("s1", "dump-flows", "table=1").splitlines() if "ct(" in line
    ]
    assert nated and all(f"nw_dst={OUTSIDE}" in line for line in nated), nated


def test_the_underlay_carries_no_tenant_address_and_no_encapsulation(
    lab: Lab, tmp_path: Path
) -> None:
    clouds = ("east", "west", "internet")
    captures = {c: capture(lab.net.netns(c), "any", tmp_path / f"{c}.pcap") for c in clouds}
    try:
        assert fetch(lab, "red11") == "you are 198.51.100.11"
        assert fetch(lab, "red13") == "you are 203.0.113.13"
        assert lab.pings("red11", OUTSIDE)
        time.sleep(0.5)
    finally:
        for process in captures.values():
            stop_capture(process)
    lines = [line for c in clouds for line in read_capture(tmp_path / f"{c}.pcap")]
    towards_outside = [line for line in lines if OUTSIDE in line]
    assert len(towards_outside) >= 8, "the outbound traffic was not captured"
    assert [line for line in lines if "10.0.0." in line] == []
    locators = {n.locator for n in lab.nodes.values()}
    assert [line for line in towards_outside if any(loc in line for loc in locators)] == []
    assert [line for line in lines if "802.1Q" in line or "vlan" in line.lower()] == []
    assert [line for line in lines if ".4789:" in line or ".6081:" in line or "GRE" in line] == []


def test_the_outside_host_is_repaired_idempotently_and_shown_by_status(lab: Lab) -> None:
    assert lab.net.up() == []  # everything there: nothing to do
    members = {m["member"]: m for m in lab.net.status()["network"]}
    assert members["outside"]["kind"].startswith(f"outside host {PAGE} pid ")
    assert members["outside"]["namespace"] == lab.net.netns("outside")
    assert members["internet"]["namespace"] == lab.net.netns("internet")


def test_the_outside_reaches_no_node(lab: Lab) -> None:
    """Outbound access opens nothing inwards: from the outside host, red11's locator and the
    NATed flow's server address do not lead to red11 (which answers pings from its tenant)."""
    assert fetch(lab, "red11") == "you are 198.51.100.11"  # a NATed flow exists right now
    outside = lab.net.netns("outside")
    red11 = lab.nodes["red11"]
    for address in (red11.locator, "10.0.0.11"):
        argv = ["ip", "netns", "exec", outside, "ping", "-c", "1", "-W", "1", address]
        assert subprocess.run(argv, capture_output=True).returncode != 0, address
    assert lab.pings("red13", "10.0.0.11")  # while its own tenant reaches it
