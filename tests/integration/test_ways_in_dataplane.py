"""Ways in on the lab: a node's floating address and its published ports, as the host agent
writes them (the port's `nvi-floating` / `nvi-publish` external_ids), honoured by the server's
switch. The example lab, whose cloud "internet" beyond router r1 holds the outside host.

Tenants red and blue use the same 10.0.0.0/24 on server s1, both with outbound access off:
whatever reaches a node through a way in, or leaves it, does so without the server's source
NAT. Each node runs a small web server that names itself and the client address it sees.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nvi.core import ports
from nvi.lab.outside import fetch_in
from tests.integration.test_dataplane import (
    Lab,
    capture,
    read_capture,
    running_lab,
    stop_capture,
)
from tests.integration.test_outbound import OUTSIDE, fetch, set_outbound, within

pytestmark = pytest.mark.root

S1 = "198.51.100.11"
# In s1's cloud subnet, outside every locator pool and every other address of the lab
FLOATING, OTHER_FLOATING, FRESH_FLOATING = "198.51.100.200", "198.51.100.201", "198.51.100.202"
UP = 5  # seconds for a new way in to work (the controller follows OVSDB at once; the router may
# still be resolving the floating address after a test detached it)
SERVE = """
import http.server, sys
name = sys.argv[1]
class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{name} sees {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Page).serve_forever()
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory) as net:  # the example lab has the outside host
        assert net.lab.outside is not None and net.lab.outside.address == OUTSIDE
        lab = Lab(net)

        async def tenants(client) -> None:  # noqa: ANN001
            for tenant in ("red", "blue"):
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24", outbound=False)

        lab.net.call_directory(tenants)
        servers = []
        try:
            for tenant in ("red", "blue"):
                node = lab.add("s1", tenant, "net", f"{tenant}11", "10.0.0.11")
                argv = ["ip", "netns", "exec", node.netns, "python3", "-c", SERVE, node.name]
                servers.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))
            assert within(5, lambda: all(serving(lab, n) for n in ("red11", "blue11")))
            yield lab
        finally:
            for process in servers:
                process.terminate()
                process.wait(5)


def serving(lab: Lab, node: str) -> bool:
    code = "import socket; socket.create_connection(('127.0.0.1', 80), timeout=1)"
    return lab.run(node, ["python3", "-c", code]).returncode == 0


@pytest.fixture
def ways_in(lab: Lab) -> Iterator[Callable]:
    """Give a node's port ways in by writing its external_ids, as the host agent does; every
    key written is removed afterwards."""
    written: list[tuple[str, str]] = []

    def write(node: str, key: str, value: str) -> None:
        vsctl(lab, "set", "Interface", lab.nodes[node].port, f"external_ids:{key}={value}")
        written.append((node, key))

    yield write
    for node, key in written:
        remove_key(lab, node, key)


def vsctl(lab: Lab, *args: str) -> str:
    return lab.net.ovs(lab.net.lab.server("s1")).vsctl(*args)


def remove_key(lab: Lab, node: str, key: str) -> None:
    vsctl(lab, "remove", "Interface", lab.nodes[node].port, "external_ids", key)


def from_outside(lab: Lab, url: str, timeout: float = 2) -> str | None:
    return fetch_in(lab.net.netns("outside"), url, timeout)


def outside_pings(lab: Lab, address: str) -> bool:
    argv = ["ip", "netns", "exec", lab.net.netns("outside"), "ping", "-c", "1", "-W", "1"]
    return subprocess.run([*argv, address], capture_output=True).returncode == 0


def test_a_floating_address_reaches_its_node_both_ways_with_outbound_off(
    lab: Lab, ways_in: Callable
) -> None:
    assert fetch(lab, "red11") is None, "red's network has outbound access off"
    ways_in("red11", ports.FLOATING, FLOATING)
    assert within(UP, lambda: from_outside(lab, f"http://{FLOATING}/", timeout=2) is not None)
    # the node sees the outside's real address; the other tenant's 10.0.0.11 is not reached
    assert from_outside(lab, f"http://{FLOATING}/") == f"red11 sees {OUTSIDE}"
    assert outside_pings(lab, FLOATING)
    # its own connections leave from its floating address, 1:1
    assert fetch(lab, "red11") == f"you are {FLOATING}"
    assert lab.pings("red11", OUTSIDE)
    assert fetch(lab, "blue11") is None, "the same address in blue: no way out"
    # nothing else of the server's cloud leads to it
    assert from_outside(lab, f"http://{OTHER_FLOATING}/", timeout=1) is None


