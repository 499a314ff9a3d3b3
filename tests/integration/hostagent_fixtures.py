"""Fixtures for the host agent tests: a Docker engine of the tests' own (session), and a
one-server lab running the real directory and the real agent in the server's namespace, the
agent serving its Unix socket and plain HTTP on the namespace's loopback.

Everything is tagged with the test run's id (`nvi.test=<id>` labels, `nvi-` namespaces, a
`t<7 hex>` lab) and removed by it; nothing else on the machine is touched.
Test modules use them with `pytest_plugins = ["tests.integration.hostagent_fixtures"]`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiodocker
import pytest
from pyroute2 import netns as pyroute_netns

from federation.client import DirectoryClient
from hostagent.client import AgentClient
from hostagent.config import AgentConfig, TcpConfig
from hostagent.containers import ContainerDriver
from nvi.core.config import write_secret
from nvi.core.ports import vsctl_rows
from nvi.core.tls import ensure_ca, ensure_certificate
from nvi.core.tokens import new_token, token_hash
from nvi.lab import links
from nvi.lab.agents import (
    SERVER_TOKEN,
    agent_config,
    agent_daemon,
    docker_url,
    dockerd_argv,
    write_config,
)
from nvi.lab.net import LabNet
from nvi.lab.nodes import with_directory
from nvi.lab.ovs import OvsInstance
from nvi.lab.process import Daemon, ensure_running, running_pid, terminate
from nvi.lab.spec import Lab, Server, load_lab
from tests.conftest import EXAMPLE_LAB, REPO

T = TypeVar("T")
TEST_ID = uuid.uuid4().hex[:7]
LABELS = {"nvi.test": TEST_ID}
DIRECTORY_PORT = 7480
AGENT_PORT = 7490
DIRECTORY_URL = f"https://127.0.0.1:{DIRECTORY_PORT}"
NETWORK_CIDR = "10.1.0.0/24"
FLOATING_POOL = "203.0.113.10-203.0.113.11"  # the server's floating pool (two: one runs out)


def in_namespace(ns: str | None, work: Callable[[], T]) -> T:
    """Run `work` on a thread of its own, in namespace `ns` if given: its sockets stay there
    and the processes it starts are born there."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            if ns is not None:
                pyroute_netns.setns(ns, flags=0)
            outcome["value"] = work()
        except BaseException as error:  # handed to the calling thread
            outcome["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def in_netns(ns: str | None, factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end (so also from inside a test's event loop), in namespace
    `ns` if given."""
    return in_namespace(ns, lambda: asyncio.run(factory()))


@dataclass
class DockerEngine:
    url: str

    def call(self, use: Callable[[aiodocker.Docker], Awaitable[T]]) -> T:
        async def go() -> T:
            async with aiodocker.Docker(url=self.url) as docker:
                return await use(docker)

        return in_netns(None, go)

    def containers(self, label: str) -> list[dict]:
        """Every container with the label `key=value` (running or not)."""

        async def ours(docker: aiodocker.Docker) -> list[dict]:
            found = await docker.containers.list(all=True, filters={"label": [label]})
            return [{"id": c.id, "labels": c["Labels"], "state": c["State"]} for c in found]

        return self.call(ours)

    def test_containers(self) -> list[dict]:
        """Every container made during this test run."""
        return self.containers(f"nvi.test={TEST_ID}")

    def remove_test_containers(self) -> None:
        async def remove(docker: aiodocker.Docker) -> None:
            for container in await docker.containers.list(
                all=True, filters={"label": [f"nvi.test={TEST_ID}"]}
            ):
                await container.delete(force=True)

        self.call(remove)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A dockerd of the tests' own (root namespaces: it needs the cgroup mount), with its own
    short-pathed socket and state under /tmp; stopped by its PID."""
    root = Path(tempfile.mkdtemp(prefix="nvi-dk", dir="/tmp"))
    with (root / "dockerd.log").open("ab") as log:
        process = subprocess.Popen(
            dockerd_argv(root / "data", root / "exec"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        engine = DockerEngine(docker_url(root / "exec"))
        engine.call(lambda docker: ContainerDriver(engine.url, "", {}).wait_ready(30))
        yield engine
        engine.remove_test_containers()
    finally:
        terminate(process.pid, timeout=20)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Tenant:
    name: str
    token: str


@dataclass
class Site:
    """One lab server with its directory and agent, and two tenants with the same network."""

    net: LabNet
    server: Server
    config: AgentConfig
    agent: Daemon
    directory: Daemon
    docker: DockerEngine
    admin_token: str
    operator_token: str
    acme: Tenant
    rival: Tenant

    @property
    def ns(self) -> str:
        return self.net.netns(self.server.name)

    @property
    def ovs(self) -> OvsInstance:
        return self.net.ovs(self.server)

    def client(self, tenant: Tenant | None = None, **kwargs: Any) -> AgentClient:
        return AgentClient(
            str(self.config.socket), tenant_token=tenant.token if tenant else None, **kwargs
        )

    @property
    def url(self) -> str:
        """The agent's TCP endpoint, reachable inside the server's namespace."""
        return f"https://127.0.0.1:{AGENT_PORT}"

    def remote(self, token: str | None = None, **kwargs: Any) -> AgentClient:
        """A client over TCP with a tenant's token (or an operator's: operator_token=...);
        use it inside `over_tcp`. The site's one CA signed the agent's certificate too."""
        ca_file = self.config.directory.ca_file
        return AgentClient(self.url, tenant_token=token, ca_file=ca_file, **kwargs)

    def over_tcp(self, factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine where the agent's TCP endpoint is: in the server's namespace."""
        return in_netns(self.ns, factory)

    def directory_call(self, token: str, use: Callable[[DirectoryClient], Awaitable[T]]) -> T:
        async def go() -> T:
            ca_file = self.config.directory.ca_file
            async with DirectoryClient(DIRECTORY_URL, token, ca_file=ca_file) as client:
                return await use(client)

        return in_netns(self.ns, go)

    def start_agent(self) -> int:
        pid, _ = ensure_running(self.agent, timeout=60)
        return pid

    def ports(self) -> dict[str, dict[str, str]]:
        """Interfaces on the bridge with their external_ids."""
        answer = self.ovs.vsctl("--format=json", "--columns=name,external_ids", "list", "interface")
        return {
            row["name"]: row["external_ids"]
            for row in vsctl_rows(answer)
            if row["name"] not in ("uplink", "br-int")
        }


def setup_vm() -> None:
    """Install and start the VM stack and build the guest (idempotent; a fresh CI machine)."""
    setup = subprocess.run([REPO / "scripts" / "setup-vm"], capture_output=True, text=True)
    assert setup.returncode == 0, setup.stdout + setup.stderr


def example_lab(root: Path) -> LabNet:
    """The example lab (3 servers, 2 clouds, directory) under a test name `t<7 hex>`."""
    spec = load_lab(EXAMPLE_LAB).model_copy(
        update={"name": "t" + uuid.uuid4().hex[:7], "portal": None}
    )
    return LabNet(spec, root=root)


def lab_tenants(net: LabNet, names: tuple[str, ...], cidr: str = "10.0.0.0/24") -> dict[str, str]:
    """Tenants in a lab's directory, each with a network `net` of `cidr` and an agent token."""

    async def make(client: DirectoryClient) -> dict[str, str]:
        tokens = {}
        for tenant in names:
            await client.create_tenant(tenant)
            await client.create_network(tenant, "net", cidr)
            tokens[tenant] = (await client.create_token(tenant, "agents")).token
        return tokens

    return with_directory(net, make)


def type_on_console(uri: str, domain: str, log: Path, line: str, expect: str) -> None:
    """Type a line on a VM's serial console (its pty, as `virsh console` does) and wait for
    `expect` in the console log. QEMU notices a newly opened pty only on its next
    once-a-second poll, and reads nothing from it before: so wait, and keep it open."""
    tty = subprocess.run(
        ["virsh", "-c", uri, "ttyconsole", domain], capture_output=True, text=True, check=True
    ).stdout.strip()
    fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
    try:
        time.sleep(1.2)
        os.write(fd, line.encode() + b"\n")
        deadline = time.monotonic() + 20
        while expect not in (content := log.read_text(errors="replace") if log.exists() else ""):
            if time.monotonic() > deadline:
                pytest.fail(f"{expect!r} not on the console within 20 s:\n{content}")
            time.sleep(0.2)
    finally:
        os.close(fd)


def one_server_lab(name: str) -> Lab:
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
                }
            ],
        }
    )


