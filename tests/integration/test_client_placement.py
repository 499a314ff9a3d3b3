"""The user's client against real processes: a lab of two servers whose agents serve HTTPS on
their underlay addresses and announce themselves in the real directory's catalogue. The
`nvi` command runs where a user of that cloud would be (on the underlay, in the directory's
namespace), with a profile naming the directory and the tenant's token file.

Proves: `nvi node create` places by the catalogue (one server full: the other; `--cloud`
honoured; no room anywhere: a one-line error and nothing created), and `nvi node list`
shows the tenant's nodes across servers, a dead server's as `unknown`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from federation.client import DirectoryClient
from hostagent.config import Capacity, CatalogueConfig, TcpConfig
from nvi.core.config import write_secret
from nvi.core.tls import ensure_ca, ensure_certificate
from nvi.core.tokens import new_token, token_hash
from nvi.lab.agents import agent_daemon, lab_agent, write_config
from nvi.lab.net import LabNet
from nvi.lab.process import Daemon, ensure_running, running_pid, terminate
from nvi.lab.spec import Lab
from tests.conftest import REPO

pytestmark = pytest.mark.root

AGENT_PORT = 7490
# s1 has the most memory, so it is the first choice until it fills up; the two are labelled
# with different clouds (a label in their [catalogue] section) though they share a segment.
SERVERS = {"s1": ("east", 512), "s2": ("west", 384)}


@dataclass
class Cloud:
    net: LabNet
    env: dict[str, str]
    agents: dict[str, Daemon]

    def nvi(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`nvi ARGS` on the lab's underlay (the directory's namespace), as a user there."""
        ns = self.net.netns("directory")
        return subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "nvi", *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=REPO,
            timeout=300,
        )

    def json(self, *args: str) -> list[dict]:
        done = self.nvi(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        return answer if isinstance(answer, list) else [answer]

    def catalogue(self) -> dict[str, dict]:
        return {entry["server"]: entry for entry in self.json("server", "list")}


def lab(name: str) -> Lab:
    return Lab.model_validate(
        {
            "name": name,
            "clouds": [{"name": "east", "subnet": "198.51.100.0/24"}],
            "servers": [
                {
                    "name": "s1",
                    "cloud": "east",
                    "address": "198.51.100.11",
                    "locators": "198.51.100.64-198.51.100.71",
                },
                {
                    "name": "s2",
                    "cloud": "east",
                    "address": "198.51.100.12",
                    "locators": "198.51.100.72-198.51.100.79",
                },
            ],
            "directory": {"cloud": "east", "address": "198.51.100.2"},
        }
    )


def serve_tcp_and_announce(net: LabNet, name: str) -> Daemon:
    """Restart a lab server's agent with an HTTPS endpoint on its underlay address (the lab
    CA's certificate), a capacity of its own and a [catalogue] section."""
    server = net.lab.server(name)
    ns, ovs = net.netns(name), net.ovs(server)
    assert net.lab.directory is not None
    config, daemon = lab_agent(net.lab.name, server, ovs, net.lab.directory.url, ns, net.ca_file)
    pid = running_pid(daemon)
    if pid is not None:
        terminate(pid)
    ca, _ = ensure_ca(net.rundir)
    tls, _ = ensure_certificate(ca, ovs.rundir, "agent", [server.address])
    cloud, memory = SERVERS[name]
    config = config.model_copy(
        update={
            "tcp": TcpConfig(
                host=server.address,
                port=AGENT_PORT,
                token_sha256=[token_hash(new_token())],
                cert_file=tls.cert_file,
                key_file=tls.key_file,
            ),
            "catalogue": CatalogueConfig(
                agent_url=f"https://{server.address}:{AGENT_PORT}", cloud=cloud, lease_seconds=15
            ),
            "capacity": Capacity(cpus=4, memory_mib=memory),
        }
    )
    write_config(config, ovs.rundir)
    daemon = agent_daemon(config, ns, ovs.rundir)
    ensure_running(daemon, timeout=60)
    return daemon


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    root = tmp_path_factory.mktemp("client")
    net = LabNet(lab("t" + uuid.uuid4().hex[:7]), root=root / "labs")
    try:
        net.up()

        async def tenant(directory: DirectoryClient) -> str:
            await directory.create_tenant("acme")
            await directory.create_network("acme", "web", "10.1.0.0/24")
            return (await directory.create_token("acme", "client tests")).token

        write_secret(root / "acme.token", net.call_directory(tenant))
        assert net.lab.directory is not None
        (root / "config.toml").write_text(
            'default = "acme"\n[profiles.acme]\n'
            f'directory = ["{net.lab.directory.url}"]\n'
            f'ca_file = "{net.ca_file}"\ntoken_file = "acme.token"\n'
        )
        agents = {name: serve_tcp_and_announce(net, name) for name in SERVERS}
        env = {key: value for key, value in os.environ.items() if not key.startswith("NVI_")} | {
            "NVI_CONFIG": str(root / "config.toml"),
            "NVI_RUN_DIR": str(root / "run"),
        }
        user = Cloud(net, env, agents)
        deadline = time.monotonic() + 20
        while not all(entry["alive"] for entry in user.catalogue().values()) or len(
            user.catalogue()
        ) < len(SERVERS):
            assert time.monotonic() < deadline, user.catalogue()
            time.sleep(0.3)
        yield user
    finally:
        for log in sorted(net.rundir.glob("*/agent.log")):
            print(f"--- {log}:\n" + log.read_text(errors="replace")[-3000:])
        net.down()


def placed(cloud: Cloud, name: str, *args: str) -> dict:
    (node,) = cloud.json("node", "create", name, "--network", "web", *args)
    return node


def test_placement_by_the_catalogue(cloud: Cloud) -> None:
    first = placed(cloud, "big", "--memory", "400")  # only s1 has 400 MiB
    assert (first["server"], first["state"], first["ready"]) == ("s1", "running", True)
    assert "locator" not in first

    # s1 now has 112 MiB free, s2 384: a node of 128 MiB goes to s2 though s1 is first.
    assert placed(cloud, "second")["server"] == "s2"
    # --cloud east: s1, although s2 has more free memory
    assert placed(cloud, "third", "--cloud", "east", "--memory", "64")["server"] == "s1"
    assert placed(cloud, "fourth", "--cloud", "west", "--memory", "64")["server"] == "s2"
    assert placed(cloud, "fifth", "--server", "s1", "--memory", "16")["server"] == "s1"

    before = cloud.json("directory", "nodes", "acme")
    refused = cloud.nvi("node", "create", "huge", "--network", "web", "--memory", "1000")
    assert refused.returncode == 1
    assert refused.stderr == (
        "nvi: no live server in the catalogue has room for a container with 1 CPUs and 1000 MiB\n"
    )
    refused = cloud.nvi("node", "create", "late", "--network", "web", "--cloud", "east")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "no live server in cloud east has room" in refused.stderr
    assert cloud.json("directory", "nodes", "acme") == before
    listed = cloud.json("node", "list")
    assert sorted(node["name"] for node in listed) == ["big", "fifth", "fourth", "second", "third"]


def test_node_list_across_servers_shows_a_dead_servers_nodes_as_unknown(cloud: Cloud) -> None:
    for name in ("one", "two"):
        if name not in {node["name"] for node in cloud.json("node", "list")}:
            placed(cloud, name, "--server", {"one": "s1", "two": "s2"}[name], "--memory", "16")
    listed = {node["name"]: node for node in cloud.json("node", "list")}
    assert (listed["one"]["server"], listed["one"]["state"]) == ("s1", "running")
    assert (listed["two"]["server"], listed["two"]["state"]) == ("s2", "running")
    assert all("locator" not in node for node in listed.values())

    agent = cloud.agents["s2"]
    pid = running_pid(agent)
    assert pid is not None
    terminate(pid)
    try:
        shown = {node["name"]: node for node in cloud.json("node", "list")}
        assert set(shown) == set(listed)  # nothing hidden
        on_s2 = [node for node in shown.values() if node["server"] == "s2"]
        assert on_s2 and all(node["state"] == "unknown" for node in on_s2)
        assert all(node["ready"] is False for node in on_s2)
        on_s1 = [node for node in shown.values() if node["server"] == "s1"]
        assert on_s1 and all(node["state"] == "running" for node in on_s1)
        table = cloud.nvi("node", "list")
        assert table.returncode == 0 and "unknown" in table.stdout
        # the node itself, asked by name, says the same
        (two,) = cloud.json("node", "show", "two")
        assert (two["server"], two["state"]) == ("s2", "unknown")
    finally:
        ensure_running(agent, timeout=60)
    deleted = cloud.nvi("node", "delete", "two")
    assert deleted.returncode == 0, deleted.stderr
    assert "two" not in {node["name"] for node in cloud.json("node", "list")}
