"""TCP with userspace TSO on in every lab vswitchd: byte-exact across the router (through the
locator rewrite), between two nodes on one bridge, and through the outbound NAT to the outside
host.

Every transfer sends 4 MiB of random bytes and compares SHA-256 digests on both ends, so a
corrupted, truncated or silently dropped stream fails. The tenant veths keep `tx off` (see
docs/decisions.md, "Userspace TSO"): the last test shows why, and fails the day Open vSwitch
updates partial checksums correctly, which is when `tx off` can go.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nvi.lab import links
from nvi.lab.nodes import INSIDE
from nvi.lab.ovs import TSO_KEY
from tests.integration.test_dataplane import Lab, running_lab

pytestmark = pytest.mark.root

OUTSIDE = "192.0.2.80"
PORT = 5311
RECEIVE = (
    "import hashlib, socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {PORT})); s.listen(); s.settimeout(10)\n"
    "c, _ = s.accept(); c.settimeout(10); h = hashlib.sha256()\n"
    "while data := c.recv(65536): h.update(data)\n"
    "print(h.hexdigest())\n"
)
SEND = (
    "import socket, sys\n"
    f"s = socket.create_connection((sys.argv[1], {PORT}), timeout=10)\n"
    "s.sendall(open(sys.argv[2], 'rb').read()); s.close()\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(tmp_path_factory) as net:
        lab = Lab(net)

        async def tenant(client) -> None:  # noqa: ANN001
            await client.create_tenant("red")
            await client.create_network("red", "net", "10.0.0.0/24", outbound=True)

        net.call_directory(tenant)
        lab.add("s1", "red", "net", "red11", "10.0.0.11")
        lab.add("s1", "red", "net", "red12", "10.0.0.12")
        lab.add("s3", "red", "net", "red13", "10.0.0.13")
        yield lab


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("tso") / "payload"
    path.write_bytes(os.urandom(4 << 20))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def transfer(sender_ns: str, receiver_ns: str, address: str, payload: Path) -> str:
    """Send the file over one TCP connection; the receiver's SHA-256, or why it failed."""
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", receiver_ns, "python3", "-c", RECEIVE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    sent = subprocess.run(
        ["ip", "netns", "exec", sender_ns, "python3", "-c", SEND, address, str(payload)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    digest, error = receiver.communicate(timeout=30)
    return digest.strip() or f"failed: {sent.stderr.strip()[-200:]} / {error.strip()[-200:]}"


def test_every_vswitchd_runs_with_userspace_tso(lab: Lab) -> None:
    """The setting alone proves nothing (vswitchd reads it at start): its own log must say so."""
    for server in lab.net.lab.servers:
        ovs = lab.net.ovs(server)
        assert ovs.vsctl("get", "Open_vSwitch", ".", f"other_config:{TSO_KEY}").strip() == '"true"'
        assert ovs.tso_enabled(), f"{server.name}: vswitchd started without userspace TSO"


@pytest.mark.parametrize(
    ("sender", "receiver", "address"),
    [
        ("red11", "red13", "10.0.0.13"),  # s1 -> router -> s3: the locator rewrite, both ways
        ("red13", "red11", "10.0.0.11"),
        ("red11", "red12", "10.0.0.12"),  # two nodes on s1's bridge
    ],
)
def test_tcp_is_byte_exact_between_nodes(
    lab: Lab, payload: tuple[Path, str], sender: str, receiver: str, address: str
) -> None:
    path, digest = payload
    assert lab.pings(sender, address)  # the first packet sets the conversation up
    nodes = lab.nodes
    assert transfer(nodes[sender].netns, nodes[receiver].netns, address, path) == digest


def test_tcp_is_byte_exact_through_the_outbound_nat(lab: Lab, payload: tuple[Path, str]) -> None:
    path, digest = payload
    assert lab.pings("red11", OUTSIDE)
    outside = lab.net.netns("outside")
    assert transfer(lab.nodes["red11"].netns, outside, OUTSIDE, path) == digest


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="OVS 3.1 rewrites IPv4 addresses of TSO segments with a wrong partial checksum",
)
def test_tso_segments_from_a_node_survive_the_rewrite(lab: Lab, payload: tuple[Path, str]) -> None:
    """With checksum and segmentation offload on at a node's veth, the node hands OVS 64 KiB
    segments whose TCP checksum field holds only the pseudo-header sum; OVS 3.1's `set_field`
    on an address updates it as if it were a full checksum, so every rewritten segment arrives
    corrupt (local switching, which rewrites no address, is unaffected). This passes, and so
    fails here, on an Open vSwitch that gets it right: then `tx off` can go from the veths."""
    path, digest = payload
    node = lab.nodes["red11"]
    server_ns = lab.net.netns(node.server)
    offloads = ["tx", "on", "tso", "on", "gso", "on"]
    links.run_in(node.netns, ["ethtool", "-K", INSIDE, *offloads])
    links.run_in(server_ns, ["ethtool", "-K", node.port, *offloads])
    try:
        assert transfer(node.netns, lab.nodes["red13"].netns, "10.0.0.13", path) == digest
    finally:
        offloads = ["tx", "off", "tso", "off", "gso", "off"]
        links.run_in(node.netns, ["ethtool", "-K", INSIDE, *offloads])
        links.run_in(server_ns, ["ethtool", "-K", node.port, *offloads])