def test_a_published_port_reaches_its_node_and_lets_only_replies_out(
    lab: Lab, ways_in: Callable
) -> None:
    ways_in("blue11", ports.PUBLISH, "8080:80/tcp")
    page = f"http://{S1}:8080/"
    assert within(UP, lambda: from_outside(lab, page, timeout=2) is not None)
    assert from_outside(lab, page) == f"blue11 sees {OUTSIDE}"
    assert from_outside(lab, f"http://{S1}:8081/", timeout=1) is None  # not published
    # the node answers, but cannot open a connection of its own to the outside
    assert fetch(lab, "blue11") is None
    assert not lab.pings("blue11", OUTSIDE)
    assert from_outside(lab, page) == f"blue11 sees {OUTSIDE}", "still answering after it"


def test_with_outbound_on_the_source_nat_flow_carries_a_published_ports_replies(
    lab: Lab, ways_in: Callable
) -> None:
    set_outbound(lab, "red", True)
    try:
        ways_in("red11", ports.PUBLISH, "8081:80/tcp")
        assert within(3, lambda: fetch(lab, "red11", timeout=1) == f"you are {S1}")
        assert from_outside(lab, f"http://{S1}:8081/") == f"red11 sees {OUTSIDE}"
    finally:
        set_outbound(lab, "red", False)


def test_removing_the_keys_stops_the_ways_in_within_a_second(lab: Lab, ways_in: Callable) -> None:
    ways_in("red11", ports.FLOATING, FLOATING)
    ways_in("blue11", ports.PUBLISH, "8080:80/tcp")
    floating, published = f"http://{FLOATING}/", f"http://{S1}:8080/"
    assert within(UP, lambda: from_outside(lab, floating, timeout=2) is not None)
    assert within(UP, lambda: from_outside(lab, published, timeout=2) is not None)
    assert fetch(lab, "red11") == f"you are {FLOATING}"
    remove_key(lab, "red11", ports.FLOATING)
    remove_key(lab, "blue11", ports.PUBLISH)
    assert within(1, lambda: not outside_pings(lab, FLOATING))
    assert from_outside(lab, floating, timeout=1) is None
    assert from_outside(lab, published, timeout=1) is None
    assert fetch(lab, "red11", timeout=1) is None, "no floating address: no way out"


@pytest.mark.xfail(
    reason="OVS 3.1 (userspace datapath): attached again soon after a detach while the outside "
    "kept sending to it, the address's datapath drop flow (before conntrack) is not revalidated "
    "and outlives the re-added OpenFlow flow while it is hit (revalidator/purge clears it); "
    "see docs/dataplane.md, Limits",
    strict=False,
)
def test_a_floating_address_attached_again_works_again(lab: Lab, ways_in: Callable) -> None:
    ways_in("red11", ports.FLOATING, FLOATING)
    assert within(UP, lambda: from_outside(lab, f"http://{FLOATING}/", timeout=2) is not None)
    remove_key(lab, "red11", ports.FLOATING)
    assert within(1, lambda: from_outside(lab, f"http://{FLOATING}/", timeout=1) is None)
    ways_in("red11", ports.FLOATING, FLOATING)
    assert within(UP, lambda: from_outside(lab, f"http://{FLOATING}/", timeout=2) is not None)


def test_the_underlay_carries_no_tenant_address_and_no_encapsulation(
    lab: Lab, ways_in: Callable, tmp_path: Path
) -> None:
    floating = FRESH_FLOATING  # never attached before (see the test above)
    ways_in("red11", ports.FLOATING, floating)
    ways_in("blue11", ports.PUBLISH, "8080:80/tcp")
    assert within(UP, lambda: from_outside(lab, f"http://{floating}/", timeout=2) is not None)
    clouds = ("east", "internet")
    captures = {c: capture(lab.net.netns(c), "any", tmp_path / f"{c}.pcap") for c in clouds}
    try:
        assert from_outside(lab, f"http://{floating}/") == f"red11 sees {OUTSIDE}"
        assert from_outside(lab, f"http://{S1}:8080/") == f"blue11 sees {OUTSIDE}"
        assert fetch(lab, "red11") == f"you are {floating}"
        assert outside_pings(lab, floating)
    finally:
        for process in captures.values():
            stop_capture(process)
    lines = [line for c in clouds for line in read_capture(tmp_path / f"{c}.pcap")]
    assert len([line for line in lines if OUTSIDE in line]) >= 12, "nothing captured"
    assert [line for line in lines if "10.0.0." in line] == []
    locators = {n.locator for n in lab.nodes.values()}
    assert [line for line in lines if any(loc in line for loc in locators)] == []
    assert [line for line in lines if "802.1Q" in line or "vlan" in line.lower()] == []
    assert [line for line in lines if ".4789:" in line or ".6081:" in line or "GRE" in line] == []
