"""Ways in from outside, end to end on the lab: tenants publish ports and attach floating
addresses with `nvi` and their profile (the agents decide and record, the directory knows
whose address is whose, the controllers install the NAT), and the lab's outside host, on
"the internet" beyond the router, reaches exactly the node meant and nothing else.

Tenants red and blue use the same 10.0.0.0/24 on the same servers, with outbound access off:
what the outside reaches, it reaches only through the ways in under test. Every node serves a
page naming itself (busybox httpd).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nvi.core.ports import FLOATING, PUBLISH, vsctl_rows
from nvi.lab.agents import docker_url, lab_docker_root
from nvi.lab.net import LabNet
from nvi.lab.nodes import tenant_token, with_directory
from nvi.lab.outside import fetch_in
from nvi.lab.spec import parse_lab
from tests.conftest import example_lab_text, readdressed
from tests.integration.test_dataplane import capture, read_capture, running_lab, stop_capture

pytestmark = pytest.mark.root

EAST, WEST = "198.18.5", "198.18.6"  # this lab's clouds: beside any other lab on the machine
S1, S3 = f"{EAST}.11", f"{WEST}.13"
TENANTS = ("red", "blue")
SMALL = ("--cpus", "0.25", "--memory", "64")


@dataclass
class Ways:
    net: LabNet
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # "tenant/name" -> show

    def nvi(self, tenant: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`nvi ARGS` on this machine with only the tenant's profile (or the admin's)."""
        env = {
            **os.environ,
            "NVI_CONFIG": str(self.net.client_config),
            "NVI_PROFILE": f"{self.net.lab.name}-{tenant}",
        }
        done = subprocess.run(
            [sys.executable, "-m", "nvi", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if check:
            assert done.returncode == 0, f"nvi {' '.join(args)}: {done.stderr}"
        return done

    def show(self, key: str) -> dict[str, Any]:
        """The node as its tenant sees it across the cloud (no locator, no port)."""
        tenant = key.split("/")[0]
        return json.loads(self.nvi(tenant, "node", "show", key, "-o", "json").stdout)[0]

    def on_server(self, key: str, server: str) -> dict[str, Any]:
        """The node as its server's agent has it (its container's id, its port)."""
        socket = str(self.net.rundir / server / "agent.sock")
        shown = self.nvi(key.split("/")[0], "node", "show", key, "--agent", socket, "-o", "json")
        return {**json.loads(shown.stdout)[0], "server": server}

    def exec(self, key: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        engine = docker_url(lab_docker_root(self.net.lab.name) / "exec")
        container = f"nvi-{self.nodes[key]['id']}"
        return subprocess.run(
            ["docker", "-H", engine, "exec", container, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def from_outside(self, url: str, timeout: float = 2) -> str | None:
        """The page as the outside host fetches it, or None when nothing answered."""
        assert self.net.lab.outside is not None
        return fetch_in(self.net.netns(self.net.lab.outside.name), url, timeout)

    def outside_page(self, key: str) -> str | None:
        """What a node reads from the outside host's page (who it says the node is)."""
        assert self.net.lab.outside is not None
        url = self.net.lab.outside.url
        # `timeout`, not busybox wget's -T (which crashes, whatever the fetch's outcome)
        got = self.exec(key, "timeout", "2", "wget", "-q", "-O", "-", url)
        return got.stdout.strip() if got.returncode == 0 else None

    def port_ids(self, key: str) -> dict[str, str]:
        """The node's port's external_ids on its server's bridge (what the controller reads)."""
        node = self.nodes[key]
        ovs = self.net.ovs(self.net.lab.server(node["server"]))
        rows = vsctl_rows(ovs.vsctl("--format=json", "list", "interface", node["port"]))
        return rows[0]["external_ids"]


@pytest.fixture(scope="module")
def ways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ways]:
    own = parse_lab(tomllib.loads(readdressed(example_lab_text("x"), EAST, WEST)))
    members = ("clouds", "routers", "servers", "directory", "outside")
    with running_lab(tmp_path_factory, **{key: getattr(own, key) for key in members}) as net:

        async def tenants(client) -> None:  # noqa: ANN001
            for tenant in TENANTS:
                await client.create_tenant(tenant)
                await client.create_network(tenant, "net", "10.0.0.0/24")
                await tenant_token(net, client, tenant)

        with_directory(net, tenants)
        net.write_client_config()
        ways = Ways(net)
        for tenant in TENANTS:
            for server, ip in (("s1", "10.0.0.11"), ("s3", "10.0.0.13")):
                key = f"{tenant}/{tenant}-{server}"
                args = ("node", "create", key, "-n", "net", "--server", server, "--ip", ip)
                ways.nvi(tenant, *args, *SMALL)
                ways.nodes[key] = ways.on_server(key, server)
                page = f"page of {key}"
                serve = f"mkdir -p /www && echo '{page}' > /www/index.html && httpd -p 80 -h /www"
                assert ways.exec(key, "sh", "-c", serve).returncode == 0
        yield ways


def test_a_published_port_reaches_its_node_only_and_opens_nothing_outwards(ways: Ways) -> None:
    """red publishes s3:8080 -> red-s3:80: the outside gets red-s3's page (not blue-s3's, at
    the same address on the same server); red-s3 still cannot open a connection outwards (its
    network has no outbound access); removing the port closes it."""
    url = f"http://{S3}:8080/"
    assert ways.from_outside(url) is None
    ways.nvi("red", "node", "publish", "red/red-s3", "8080:80/tcp")
    assert ways.port_ids("red/red-s3")[PUBLISH] == "8080:80/tcp"
    assert ways.from_outside(url) == "page of red/red-s3"
    assert ways.outside_page("red/red-s3") is None  # replies only, no way out
    shown = ways.show("red/red-s3")
    assert shown["published"] == [{"host_port": 8080, "node_port": 80, "protocol": "tcp"}]
    ways.nvi("red", "node", "publish", "red/red-s3")  # none: all removed
    assert PUBLISH not in ways.port_ids("red/red-s3")
    assert ways.from_outside(url, timeout=1) is None


def test_a_port_in_use_is_refused_and_changes_nothing(ways: Ways) -> None:
    ways.nvi("red", "node", "publish", "red/red-s3", "8081:80/tcp")
    try:
        refused = ways.nvi("blue", "node", "publish", "blue/blue-s3", "8081:80/tcp", check=False)
        assert refused.returncode != 0 and "8081" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert PUBLISH not in ways.port_ids("blue/blue-s3")
        assert ways.from_outside(f"http://{S3}:8081/") == "page of red/red-s3"
        # the agent's own API port on the server's address is the server's, never a node's
        agent = ways.nvi("blue", "node", "publish", "blue/blue-s3", "7490:80/tcp", check=False)
        assert agent.returncode != 0 and PUBLISH not in ways.port_ids("blue/blue-s3")
        # nor a source port of the server's own connections: their replies (the directory's
        # answers among them) would reach the node
        source = ways.nvi("blue", "node", "publish", "blue/blue-s3", "40000:80/tcp", check=False)
        assert source.returncode != 0 and "source ports" in source.stderr
        assert PUBLISH not in ways.port_ids("blue/blue-s3")
        malformed = ways.nvi("blue", "node", "publish", "blue/blue-s3", "80:eighty", check=False)
        assert malformed.returncode != 0 and "HOST_PORT:NODE_PORT" in malformed.stderr
    finally:
        ways.nvi("red", "node", "publish", "red/red-s3")


def test_a_floating_address_maps_both_ways_and_a_detach_closes_it_within_a_second(
    ways: Ways, tmp_path: Path
) -> None:
    """red attaches a floating address of s1 to red-s1: the outside reaches red-s1 there, and
    red-s1 reaches the outside as that address (1:1, whatever its network's outbound access),
    the directory knows whose it is; blue-s1 (same address, same server) stays out of reach
    and offline; the underlay carries no tenant address; detached, it is gone within 1 s."""
    router = ways.net.lab.routers[0]
    recording = capture(ways.net.netns(router.name), "any", tmp_path / "router.pcap")
    try:
        attached = json.loads(
            ways.nvi("red", "node", "floating", "attach", "red/red-s1", "-o", "json").stdout
        )[0]
        floating = attached["floating"]
        pool = ways.net.lab.server("s1").floating
        assert pool is not None and floating.startswith(f"{EAST}.")
        assert ways.port_ids("red/red-s1")[FLOATING] == floating
        assert ways.from_outside(f"http://{floating}/") == "page of red/red-s1"
        assert ways.outside_page("red/red-s1") == f"you are {floating}"
        assert ways.outside_page("blue/blue-s1") is None
        listed = json.loads(ways.nvi("admin", "directory", "floating", "list", "-o", "json").stdout)
        assert [(e["address"], e["tenant"], e["node"]) for e in listed] == [
            (floating, "red", "red-s1")
        ]
    finally:
        stop_capture(recording)
    lines = read_capture(tmp_path / "router.pcap")
    assert any(floating in line for line in lines), "the floating traffic was not captured"
    assert [line for line in lines if "10.0.0." in line] == []

    ways.nvi("red", "node", "floating", "detach", "red/red-s1")
    detached = time.monotonic()
    while ways.from_outside(f"http://{floating}/", timeout=0.3) is not None:
        assert time.monotonic() - detached < 1, "the floating address still answers"
    assert FLOATING not in ways.port_ids("red/red-s1")
    assert ways.outside_page("red/red-s1") is None  # no outbound access without it


def test_floating_bad_input_is_refused_and_changes_nothing(ways: Ways) -> None:
    attached = json.loads(
        ways.nvi("red", "node", "floating", "attach", "red/red-s1", "-o", "json").stdout
    )[0]["floating"]
    try:
        # taken by red-s1: blue cannot have it
        taken = ways.nvi(
            "blue", "node", "floating", "attach", "blue/blue-s1", "--address", attached, check=False
        )
        assert taken.returncode != 0 and FLOATING not in ways.port_ids("blue/blue-s1")
        # not in s1's pool (s3's pool, and an address of no pool)
        s3_pool = ways.net.lab.server("s3").floating
        assert s3_pool is not None
        for address in (s3_pool.split("-")[0], f"{EAST}.250"):
            wrong = ways.nvi(
                "blue",
                "node",
                "floating",
                "attach",
                "blue/blue-s1",
                "--address",
                address,
                check=False,
            )
            assert wrong.returncode != 0 and FLOATING not in ways.port_ids("blue/blue-s1")
        # another tenant's node: blue cannot attach to (or detach from) red's node
        foreign = ways.nvi("blue", "node", "floating", "detach", "red/red-s1", check=False)
        assert foreign.returncode != 0
        assert ways.port_ids("red/red-s1")[FLOATING] == attached
        listed = json.loads(ways.nvi("admin", "directory", "floating", "list", "-o", "json").stdout)
        assert [(e["address"], e["tenant"]) for e in listed] == [(attached, "red")]
    finally:
        ways.nvi("red", "node", "floating", "detach", "red/red-s1")
