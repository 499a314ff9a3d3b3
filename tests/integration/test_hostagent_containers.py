"""The host agent on a real lab server: real Docker, the server's own OVS, the real directory.

The agent runs inside the lab server's namespace; the tests talk to it over its Unix socket
and check each subsystem directly: inside the container (nsenter), the server's OVSDB, the
directory, the Docker engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiodocker
import pytest

from hostagent.containers import BUSYBOX_IMAGE, build_context
from hostagent.errors import AgentError
from nvi.core.ports import KEYS, NodePort
from nvi.lab import links
from nvi.lab.process import running_pid
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import EMPTY, LABELS, Site, snapshot

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root


WIRE_TEN_TIMES = """
import asyncio, signal, sys
from hostagent.plumbing import plumb, plumbed, unplumb

async def main(pid: int) -> None:
    received = []
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, received.append, 15)
    for _ in range(10):
        await plumb(pid, "nv0f0f0f0f0f", "52:54:00:0f:0f:0f", "10.1.0.9", 24, "10.1.0.1")
        assert await plumbed(pid, "nv0f0f0f0f0f")
    await unplumb("nv0f0f0f0f0f")
    await asyncio.sleep(0.1)
    print(len(received))

asyncio.run(main(int(sys.argv[1])))
"""


def test_plumbing_never_signals_the_agent_itself(site: Site) -> None:
    """The agent runs asyncio with a SIGTERM handler; wiring containers must never trigger it.
    (pyroute2's `netns=` forks a copy of the process and stops it with SIGTERM; the copy's
    inherited handler writes the signal into the agent's own event loop.) Run like the agent:
    a process of its own in the server's namespace, wiring into another namespace."""
    ns = f"{site.ns}.plumb"
    links.ensure_netns(ns, {"net.ipv6.conf.all.disable_ipv6": "1"})
    holder = subprocess.Popen(["ip", "netns", "exec", ns, "sleep", "60"])
    try:
        while links.netns_pids(ns) == []:
            time.sleep(0.01)
        (pid,) = links.netns_pids(ns)
        wiring = links.run_in(site.ns, [sys.executable, "-c", WIRE_TEN_TIMES, str(pid)])
    finally:
        holder.kill()
        holder.wait()
        links.remove_netns(ns)
    assert wiring.stdout.strip() == "0", "SIGTERM handler calls"


def inside(pid: int, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, check=True
    ).stdout


def container_pid(site: Site, node_id: str) -> int:
    async def show(docker: aiodocker.Docker) -> int:
        return (await docker.containers.container(f"nvi-{node_id}").show())["State"]["Pid"]

    return site.docker.call(show)


async def test_container_gets_its_tenant_address_port_and_record(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(
            name="web1", tenant="acme", network="web", cpus=0.5, memory_mib=64
        )
        fixed = await agent.create(name="web2", tenant="acme", network="web", ip="10.1.0.77")
    assert (node.phase, node.state, node.ip, node.gateway) == (
        "ready",
        "running",
        "10.1.0.2",
        "10.1.0.1",
    )
    assert fixed.ip == "10.1.0.77"
    assert node.locator == "198.51.100.64" and fixed.locator == "198.51.100.65"

    pid = container_pid(site, node.id)
    assert "inet 10.1.0.2/24" in inside(pid, "ip", "-o", "addr", "show", "eth0")
    assert f"link/ether {node.mac}" in inside(pid, "ip", "-o", "link", "show", "eth0")
    assert "default via 10.1.0.1 dev eth0" in inside(pid, "ip", "route")
    assert "tx-checksumming: off" in inside(pid, "ethtool", "-k", "eth0")
    assert inside(pid, "ip", "-o", "link").count("link/") == 2  # lo and eth0: no Docker network
    # names are asked of the container's own server, at its network's gateway
    resolv = Path(f"/proc/{pid}/root/etc/resolv.conf").read_text().splitlines()
    assert {"nameserver 10.1.0.1", "search acme.nvi.internal"} <= set(resolv), resolv
    assert [line for line in resolv if line.startswith("nameserver")] == ["nameserver 10.1.0.1"]

    async def limits(docker: aiodocker.Docker) -> dict:
        return (await docker.containers.container(f"nvi-{node.id}").show())["HostConfig"]

    host = site.docker.call(limits)
    assert (host["NanoCpus"], host["Memory"], host["NetworkMode"]) == (5 * 10**8, 64 << 20, "none")

    external = site.ports()[node.port]
    port = NodePort.from_external_ids(external)  # what the controller reads, and only that
    assert port is not None and set(KEYS) <= set(external)
    assert (port.node_id, port.tenant, port.network, port.ip, port.cidr, port.locator) == (
        node.directory_id,
        "acme",
        "web",
        "10.1.0.2",
        "10.1.0.0/24",
        "198.51.100.64",
    )
    assert port.mac == node.mac and external["nvi-name"] == "web1"
    assert await asyncio.to_thread(links.link_state, site.ns, node.port) in ("UP", "UNKNOWN")

    record = site.directory_call(site.acme.token, lambda c: c.get_node("acme", "web1"))
    assert (record.id, record.ip, record.mac, record.locator, record.server) == (
        node.directory_id,
        node.ip,
        node.mac,
        node.locator,
        "s1",
    )


async def test_a_removed_default_image_is_rebuilt_by_the_next_create_showing_it(
    clean: Site,
) -> None:
    site = clean

    async def remove_image(docker: aiodocker.Docker) -> None:
        await docker.images.delete(BUSYBOX_IMAGE)

    site.docker.call(remove_image)  # as an operator's `docker image prune -a` would
    steps = []
    async with site.client(site.acme) as agent:
        creating = asyncio.ensure_future(agent.create(name="web1", tenant="acme", network="web"))
        while not creating.done():
            try:
                steps.append((await agent.show("acme", "web1")).progress)
            except AgentError:
                pass  # not reserved yet
            await asyncio.sleep(0.02)
        node = await creating
        shown = await agent.show("acme", "web1")
    assert node.phase == "ready" and node.image == BUSYBOX_IMAGE
    assert any(step.startswith(f"building image {BUSYBOX_IMAGE}") for step in steps), steps
    assert (shown.ready, shown.progress) == (True, "")


async def test_drain_needs_the_directory_admin_token_and_removes_every_node(
    clean: Site,
) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        await agent.create(name="web1", tenant="acme", network="web")
    async with site.client(site.rival) as agent:
        await agent.create(name="web1", tenant="rival", network="web")
    before = snapshot(site)
    async with site.client() as agent:
        status, answer = await agent.raw(
            "POST", "/v1/drain", headers={"X-Directory-Token": site.acme.token}
        )
        assert status == 401 and "admin token" in answer["error"]
        assert snapshot(site) == before, "a refused drain changes nothing"
        drained = await agent.drain(site.admin_token)
    assert sorted((n.tenant, n.name) for n in drained) == [("acme", "web1"), ("rival", "web1")]
    assert snapshot(site) == EMPTY  # containers, ports, veths, rows and directory records


async def test_same_addresses_in_another_tenant_are_separate_nodes(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as acme, site.client(site.rival) as rival:
        a = await acme.create(name="db", tenant="acme", network="web", ip="10.1.0.9")
        b = await rival.create(name="db", tenant="rival", network="web", ip="10.1.0.9")
    assert a.ip == b.ip and a.locator != b.locator and a.port != b.port
    assert site.ports()[b.port]["nvi-tenant"] == "rival"


@pytest.mark.parametrize(
    ("body", "tenant", "status", "message"),
    [
        ({"network": "nope"}, "acme", 404, "nope"),
        ({"ip": "10.9.9.9"}, "acme", 409, "not a usable address"),
        ({"ip": "10.1.0.1"}, "acme", 409, "not a usable address"),
        ({"ip": "10.1.0.50"}, "acme", 409, ""),
        ({"image": "nosuch:latest"}, "acme", 409, "unknown image"),
        ({"cpus": 512}, "acme", 409, "capacity"),
        ({"memory_mib": 1 << 20}, "acme", 409, "capacity"),
        ({"name": "Bad_Name"}, "acme", 422, "name"),
        ({"colour": "red"}, "acme", 422, "colour"),
        ({"kind": "vm"}, "acme", 409, "no vm driver"),
        ({}, None, 401, "X-Tenant-Token"),
        ({}, "rival", 404, ""),
    ],
)
async def test_bad_input_is_a_4xx_json_error_and_creates_nothing(
    clean: Site, body: dict, tenant: str | None, status: int, message: str
) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        await agent.create(name="taken", tenant="acme", network="web", ip="10.1.0.50")
    before = snapshot(site)
    token = {"acme": site.acme, "rival": site.rival}.get(tenant or "")
    request = {"name": "n1", "tenant": "acme", "network": "web", **body}
    async with site.client(token) as agent:
        code, answer = await agent.raw("POST", "/v1/nodes", json=request)
    assert code == status, answer
    assert message in answer["error"]
    assert snapshot(site) == before


async def test_malformed_json_and_unknown_paths_are_json_errors(clean: Site) -> None:
    async with clean.client(clean.acme) as agent:
        assert (await agent.raw("POST", "/v1/nodes", data=b"{nope"))[0] == 422
        code, answer = await agent.raw("GET", "/v1/nodes/acme/ghost")
        assert (code, answer["error"]) == (404, "no node acme/ghost on this server")
        code, answer = await agent.raw("GET", "/v1/nodes/Acme!/x")
        assert code == 422 and "error" in answer
        code, answer = await agent.raw("GET", "/v1/openapi.json")
        assert code == 200 and "/v1/nodes/{tenant}/{name}/stop" in answer["paths"]
        socket = answer["paths"]["/v1/nodes/{tenant}/{name}/console/socket"]["get"]
        assert "101" in socket["responses"] and socket["parameters"][0]["name"] == "tenant"


async def test_stop_start_delete_and_delete_again(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(name="svc", tenant="acme", network="web")
        stopped = await agent.stop("acme", "svc")
        assert (stopped.desired, stopped.state) == ("stopped", "exited")
        assert node.port not in site.ports()
        record = site.directory_call(site.acme.token, lambda c: c.get_node("acme", "svc"))
        assert record.locator == node.locator  # a stopped node keeps its identity

        started = await agent.start("acme", "svc")
        assert started.state == "running"
        pid = container_pid(site, node.id)
        assert "inet 10.1.0.2/24" in inside(pid, "ip", "-o", "addr", "show", "eth0")
        assert site.ports()[node.port]["nvi-node-id"] == node.directory_id

        with pytest.raises(AgentError) as wrong:
            async with site.client(site.rival) as rival:
                await rival.delete("acme", "svc")
        assert wrong.value.status == 401
        await agent.delete("acme", "svc")
        assert snapshot(site) == EMPTY
        with pytest.raises(AgentError) as again:
            await agent.delete("acme", "svc")
        assert again.value.status == 404
    assert snapshot(site) == EMPTY


async def build_broken_image(docker: aiodocker.Docker) -> None:
    dockerfile = b'FROM nvi/busybox:latest\nCMD ["/no/such/program"]\n'
    await docker.images.build(
        fileobj=io.BytesIO(build_context(dockerfile)),
        encoding="application/x-tar",
        tag="nvi-test-broken:latest",
        labels=LABELS,
    )


async def test_a_failure_half_way_rolls_everything_back(clean: Site) -> None:
    """An image whose command does not exist: Docker fails at start, after the directory
    record, the locator and the container were made. All of it must go."""
    site = clean
    site.docker.call(build_broken_image)
    try:
        async with site.client(site.acme) as agent:
            with pytest.raises(AgentError) as failed:
                await agent.create(
                    name="broken", tenant="acme", network="web", image="nvi-test-broken:latest"
                )
            assert failed.value.status == 500 and "docker start" in str(failed.value)
            assert snapshot(site) == EMPTY
            again = await agent.create(name="ok", tenant="acme", network="web")
            assert again.locator == "198.51.100.64" and again.ip == "10.1.0.2"  # both freed
    finally:
        site.docker.call(lambda docker: docker.images.delete("nvi-test-broken:latest", force=True))


async def test_restart_re_plumbs_and_removes_orphans(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        kept = await agent.create(name="kept", tenant="acme", network="web")
        cut = await agent.create(name="cut", tenant="acme", network="web")
    os.kill(running_pid(site.agent), signal.SIGKILL)
    while running_pid(site.agent) is not None:
        await asyncio.sleep(0.01)
    site.ovs.vsctl("del-port", "br-int", kept.port)  # a lost port
    links.run_in(site.ns, ["ip", "link", "del", cut.port])  # a cut wire
    links.run_in(site.ns, ["ip", "link", "add", "nv0123456789", "type", "veth"])  # an orphan

    async def orphan(docker: aiodocker.Docker) -> None:
        agent_id = next(c for c in site.docker.test_containers())["labels"]["nvi.agent"]
        await docker.containers.create(
            {
                "Image": "nvi/busybox:latest",
                "Labels": {**LABELS, "nvi.agent": agent_id, "nvi.node": "feedfeedfeedfeed"},
                "HostConfig": {"NetworkMode": "none"},
            },
            name="nvi-feedfeedfeedfeed",
        )

    site.docker.call(orphan)
    site.start_agent()
    after = snapshot(site)
    assert after["rows"] == ["acme/cut:ready", "acme/kept:ready"]
    assert after["ports"] == sorted([kept.port, cut.port])
    assert after["veths"] == sorted([kept.port, cut.port])
    assert sorted(after["containers"]) == sorted([kept.id, cut.id])
    pid = container_pid(site, cut.id)
    assert "inet 10.1.0.3/24" in inside(pid, "ip", "-o", "addr", "show", "eth0")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
async def test_sigkill_during_create_then_restart_loses_nothing(clean: Site, delay: float) -> None:
    """Kill the agent at some moment of a create: after restart, the node either exists whole
    (container, wire, port, directory record, one row) or not at all."""
    site = clean
    pid = running_pid(site.agent)

    async def create() -> None:
        async with site.client(site.acme) as agent:
            await agent.create(name="racer", tenant="acme", network="web")

    task = asyncio.create_task(create())
    await asyncio.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    await asyncio.gather(task, return_exceptions=True)
    while running_pid(site.agent) is not None:
        await asyncio.sleep(0.01)
    site.start_agent()
    after = snapshot(site)
    if after["rows"]:
        async with site.client() as agent:
            node = await agent.show("acme", "racer")
        assert after == {
            "containers": [node.id],
            "ports": [node.port],
            "veths": [node.port],
            "rows": ["acme/racer:ready"],
            "directory": [f"acme/racer@{node.locator}"],
        }
        assert node.state == "running"
    else:
        assert after == EMPTY


def test_cli_tables_and_json(clean: Site) -> None:
    site = clean
    env = {**os.environ, "NVI_AGENT": str(site.config.socket), "NVI_TOKEN": site.acme.token}

    def nvi(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nvi", *args], capture_output=True, text=True, env=env, cwd=REPO
        )

    created = nvi("node", "create", "acme/cli1", "--network", "web", "-o", "json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)[0]["ip"] == "10.1.0.2"
    table = nvi("node", "list")
    assert "cli1" in table.stdout and "10.1.0.2" in table.stdout
    status = nvi("agent", "status", "-o", "json")
    assert json.loads(status.stdout)[0]["nodes"] == 1
    bad = nvi("node", "create", "acme/cli2", "--network", "nope")
    assert (
        bad.returncode == 1 and bad.stderr.startswith("nvi: ") and len(bad.stderr.splitlines()) == 1
    )
    assert nvi("node", "delete", "cli1", "--tenant", "acme").returncode == 0
    again = nvi("node", "delete", "acme/cli1", "-o", "json")
    assert again.returncode == 0 and json.loads(again.stdout)[0]["result"] == "already gone"
