"""Containers made by host agents talk across servers and clouds through the data plane.

The example lab as `nvi lab up` builds it (3 servers, 2 clouds, directory, a controller and a
host agent per server, one Docker engine for the lab), with containers on s1 and s3 and a
namespace node (`nvi.lab.nodes`) on s2. The agents only plug correctly; the controllers route. Tenants red and blue use the same
addresses: red's nodes reach each other, blue reaches none of them.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hostagent.client import AgentClient
from hostagent.models import NodeInfo
from nvi.lab import links
from nvi.lab.agents import LAB_LABEL, docker_url, lab_docker_root
from nvi.lab.net import LabNet
from nvi.lab.nodes import NetnsNode, add_node, with_directory
from nvi.lab.process import running_pid
from nvi.lab.spec import load_lab
from tests.conftest import EXAMPLE_LAB
from tests.integration.hostagent_fixtures import DockerEngine, in_netns, lab_tenants

pytestmark = pytest.mark.root

# Answers every TCP connection on port 7000 with the node's name, to tell same-address
# nodes of different tenants apart.
NAME_SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", 7000))
while True:
    conn, _ = server.accept(); conn.sendall(sys.argv[1].encode()); conn.close()
"""
ASK = """
import socket, sys
try:
    print(socket.create_connection((sys.argv[1], 7000), timeout=3).recv(100).decode())
except OSError:
    print("unreachable")
"""


@dataclass
class Clouds:
    net: LabNet
    tokens: dict[str, str]
    containers: dict[str, tuple[NodeInfo, int]]  # name -> (node, container pid)
    netns_nodes: dict[str, NetnsNode]

    def run(self, node: str, argv: list[str]) -> subprocess.CompletedProcess:
        """A command in a node's network namespace (container or namespace node)."""
        if node in self.containers:
            prefix = ["nsenter", "-t", str(self.containers[node][1]), "-n"]
        else:
            prefix = ["ip", "netns", "exec", self.netns_nodes[node].netns]
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=30)

    def pings(self, node: str, ip: str, within: int = 4) -> bool:
        """Several tries: the first packet of a pair waits for two directory lookups."""
        argv = ["ping", "-c", "3", "-W", "1", "-w", str(within), ip]
        return self.run(node, argv).returncode == 0

    def ask(self, node: str, ip: str) -> str:
        return self.run(node, [sys.executable, "-c", ASK, ip]).stdout.strip()


def create(net: LabNet, server: str, token: str, **body: str) -> NodeInfo:
    """Create a container through the agent of a server, as that server's operator does."""
    socket = net.rundir / server / "agent.sock"

    async def go() -> NodeInfo:
        async with AgentClient(str(socket), tenant_token=token) as agent:
            return await agent.create(**body)

    return in_netns(None, go)


def pid_of(engine: DockerEngine, node: NodeInfo) -> int:
    async def show(docker) -> int:  # noqa: ANN001 - aiodocker.Docker
        return (await docker.containers.container(f"nvi-{node.id}").show())["State"]["Pid"]

    return engine.call(show)


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    spec = load_lab(EXAMPLE_LAB).model_copy(
        update={"name": "t" + uuid.uuid4().hex[:7], "portal": None}
    )
    net = LabNet(spec, root=tmp_path_factory.mktemp("run"))
    engine = DockerEngine(docker_url(lab_docker_root(spec.name) / "exec"))
    try:
        net.up()
        assert net.lab.directory is not None
        tokens = lab_tenants(net, ("red", "blue"))
        clouds = Clouds(net, tokens, {}, {})
        for server, tenant, name, ip in [
            ("s1", "red", "red11", "10.0.0.11"),
            ("s3", "red", "red13", "10.0.0.13"),
            ("s1", "blue", "blue13", "10.0.0.13"),
        ]:
            node = create(
                net, server, tokens[tenant], tenant=tenant, name=name, network="net", ip=ip
            )
            clouds.containers[name] = (node, pid_of(engine, node))
        clouds.netns_nodes["red12"] = with_directory(
            net, lambda c: add_node(net, c, "s2", "red", "net", "red12", "10.0.0.12")
        )
        responders = [
            subprocess.Popen(
                ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", NAME_SERVER, name],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, (_, pid) in clouds.containers.items()
        ]
        try:
            yield clouds
        finally:
            for responder in responders:
                responder.kill()
                responder.wait()
        for server in net.lab.servers:
            assert running_pid(net.agent_daemon(server)) is not None, f"{server.name}'s agent"
        assert len(engine.containers(f"{LAB_LABEL}={spec.name}")) == 3
    finally:
        for log in sorted(net.rundir.glob("*/agent.log")):
            print(f"--- {log.parent.name}/{log.name}:\n" + log.read_text(errors="replace")[-3000:])
        net.down()
    assert [ns for ns in links.list_netns() if ns.startswith(net.prefix)] == []
    assert running_pid(net.docker_daemon()) is None and not lab_docker_root(spec.name).exists()


def test_containers_reach_each_other_across_clouds(clouds: Clouds) -> None:
    assert clouds.pings("red11", "10.0.0.13"), "s1 container -> s3 container (across the router)"
    assert clouds.ask("red11", "10.0.0.13") == "red13", "red's 10.0.0.13, not blue's"
    assert clouds.ask("red13", "10.0.0.11") == "red11"


def test_container_and_namespace_node_reach_each_other(clouds: Clouds) -> None:
    assert clouds.pings("red12", "10.0.0.11"), "namespace node on s2 -> container on s1"
    assert clouds.pings("red13", "10.0.0.12"), "container on s3 -> namespace node on s2"
    assert clouds.ask("red12", "10.0.0.13") == "red13"


def test_the_other_tenant_with_the_same_addresses_reaches_nothing(clouds: Clouds) -> None:
    """blue13 sits on red11's server and shares red13's address: it reaches none of red's."""
    for ip in ("10.0.0.11", "10.0.0.12"):
        assert not clouds.pings("blue13", ip, within=2), ip
        assert clouds.ask("blue13", ip) == "unreachable", ip


def test_containers_reach_their_tenants_nodes_by_name(clouds: Clouds) -> None:
    """Inside the container (its own /etc/resolv.conf from the agent): its server answers its
    tenant's names, on any server, and never another tenant's."""

    def inside(node: str, *argv: str) -> subprocess.CompletedProcess:
        pid = clouds.containers[node][1]
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-a", *argv], capture_output=True, text=True, timeout=30
        )

    looked_up = inside("red11", "nslookup", "-type=a", "red13")
    assert "10.0.0.13" in looked_up.stdout.partition("Name:")[2], looked_up.stdout
    assert inside("red11", "ping", "-c", "3", "-W", "1", "-w", "4", "red13").returncode == 0
    assert inside("red11", "ping", "-c", "3", "-W", "1", "-w", "4", "red12.net").returncode == 0
    refused = inside("blue13", "nslookup", "-type=a", "red11")
    assert "NXDOMAIN" in refused.stdout + refused.stderr
    assert inside("blue13", "ping", "-c", "1", "-W", "1", "red11").returncode != 0
