"""A node's ways in on a real lab server: published ports and floating addresses as the agent
records them (its state), writes them (the port's OVSDB external_ids, which the controller
reads) and, for floating addresses, publishes them (the directory); refusals that change
none of the three; a restarted agent leaving the same keys; a delete releasing the address.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from hostagent.errors import AgentError
from nvi.core.model import PublishedPort
from nvi.core.ports import FLOATING, PUBLISH
from nvi.lab.process import running_pid
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import AGENT_PORT, Site, snapshot

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

P = PublishedPort.parse


def nvi(site: Site, *args: str) -> subprocess.CompletedProcess:
    """The `nvi` command as the tenant acme, on this server's agent."""
    env = {**os.environ, "NVI_AGENT": str(site.config.socket), "NVI_TOKEN": site.acme.token}
    return subprocess.run(
        [sys.executable, "-m", "nvi", *args], capture_output=True, text=True, env=env, cwd=REPO
    )


def node_json(site: Site, *args: str) -> dict[str, Any]:
    done = nvi(site, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def everything(site: Site) -> dict[str, Any]:
    """The snapshot, with each port's keys and the directory's records in full."""

    async def records(client: Any) -> list[str]:
        return [n.model_dump_json() for n in await client.list_nodes("acme")]

    return {
        **snapshot(site),
        "keys": site.ports(),
        "records": site.directory_call(site.admin_token, records),
    }


async def refused(call: Any, status: int, code: str | None = None) -> None:
    with pytest.raises(AgentError) as error:
        await call
    assert error.value.status == status, error.value
    if code is not None:
        assert error.value.code == code, error.value


def test_published_ports_from_the_command_line_reach_the_port(clean: Site) -> None:
    site = clean
    created = node_json(
        site, "node", "create", "acme/web1", "-n", "web", "-p", "8080:80", "--publish", "53:53/udp"
    )
    assert created["published"] == [
        {"host_port": 8080, "node_port": 80, "protocol": "tcp"},
        {"host_port": 53, "node_port": 53, "protocol": "udp"},
    ]
    port = created["port"]
    assert site.ports()[port][PUBLISH] == "8080:80/tcp,53:53/udp"
    table = nvi(site, "node", "list")
    assert "8080:80/tcp," in table.stdout and "53:53/udp" in table.stdout, table.stdout

    node_json(site, "node", "publish", "acme/web1", "9090:90/tcp")
    assert site.ports()[port][PUBLISH] == "9090:90/tcp"
    cleared = node_json(site, "node", "publish", "acme/web1")
    assert cleared["published"] == [] and PUBLISH not in site.ports()[port], "the key is removed"

    bad = nvi(site, "node", "create", "acme/web2", "-n", "web", "-p", "80:80/sctp")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr
    assert "web2" not in nvi(site, "node", "list").stdout


async def test_a_stopped_node_gets_its_ports_when_it_starts(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(name="svc", tenant="acme", network="web", cpus=0.5)
        await agent.stop("acme", "svc")
        stopped = await agent.publish("acme", "svc", [P("8080:80")])
        assert stopped.published == [P("8080:80")] and node.port not in site.ports()
        await agent.start("acme", "svc")
    assert site.ports()[node.port][PUBLISH] == "8080:80/tcp"


async def test_a_host_port_in_use_is_refused_and_nothing_changes(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as acme, site.client(site.rival) as rival:
        await acme.create(
            name="a", tenant="acme", network="web", cpus=0.5, publish=[_json("8080:80")]
        )
        await acme.create(
            name="b", tenant="acme", network="web", cpus=0.5, publish=[_json("9090:90")]
        )
        before = everything(site)
        # another node's, even another tenant's; the agent's own API; the server's listener
        await refused(
            rival.create(
                name="c", tenant="rival", network="web", cpus=0.5, publish=[_json("8080:80")]
            ),
            409,
            "port_in_use",
        )
        await refused(acme.publish("acme", "b", [P("8080:81")]), 409, "port_in_use")
        await refused(acme.publish("acme", "b", [P(f"{AGENT_PORT}:80")]), 409, "port_in_use")
        with listener(site, 5353, "udp"):
            await refused(acme.publish("acme", "b", [P("5353:53/udp")]), 409, "port_in_use")
        assert everything(site) == before
        # a duplicate within one request is malformed, not a conflict
        status, body = await acme.raw(
            "PUT",
            "/v1/nodes/acme/b/publish",
            json={"publish": [_json("7000:70"), _json("7000:71")]},
        )
        assert status == 422 and "published twice" in json.dumps(body), body
        async with site.client(site.rival) as wrong_token:
            await refused(wrong_token.publish("acme", "b", []), 401)
        assert everything(site) == before
        # the same host port on the other protocol is another port
        moved = await acme.publish("acme", "b", [P("8080:80/udp")])
        assert site.ports()[moved.port][PUBLISH] == "8080:80/udp"


def _json(text: str) -> dict[str, Any]:
    return P(text).model_dump(mode="json")


class listener:
    """A socket bound on every address of the server's namespace, as a service of the
    server's own would be; a process of the test's, ended by its pid."""

    def __init__(self, site: Site, port: int, protocol: str) -> None:
        kind = "SOCK_STREAM" if protocol == "tcp" else "SOCK_DGRAM"
        listen = "s.listen();" if protocol == "tcp" else ""
        code = (
            f"import socket,time; s=socket.socket(socket.AF_INET, socket.{kind}); "
            f"s.bind(('0.0.0.0', {port})); {listen} print('up', flush=True); time.sleep(120)"
        )
        self.argv = ["ip", "netns", "exec", site.ns, sys.executable, "-c", code]

    def __enter__(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None and self.process.stdout.readline() == "up\n"

    def __exit__(self, *exc_info: object) -> None:
        self.process.kill()
        self.process.wait()


async def test_floating_attach_detach_writes_the_port_and_the_directory(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(name="a", tenant="acme", network="web", cpus=0.5)
        other = await agent.create(name="b", tenant="acme", network="web", cpus=0.5)
        third = await agent.create(name="c", tenant="acme", network="web", cpus=0.5)
        attached = await agent.attach_floating("acme", "a", None)
        assert attached.floating == "203.0.113.10"
        assert site.ports()[node.port][FLOATING] == "203.0.113.10"
        assert record(site, "a").floating == "203.0.113.10"
        status = await agent.status()
        assert (status.floating, status.floating_free) == ("203.0.113.10-203.0.113.11", 1)

        before = everything(site)
        await refused(agent.attach_floating("acme", "b", "203.0.113.10"), 409, "floating_taken")
        await refused(
            agent.attach_floating("acme", "b", "203.0.113.99"), 409, "floating_outside_pool"
        )
        await refused(agent.attach_floating("acme", "a", "203.0.113.11"), 409, "floating_attached")
        assert everything(site) == before
        assert (await agent.attach_floating("acme", "a", "203.0.113.10")).floating == (
            "203.0.113.10"
        ), "the same address again: unchanged"

        await agent.attach_floating("acme", "b", None)
        await refused(agent.attach_floating("acme", "c", None), 409, "floating_exhausted")
        assert FLOATING not in site.ports()[third.port]

        detached = await agent.detach_floating("acme", "b")
        assert detached.floating is None and FLOATING not in site.ports()[other.port]
        assert record(site, "b").floating is None
        assert (await agent.detach_floating("acme", "b")).floating is None  # idempotent
        assert (await agent.attach_floating("acme", "c", None)).floating == "203.0.113.11"


async def test_a_restarted_agent_leaves_the_same_keys_and_a_delete_releases(clean: Site) -> None:
    site = clean
    async with site.client(site.acme) as agent:
        node = await agent.create(
            name="a", tenant="acme", network="web", cpus=0.5, publish=[_json("80:80")]
        )
        await agent.attach_floating("acme", "a", None)
    keys = site.ports()[node.port]
    assert (keys[FLOATING], keys[PUBLISH]) == ("203.0.113.10", "80:80/tcp")

    os.kill(running_pid(site.agent), signal.SIGKILL)
    while running_pid(site.agent) is not None:
        await asyncio.sleep(0.01)
    # a port left with older keys (as by an agent before this one): reconciliation rewrites
    site.ovs.vsctl("remove", "interface", node.port, "external_ids", FLOATING)
    site.ovs.vsctl("set", "interface", node.port, 'external_ids:"nvi-publish"="1:1/udp"')
    site.start_agent()
    assert site.ports()[node.port] == keys

    async with site.client(site.acme) as agent:
        await agent.delete("acme", "a")
        again = await agent.create(name="b", tenant="acme", network="web", cpus=0.5)
        assert (await agent.attach_floating("acme", "b", None)).floating == "203.0.113.10"
    assert record(site, "b").floating == "203.0.113.10"
    assert snapshot(site)["floating"] == ["203.0.113.10:acme/b"]
    assert site.ports()[again.port][FLOATING] == "203.0.113.10"


def record(site: Site, name: str) -> Any:
    return site.directory_call(site.acme.token, lambda c: c.get_node("acme", name))