def directory_daemon(ns: str, rundir: Path, admin_token: str) -> Daemon:
    """The directory on the server's loopback, with a certificate from a CA in its folder
    (FOLDER/ca.crt)."""
    folder = rundir / "directory"
    ca, _ = ensure_ca(folder)
    ensure_certificate(ca, folder, "directory", ["127.0.0.1"])
    config = folder / "directory.toml"
    config.write_text(
        f'host = "127.0.0.1"\nport = {DIRECTORY_PORT}\n\n[storage]\nbackend = "sqlite"\n'
        'path = "directory.db"\n\n[tls]\ncert_file = "directory.crt"\nkey_file = "directory.key"\n'
        f'\n[auth]\nadmin_token_sha256 = ["{token_hash(admin_token)}"]\n'
    )
    return Daemon(
        name="directory",
        netns=ns,
        argv=(sys.executable, "-m", "nvi", "directory", "serve", "--config", str(config)),
        rundir=rundir,
        # A check, not a path: `ensure_running` removes a ready path before starting, and this
        # one is the database, which a restart must keep. Callers wait for /v1/health.
        ready=(folder / "directory.db").exists,
    )


async def _set_up_tenants(admin_token: str, server: Server, ca_file: Path) -> dict[str, str]:
    """The tenants, and the server's credential (under the key "server"), as the directory's
    operator enrolls it."""
    deadline = time.monotonic() + 20
    async with DirectoryClient(DIRECTORY_URL, admin_token, ca_file=ca_file) as admin:
        while True:
            try:
                await admin.health()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        tokens = {}
        for tenant in ("acme", "rival"):
            await admin.create_tenant(tenant)
            await admin.create_network(tenant, "web", NETWORK_CIDR)
            tokens[tenant] = (await admin.create_token(tenant, "host agent tests")).token
        enrolled = await admin.enroll_server(server.name, [server.locators], [FLOATING_POOL])
        tokens["server"] = enrolled.token
    return tokens


