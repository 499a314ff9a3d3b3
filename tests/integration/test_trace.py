"""`nvi trace` on a real lab: OVS's own ofproto/trace on each server, the directory's answers,
before and after traffic, across tenants with the same addresses, and for a spoofed source.

Two clouds, three servers (examples/labs/two-clouds.toml); tenants red and blue share
10.0.0.0/24. The command runs as a user would run it: `python -m nvi trace FILE ... -o json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nvi.lab import links
from nvi.lab.net import LabNet
from nvi.lab.nodes import NetnsNode, add_node, with_directory
from nvi.lab.spec import load_lab
from openflow import flows as f
from tests.conftest import example_lab_text

pytestmark = pytest.mark.root

NODES = [  # server, tenant, name, ip
    ("s1", "red", "red11", "10.0.0.11"),
    ("s3", "red", "red13", "10.0.0.13"),
    ("s3", "blue", "blue13", "10.0.0.13"),
    ("s3", "blue", "blue14", "10.0.0.14"),
    ("s2", "red", "web", "10.0.0.20"),
    ("s2", "blue", "web", "10.0.0.20"),
]


class Lab:
    def __init__(self, net: LabNet, file: Path, run_dir: Path) -> None:
        self.net = net
        self.file = file
        self.run_dir = run_dir
        self.nodes: dict[str, NetnsNode] = {}

    def nvi_trace(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nvi", "trace", str(self.file), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NVI_RUN_DIR": str(self.run_dir)},
        )

    def nvi_trace_here(self, server: str, *args: str) -> subprocess.CompletedProcess:
        """`nvi trace --config` inside the server's namespace, from its controller.toml alone."""
        config = self.net.rundir / server / "controller.toml"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OVS_", "NVI_RUN"))}
        return subprocess.run(
            ["ip", "netns", "exec", self.net.netns(server), sys.executable, "-m", "nvi"]
            + ["trace", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd="/",
        )

    def server_trace(self, server: str, *args: str) -> dict[str, Any]:
        done = self.nvi_trace_here(server, *args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def trace(self, *args: str) -> dict[str, Any]:
        done = self.nvi_trace(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def pings(self, node: str, ip: str) -> bool:
        ping = ["ip", "netns", "exec", self.nodes[node].netns, "ping", "-c", "1", "-W", "1", ip]
        return subprocess.run(ping, capture_output=True, timeout=20).returncode == 0

    def ofport(self, node: str) -> int:
        ovs = self.net.ovs(self.net.lab.server(self.nodes[node].server))
        return int(ovs.vsctl("get", "interface", self.nodes[node].port, "ofport"))

    def flows(self, server: str, table: int) -> str:
        ovs = self.net.ovs(self.net.lab.server(server))
        return ovs.ofctl("dump-flows", f"table={table}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    name = "t" + uuid.uuid4().hex[:7]
    folder = tmp_path_factory.mktemp("trace")
    file = folder / "lab.toml"
    file.write_text(example_lab_text(name))
    net = LabNet(load_lab(file), root=folder / "run" / "labs")
    try:
        net.up()
        lab = Lab(net, file, folder / "run")

        async def tenants(client) -> None:
            for tenant in ("red", "blue"):
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24")

        with_directory(net, tenants)
        for server, tenant, node, ip in NODES:
            added = with_directory(
                net, lambda c, s=server, t=tenant, n=node, i=ip: add_node(net, c, s, t, "net", n, i)
            )
            lab.nodes[node if node != "web" else f"{tenant}/web"] = added
        yield lab
    finally:
        net.down()
    assert [ns for ns in links.list_netns() if ns.startswith(net.prefix)] == []


def test_before_any_traffic_the_first_packet_goes_to_the_controllers(lab: Lab) -> None:
    report = lab.trace("red11", "10.0.0.13")
    red11, red13 = lab.nodes["red11"], lab.nodes["red13"]
    assert report["node"] == "red/red11" and report["outcome"] == "allowed", report["verdict"]
    s1, s3 = report["hops"]
    assert (s1["server"], s1["outcome"], s1["predicted"]) == ("s1", "controller", False)
    assert [(x["table"], x["role"]) for x in s1["flows"]] == [
        (0, "anti-spoofing passed: own MAC and IP"),
        (1, "miss: to the controller"),
    ]
    # The directory answered red13 (red's node), not blue13 at the same address.
    assert s1["controller"]["allowed"] and s1["controller"]["remote_locator"] == red13.locator
    assert (s3["server"], s3["outcome"], s3["predicted"]) == ("s3", "controller", True)
    assert f"nw_src={red11.locator},nw_dst={red13.locator}" in s3["packet"]
    assert s3["in_port_name"] == "uplink"
    assert s3["controller"]["allowed"] and s3["controller"]["local_port"] == lab.ofport("red13")
    assert report["verdict"].startswith("allowed: red/red11 → 10.0.0.13 (icmp echo): s1 to its ")
    # A trace sends nothing: no controller saw a packet, so nothing was installed.
    time.sleep(1.5)
    assert "nw_dst=10.0.0.13" not in lab.flows("s1", f.T_EGRESS)
    assert f"nw_src={red11.locator}" not in lab.flows("s3", f.T_INGRESS)


def test_after_a_ping_both_halves_of_the_conversation_deliver(lab: Lab) -> None:
    assert lab.pings("red11", "10.0.0.13") or lab.pings("red11", "10.0.0.13")
    red11, red13 = lab.nodes["red11"], lab.nodes["red13"]
    pair = f"{f.cookie(f.PAIR, red11.locator, red13.locator):#x}"
    back = f"{f.cookie(f.PAIR, red13.locator, red11.locator):#x}"
    for protocol in ([], ["--tcp", "80"], ["--udp", "53"]):
        report = lab.trace("red11", "10.0.0.13", *protocol)
        assert report["outcome"] == "delivered", report["verdict"]
        s1, s3 = report["hops"]
        assert s1["outcome"] == "uplink" and s1["flows"][-1]["cookie"] == pair
        assert s1["flows"][-1]["role"] == "egress: rewrite and send"
        assert "red/red11" in s1["flows"][-1]["owner"] and "red/red13" in s1["flows"][-1]["owner"]
        assert (s1["final_flow"]["nw_src"], s1["final_flow"]["nw_dst"]) == (
            red11.locator,
            red13.locator,
        )
        assert not s3["predicted"] and s3["flows"][-1]["cookie"] == back
        assert s3["flows"][-1]["role"] == "ingress: restore"
        assert (s3["outcome"], s3["port"]) == ("delivered", lab.ofport("red13"))
        assert (s3["final_flow"]["nw_src"], s3["final_flow"]["nw_dst"]) == (
            "10.0.0.11",
            "10.0.0.13",
        )
    table = lab.nvi_trace("red11", "10.0.0.13")
    assert table.returncode == 0, table.stderr
    assert "ingress: restore" in table.stdout
    assert table.stdout.strip().splitlines()[-1].startswith("delivered: red/red11 → 10.0.0.13")


def test_the_other_tenants_address_is_unknown_in_the_tenant(lab: Lab) -> None:
    """10.0.0.14 is blue14's; red has no such node: denied at the first packet, and once a
    packet was refused, dropped by the refusal's drop flow while it lasts."""
    report = lab.trace("red11", "10.0.0.14")
    assert report["outcome"] == "denied", report["verdict"]
    [s1] = report["hops"]
    assert not s1["controller"]["allowed"]
    assert "no node has 10.0.0.14 in tenant red" in s1["controller"]["decision"]
    for _ in range(3):  # a refusal lasts DENY_HARD_TIMEOUT: trace within it, however slow
        started = time.monotonic()
        assert not lab.pings("red11", "10.0.0.14")
        report = lab.trace("red11", "10.0.0.14")
        if time.monotonic() - started < f.DENY_HARD_TIMEOUT - 0.5:
            break
    else:
        pytest.fail("could not trace within a refusal's lifetime three times")
    assert report["outcome"] == "dropped", report["verdict"]
    [s1] = report["hops"]
    assert s1["flows"][-1]["role"] == "refused conversation: drop"
    assert (
        s1["flows"][-1]["owner"] == f"refused red/red11 ({lab.nodes['red11'].locator}) → 10.0.0.14"
    )
    assert "denied (no node has 10.0.0.14 in tenant red)" in s1["summary"]
    # Blue's own node at that address is reachable, locally on s3.
    blue = lab.trace("blue13", "10.0.0.14")
    assert blue["outcome"] == "allowed" and len(blue["hops"]) == 1
    assert blue["hops"][0]["controller"]["local_port"] == lab.ofport("blue14")


def test_a_spoofed_source_is_dropped_by_the_anti_spoofing_flow(lab: Lab) -> None:
    report = lab.trace("red11", "10.0.0.13", "--from-ip", "10.0.0.99")
    assert report["outcome"] == "dropped", report["verdict"]
    [s1] = report["hops"]
    assert [(x["table"], x["priority"], x["role"]) for x in s1["flows"]] == [
        (0, f.PRIO_ANTI_SPOOF, "anti-spoofing: drop")
    ]
    assert "own MAC and address" in s1["reason"]


def test_names_and_bad_input(lab: Lab) -> None:
    ambiguous = lab.nvi_trace("web", "10.0.0.11")
    assert ambiguous.returncode == 1
    assert ambiguous.stderr.strip() == (
        "nvi: node name 'web' is ambiguous: say which, as tenant/name (blue/web, red/web)"
    )
    assert lab.trace("blue/web", "10.0.0.14")["node"] == "blue/web"
    for args, message in [
        (("nosuch", "10.0.0.13"), "nvi: no node 'nosuch' on the lab's servers"),
        (("red11", "10.0.0.300"), "nvi: destination '10.0.0.300' is not an IPv4 address"),
        (("red11", "10.0.0.13", "--from-ip", "x"), "nvi: --from-ip 'x' is not an IPv4 address"),
        (("red11", "10.0.0.13", "--tcp", "1", "--udp", "2"), "nvi: --tcp and --udp exclude"),
    ]:
        done = lab.nvi_trace(*args)
        assert done.returncode == 1 and done.stderr.startswith(message), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_on_one_server_from_its_own_config_as_the_lab_traces_it(lab: Lab) -> None:
    """`nvi trace --config` inside a server's namespace, with nothing but that server's
    controller.toml (no lab file, no OVS_RUNDIR), says what the lab form says of that server."""
    cases = [  # server, node, destination, onward locator (None: it stays), outcomes here
        # allowed, to s3: at the controller, or after a ping along the installed conversation
        ("s1", "red11", "10.0.0.13", lab.nodes["red13"].locator, {"allowed", "uplink"}),
        ("s1", "red11", "10.0.0.99", None, {"denied"}),  # no such node in tenant red
        ("s3", "blue13", "10.0.0.14", None, {"allowed", "delivered"}),  # on the server itself
    ]
    for server, node, destination, locator, outcomes in cases:
        whole = lab.trace(node, destination, "--tcp", "443")
        mine = lab.server_trace(server, node, destination, "--tcp", "443")
        address = lab.net.lab.server(server).address
        assert (mine["server"], mine["node"]) == (address, whole["node"])
        assert mine["outcome"] in outcomes, mine["verdict"]
        here, there = mine["hops"][0], whole["hops"][0]
        assert (here["server"], there["server"]) == (address, server)
        for key in ("in_port", "in_port_name", "packet", "outcome", "reason", "port", "final_flow"):
            assert here[key] == there[key], key
        assert [(x["table"], x["priority"], x["cookie"], x["role"]) for x in here["flows"]] == [
            (x["table"], x["priority"], x["cookie"], x["role"]) for x in there["flows"]
        ]
        assert here["controller"] == there["controller"]
        assert here["summary"] == there["summary"].replace(server, address, 1)
        if locator is None:
            assert (mine["outcome"], mine["next"]) == (whole["outcome"], None)
        else:
            assert mine["next"] == (
                f"the packet leaves towards locator {locator}; run nvi trace on that server"
            )
    table = lab.nvi_trace_here("s1", "red11", "10.0.0.13")
    assert table.returncode == 0, table.stderr
    red13 = lab.nodes["red13"].locator
    last = table.stdout.strip().splitlines()[-1]
    assert last == f"the packet leaves towards locator {red13}; run nvi trace on that server"
