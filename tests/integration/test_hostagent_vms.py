"""VMs as first-class nodes of the host agent, through its API, in the example lab as
`nvi lab up` builds it (3 servers, 2 clouds, directory, controller and agent per server).

`scripts/setup-vm` (called here, idempotent) installs the VM stack, so `up` enables VMs in
every agent. Tenant red has a VM on s1 and a container on s3; blue has a container with red's
container's address on s2. The VM's domain is `nvi-<lab>-s1-<node id>`: `down` removes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest

from federation.client import DirectoryClient
from hostagent.client import AgentClient
from hostagent.errors import AgentError
from hostagent.models import NodeInfo
from nvi.lab import links
from nvi.lab.agents import docker_url, lab_docker_root
from nvi.lab.net import LabNet
from nvi.lab.nodes import with_directory
from nvi.lab.process import ensure_running, running_pid
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import (
    DockerEngine,
    example_lab,
    in_netns,
    lab_tenants,
    setup_vm,
    type_on_console,
)

pytestmark = pytest.mark.root

T = TypeVar("T")
VM_IP, RED_IP = "10.0.0.21", "10.0.0.13"
BOOT_TO_PING = 30.0  # seconds; ~10 s here under TCG, margin for a busy machine


@dataclass
class Clouds:
    net: LabNet
    engine: DockerEngine
    tokens: dict[str, str]
    vm: NodeInfo  # red's VM on s1
    pids: dict[str, int]  # container name -> pid (red13 on s3, blue13 on s2)

    def agent(
        self, server: str, use: Callable[[AgentClient], Awaitable[T]], tenant: str = "red"
    ) -> T:
        async def go() -> T:
            socket = str(self.net.rundir / server / "agent.sock")
            async with AgentClient(socket, tenant_token=self.tokens[tenant]) as client:
                return await use(client)

        return in_netns(None, go)

    def pings(self, container: str, ip: str, within: float = 4) -> bool:
        argv = ["ping", "-c", "1", "-W", "1", "-w", str(within), ip]
        prefix = ["nsenter", "-t", str(self.pids[container]), "-n"]
        return subprocess.run([*prefix, *argv], capture_output=True).returncode == 0

    def wait_ping(self, container: str, ip: str) -> float:
        started = time.monotonic()
        while not self.pings(container, ip, within=1):
            assert time.monotonic() - started < BOOT_TO_PING, f"{ip} not reached from {container}"
        return time.monotonic() - started

    def domains(self) -> list[str]:
        """The lab's libvirt domains (defined or running)."""
        listed = subprocess.run(
            ["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return [name for name in listed if name.startswith(f"nvi-{self.net.lab.name}-")]

    def links_on(self, server: str) -> list[str]:
        """Node interfaces (veths, taps) in a server's namespace."""
        found = subprocess.run(
            ["ip", "-n", self.net.netns(server), "-j", "link"], capture_output=True, text=True
        )
        return [link["ifname"] for link in json.loads(found.stdout) if link["ifname"][:2] == "nv"]

    def ports_on(self, server: str) -> list[str]:
        names = self.net.ovs(self.net.lab.server(server)).vsctl("list-ports", "br-int").split()
        return [name for name in names if name != "uplink"]

    def directory_nodes(self, tenant: str) -> list[str]:
        async def names(client: DirectoryClient) -> list[str]:
            return sorted(node.name for node in await client.list_nodes(tenant))

        return with_directory(self.net, names)

    def console_says(self, argv: list[str], line: str, expect: str) -> None:
        """Type on the console of the VM that `argv` (`virsh -c URI console --force DOMAIN`)
        attaches to; its log is in the agent's state directory."""
        log = self.net.rundir / "s1" / "agent" / "vms" / f"{argv[-1]}.console.log"
        type_on_console(argv[2], argv[-1], log, line, expect)


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    setup_vm()
    net = example_lab(tmp_path_factory.mktemp("run"))
    engine = DockerEngine(docker_url(lab_docker_root(net.lab.name) / "exec"))
    clouds = None
    try:
        net.up()
        clouds = Clouds(net, engine, lab_tenants(net, ("red", "blue")), None, {})  # type: ignore[arg-type]
        clouds.vm = clouds.agent(
            "s1",
            lambda c: c.create(
                name="vm21", tenant="red", network="net", kind="vm", ip=VM_IP, memory_mib=192
            ),
        )
        for server, tenant, name in [("s3", "red", "red13"), ("s2", "blue", "blue13")]:
            node = clouds.agent(
                server,
                lambda c, n=name, t=tenant: c.create(name=n, tenant=t, network="net", ip=RED_IP),
                tenant,
            )

            async def pid(docker: Any, node: NodeInfo = node) -> int:
                return (await docker.containers.container(f"nvi-{node.id}").show())["State"]["Pid"]

            clouds.pids[name] = engine.call(pid)
        boot = clouds.wait_ping("red13", VM_IP)
        print(f"\nVM create -> first ping from s3's container: {boot:.1f} s")
        yield clouds
        for server in net.lab.servers:
            daemon = net.agent_daemon(server)
            assert running_pid(daemon) is not None, f"{server.name}'s agent died"
            assert "stopping on" not in daemon.log.read_text(), f"{server.name}'s agent was stopped"
    finally:
        for log in sorted(net.rundir.glob("*/agent.log")):
            print(f"--- {log.parent.name}/{log.name}:\n" + log.read_text(errors="replace")[-3000:])
        net.down()
    assert [ns for ns in links.list_netns() if ns.startswith(net.prefix)] == []
    assert clouds is not None and clouds.domains() == [], "down removes the lab's VMs"


def test_agents_have_vms_enabled(clouds: Clouds) -> None:
    status = clouds.agent("s1", lambda c: c.status())
    assert status.drivers["vm"].startswith("ok (libvirt"), status.drivers
    images = clouds.agent("s1", lambda c: c.images())
    assert "nvi/vm" in [image.name for image in images]
    assert clouds.vm.kind == "vm" and clouds.vm.image == "nvi/vm" and clouds.vm.ip == VM_IP
    assert clouds.domains() == [f"nvi-{clouds.net.lab.name}-s1-{clouds.vm.id}"]
    assert clouds.vm.port in clouds.ports_on("s1") and clouds.vm.port in clouds.links_on("s1")


def test_vm_and_container_reach_each_other_across_clouds(clouds: Clouds) -> None:
    assert clouds.pings("red13", VM_IP), "container on s3 -> VM on s1"
    argv = clouds.agent("s1", lambda c: c.console("red", "vm21"))
    assert argv[:2] == ["virsh", "-c"] and argv[3:5] == ["console", "--force"]
    clouds.console_says(
        argv, f"ping -c 2 -W 2 {RED_IP} >/dev/null && echo reached-$((40+2))", "reached-42"
    )


def test_the_other_tenant_with_the_same_addresses_reaches_nothing(clouds: Clouds) -> None:
    assert not clouds.pings("blue13", VM_IP, within=2), "blue reaches red's VM"


def _refused(clouds: Clouds, **body: Any) -> int:
    async def create(client: AgentClient) -> int:
        status, _ = await client.raw("POST", "/v1/nodes", json=body)
        return status

    return clouds.agent("s1", create)


def test_refused_vms_leave_nothing_behind(clouds: Clouds) -> None:
    before = clouds.agent("s1", lambda c: c.status())
    base = {"tenant": "red", "network": "net", "kind": "vm"}
    assert _refused(clouds, name="big", memory_mib=before.memory_mib_free + 1024, **base) in (
        409,
        422,
    )
    assert _refused(clouds, name="cpus", cpus=before.cpus_free + 1, **base) in (409, 422)
    assert _refused(clouds, name="img", image="nvi/no-such-vm", **base) == 422
    # What QEMU cannot do (the VM driver's check), refused before anything is reserved.
    assert _refused(clouds, name="half", cpus=0.5, **base) == 422
    assert _refused(clouds, name="tiny", memory_mib=32, **base) == 422
    after = clouds.agent("s1", lambda c: c.status())
    assert (after.nodes, after.locators_free) == (before.nodes, before.locators_free)
    assert len(clouds.domains()) == 1
    assert clouds.links_on("s1") == [clouds.vm.port] == clouds.ports_on("s1")
    assert clouds.directory_nodes("red") == ["red13", "vm21"]


def test_vm_survives_an_agent_kill(clouds: Clouds) -> None:
    daemon = clouds.net.agent_daemon(clouds.net.lab.server("s1"))
    pid = running_pid(daemon)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    while running_pid(daemon) is not None:
        time.sleep(0.05)
    assert clouds.pings("red13", VM_IP), "the VM runs on without its agent"
    ensure_running(daemon, timeout=60)
    assert "re-created" not in daemon.log.read_text() and "started its VM" not in (
        daemon.log.read_text()
    )
    assert clouds.pings("red13", VM_IP)
    assert len(clouds.domains()) == 1
    nodes = clouds.agent("s1", lambda c: c.list())
    assert [(n.name, n.state) for n in nodes] == [("vm21", "running")]


def test_the_vms_serial_console_over_the_agents_websocket(clouds: Clouds) -> None:
    """The console WebSocket runs `virsh console` on the agent (as for a remote tenant): a
    command typed on the guest's ttyS0 answers through it."""

    async def console(client: AgentClient) -> bytes:
        async with client.console_socket("red", "vm21") as ws:
            seen = await _read_until(ws, b"Escape character", b"")
            await asyncio.sleep(1.2)  # QEMU notices a newly opened pty on its next 1 s poll
            await ws.send_bytes(b"\recho vm-$((6*7))\r")
            return await _read_until(ws, b"vm-42", seen)

    screen = clouds.agent("s1", console)
    assert b"Connected to domain" in screen and b"vm-42" in screen


async def _read_until(ws: Any, wanted: bytes, seen: bytes, seconds: float = 20) -> bytes:
    async with asyncio.timeout(seconds):
        while wanted not in seen:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.BINARY, (message, seen)
            seen += message.data
    return seen


def test_vm_stop_start_delete(clouds: Clouds) -> None:
    stopped = clouds.agent("s1", lambda c: c.stop("red", "vm21"))
    assert stopped.state == "stopped" and stopped.desired == "stopped"
    assert clouds.links_on("s1") == [] and clouds.ports_on("s1") == []
    assert not clouds.pings("red13", VM_IP, within=2)

    started = clouds.agent("s1", lambda c: c.start("red", "vm21"))
    assert started.state == "running"
    print(f"\nVM start -> first ping: {clouds.wait_ping('red13', VM_IP):.1f} s")

    clouds.agent("s1", lambda c: c.delete("red", "vm21"))
    with pytest.raises(AgentError) as again:
        clouds.agent("s1", lambda c: c.delete("red", "vm21"))
    assert again.value.status == 404
    assert clouds.domains() == []
    assert clouds.links_on("s1") == [] and clouds.ports_on("s1") == []
    assert clouds.directory_nodes("red") == ["red13"]


def test_cli_create_shows_the_boot_and_returns_once_the_guest_has_its_address(
    clouds: Clouds,
) -> None:
    env = {
        **os.environ,
        "NVI_AGENT": str(clouds.net.rundir / "s1" / "agent.sock"),
        "NVI_TOKEN": clouds.tokens["red"],
    }

    def nvi(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "nvi", "node", *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=400)

    created = nvi(
        "create", "red/vm22", "-n", "net", "--kind", "vm", "--ip", "10.0.0.22", "-o", "json"
    )
    try:
        assert created.returncode == 0, created.stderr
        (node,) = json.loads(created.stdout)
        assert node["ready"] is True and node["state"] == "running"
        steps = created.stderr.splitlines()
        assert any(line.startswith("red/vm22: booting") for line in steps), steps
        assert steps[-1].startswith("red/vm22: booted"), steps
        # Booted means addressed: the first ping already answers.
        assert clouds.pings("red13", "10.0.0.22", within=3)
        stopped = nvi("stop", "red/vm22", "-o", "json")
        assert json.loads(stopped.stdout)[0]["ready"] is False
        late = nvi("start", "red/vm22", "--boot-timeout", "1", "-o", "json")
        assert late.returncode == 1 and "did not finish booting in 1 s" in late.stderr
    finally:
        assert nvi("delete", "red/vm22").returncode == 0