@pytest.fixture(scope="module")
def site(docker_engine: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    net = LabNet(one_server_lab("t" + uuid.uuid4().hex[:7]), root=tmp_path_factory.mktemp("run"))
    server = net.lab.server("s1")
    try:
        net.up()
        ns, rundir = net.netns(server.name), net.rundir / server.name
        admin_token = new_token()
        directory = directory_daemon(ns, rundir, admin_token)
        ensure_running(directory, timeout=30)
        ca_file = rundir / "directory" / "ca.crt"
        tokens = in_netns(ns, lambda: _set_up_tenants(admin_token, server, ca_file))
        write_secret(rundir / SERVER_TOKEN, tokens["server"])
        operator_token = new_token()
        ca, _ = ensure_ca(ca_file.parent)  # the directory's: it signs the agent's certificate
        agent_tls, _ = ensure_certificate(ca, rundir, "agent", ["127.0.0.1"])
        tcp = TcpConfig(
            host="127.0.0.1",
            port=AGENT_PORT,
            token_sha256=[token_hash(operator_token)],
            cert_file=agent_tls.cert_file,
            key_file=agent_tls.key_file,
        )
        config = agent_config(
            server, net.ovs(server), DIRECTORY_URL, docker_engine.url, LABELS, ca_file=ca_file
        ).model_copy(update={"tcp": tcp, "floating": FLOATING_POOL})
        write_config(config, rundir)
        site = Site(
            net=net,
            server=server,
            config=config,
            agent=agent_daemon(config, ns, rundir),
            directory=directory,
            docker=docker_engine,
            admin_token=admin_token,
            operator_token=operator_token,
            acme=Tenant("acme", tokens["acme"]),
            rival=Tenant("rival", tokens["rival"]),
        )
        site.start_agent()
        yield site
        assert running_pid(site.agent) is not None, "the agent died during the tests"
        assert "stopping on" not in site.agent.log.read_text(), "the agent was stopped"
    finally:
        for log in sorted(net.rundir.glob("*/*.log")):  # shown by pytest when a test failed
            print(f"--- {log.name}:\n" + log.read_text(errors="replace")[-4000:])
        try:
            docker_engine.remove_test_containers()
        finally:
            net.down()


def snapshot(site: Site) -> dict[str, Any]:
    """Everything a node leaves on the server and in the directory."""

    async def records(client: Any) -> list[str]:
        nodes = [*await client.list_nodes("acme"), *await client.list_nodes("rival")]
        return sorted(f"{n.tenant}/{n.name}@{n.locator}" for n in nodes)

    async def floating(client: Any) -> list[str]:
        return sorted(f"{f.address}:{f.tenant}/{f.node}" for f in await client.list_floating())

    async def rows() -> list[str]:
        async with site.client() as agent:
            return sorted(f"{n.tenant}/{n.name}:{n.phase}" for n in await agent.list())

    veths = links.run_in(site.ns, ["ip", "-o", "link", "show", "type", "veth"]).stdout
    return {
        "containers": sorted(c["labels"]["nvi.node"] for c in site.docker.test_containers()),
        "ports": sorted(site.ports()),
        "veths": sorted(
            line.split(":")[1].split("@")[0].strip()
            for line in veths.splitlines()
            if line.split(":")[1].strip().startswith("nv")
        ),
        "rows": in_netns(None, rows),
        "directory": site.directory_call(site.admin_token, records),
        "floating": site.directory_call(site.admin_token, floating),
    }


EMPTY = {"containers": [], "ports": [], "veths": [], "rows": [], "directory": [], "floating": []}


async def delete_all(site: Site) -> None:
    async with site.client(site.acme) as acme, site.client(site.rival) as rival:
        for node in await acme.list():
            await (acme if node.tenant == "acme" else rival).delete(node.tenant, node.name)


@pytest.fixture
async def clean(site: Site) -> Site:
    """Each test starts and must end with no node; it asserts that the server is empty."""
    yield site
    await delete_all(site)
    assert snapshot(site) == EMPTY
