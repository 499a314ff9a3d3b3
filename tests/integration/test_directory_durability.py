"""Failures of real processes: the service killed with SIGKILL mid-write, an etcd member killed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from federation.client import DirectoryClient
from federation.config import StorageConfig
from federation.errors import DirectoryError
from nvi.core.model import Node
from nvi.core.tls import client_context

pytest_plugins = ["integration.directory_fixtures"]


async def test_sigkill_mid_writes_loses_no_acknowledged_node(service_process) -> None:  # noqa: ANN001
    process, credentials = service_process
    process.start()
    acknowledged: list[Node] = []

    async def writer(client: DirectoryClient, worker: int) -> None:
        for i in range(10_000):
            acknowledged.append(
                await client.create_node(
                    "acme",
                    f"w{worker}-{i}",
                    kind="container",
                    network="net",
                    locator=f"198.{18 + worker}.{i // 250}.{i % 250 + 1}",
                )
            )

    async with DirectoryClient(process.url, credentials.admin, ca_file=process.ca_file) as admin:
        await admin.create_tenant("acme")
        await admin.create_network("acme", "net", "10.0.0.0/16")
        server = await admin.enroll_server("s1", ["198.16.0.0/12"])
        tenant = await admin.create_token("acme")
        publisher = DirectoryClient(
            process.url, server.token, tenant_token=tenant.token, ca_file=process.ca_file
        )
        writers = [asyncio.create_task(writer(publisher, worker)) for worker in range(4)]
        while len(acknowledged) < 100:
            await asyncio.sleep(0.02)
        process.stop(signal.SIGKILL)
        results = await asyncio.gather(*writers, return_exceptions=True)
        await publisher.close()
        assert all(isinstance(result, DirectoryError) for result in results)

        process.start()
        stored = {node.name: node for node in await admin.list_nodes("acme")}
        assert len(acknowledged) >= 100
        assert all(stored.get(node.name) == node for node in acknowledged)
        for node in stored.values():  # every stored node is complete: all its indexes exist
            assert (await admin.locate(node.locator)).node == node
            resolved = await admin.resolve(node.ip, source=node.id)
            assert resolved.destination == node


async def test_etcd_directory_keeps_answering_with_one_member_killed(tmp_path: Path) -> None:
    from nvi.lab.directories import (
        Credentials,
        ServiceProcess,
        start_etcd_cluster,
        stop,
        write_config,
    )

    cluster = start_etcd_cluster(tmp_path / "etcd")
    credentials = Credentials()
    storage = StorageConfig(backend="etcd", endpoints=cluster.endpoints)
    port = write_config(tmp_path / "directory.toml", credentials, storage)
    process = ServiceProcess(tmp_path / "directory.toml", port)
    try:
        process.start()
        async with DirectoryClient(
            process.url, credentials.admin, ca_file=process.ca_file
        ) as admin:
            await admin.create_tenant("acme")
            await admin.create_network("acme", "net", "10.0.0.0/24")
            server = await admin.enroll_server("s1", ["192.0.2.0/24"])
            tenant = await admin.create_token("acme")
            publisher = DirectoryClient(
                process.url, server.token, tenant_token=tenant.token, ca_file=process.ca_file
            )
            first = await publisher.create_node(
                "acme", "a", kind="vm", network="net", locator="192.0.2.1"
            )
            stop(cluster.members[0].process, signal.SIGKILL)  # the member the service uses
            assert (await admin.locate("192.0.2.1")).node == first
            second = await publisher.create_node(
                "acme", "b", kind="vm", network="net", locator="192.0.2.2"
            )
            await publisher.close()
            resolved = await admin.resolve(second.ip, source=first.id)
            assert resolved.destination == second and resolved.allowed
    finally:
        process.stop()
        cluster.stop_all()


def nvi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from nvi.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_operator_cli_initialises_serves_and_creates_a_tenant(tmp_path: Path) -> None:
    from nvi.lab.directories import ServiceProcess, free_port

    port = free_port()
    init = nvi("directory", "init", str(tmp_path / "dir"), "--port", str(port), "-o", "json")
    assert init.returncode == 0, init.stderr
    files = json.loads(init.stdout)[0]
    assert oct(Path(files["admin token"]).stat().st_mode & 0o777) == "0o600"
    process = ServiceProcess(Path(files["config"]), port)
    process.start()
    try:
        env = {
            "NVI_DIRECTORY": files["url"],
            "NVI_TOKEN_FILE": files["admin token"],
            "NVI_CA_FILE": files["ca file"],
            "PATH": "/usr/bin:/bin",
        }
        created = nvi("directory", "tenant", "create", "acme", "-o", "json", env=env)
        assert created.returncode == 0, created.stderr
        tenant_token = json.loads(created.stdout)[0]["token"]
        listed = nvi("directory", "nodes", "acme", "-o", "json", "--token", tenant_token, env=env)
        assert (listed.returncode, json.loads(listed.stdout)) == (0, [])
        again = nvi("directory", "tenant", "create", "acme", env=env)
        assert again.returncode == 1
        assert again.stderr.strip() == "nvi: tenant 'acme' exists"
        refused = nvi("directory", "init", str(tmp_path / "dir"))
        assert refused.returncode == 1 and "not overwriting" in refused.stderr
    finally:
        process.stop()


def test_tenant_cli_networks_and_links(tmp_path: Path) -> None:
    from nvi.lab.directories import ServiceProcess, free_port

    port = free_port()
    init = nvi("directory", "init", str(tmp_path / "dir"), "--port", str(port), "-o", "json")
    files = json.loads(init.stdout)[0]
    process = ServiceProcess(Path(files["config"]), port)
    process.start()
    try:
        admin = {
            "NVI_DIRECTORY": files["url"],
            "NVI_TOKEN_FILE": files["admin token"],
            "NVI_CA_FILE": files["ca file"],
        }
        tokens = {
            name: json.loads(
                nvi("directory", "tenant", "create", name, "-o", "json", env=admin).stdout
            )[0]["token"]
            for name in ("acme", "rival")
        }

        def as_tenant(tenant: str, *args: str) -> subprocess.CompletedProcess:
            env = {
                "NVI_DIRECTORY": files["url"],
                "NVI_TOKEN": tokens[tenant],
                "NVI_CA_FILE": files["ca file"],
            }
            return nvi("directory", *args, env=env)

        for network, cidr in (("web", "10.0.0.0/24"), ("db", "10.0.1.0/24")):
            made = as_tenant("acme", "network", "create", "acme", network, cidr, "-o", "json")
            assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)[0]["gateway"] == "10.0.1.1"
        same = as_tenant("rival", "network", "create", "rival", "web", "10.0.0.0/24")
        assert same.returncode == 0, "another tenant may use the same CIDR"
        listed = as_tenant("acme", "network", "list", "acme", "-o", "json")
        assert sorted(n["name"] for n in json.loads(listed.stdout)) == ["db", "web"]

        linked = as_tenant("acme", "link", "create", "acme", "network", "web", "db", "-o", "json")
        assert linked.returncode == 0, linked.stderr
        link_id = json.loads(linked.stdout)[0]["id"]
        links = as_tenant("acme", "link", "list", "acme", "-o", "json")
        assert [link["id"] for link in json.loads(links.stdout)] == [link_id]

        for refused in (
            as_tenant("rival", "link", "list", "acme"),  # another tenant's token
            as_tenant("acme", "network", "create", "acme", "bad", "10.0.0.0/33"),
            as_tenant("acme", "link", "create", "acme", "network", "web", "nowhere"),
        ):
            assert refused.returncode == 1, refused.stdout
            assert refused.stderr.startswith("nvi: ") and len(refused.stderr.splitlines()) == 1
        assert len(json.loads(as_tenant("acme", "link", "list", "acme", "-o", "json").stdout)) == 1

        assert as_tenant("acme", "link", "delete", "acme", link_id).returncode == 0
        assert json.loads(as_tenant("acme", "link", "list", "acme", "-o", "json").stdout) == []
        assert as_tenant("acme", "network", "delete", "acme", "db").returncode == 0
        listed = as_tenant("acme", "network", "list", "acme", "-o", "json")
        assert [n["name"] for n in json.loads(listed.stdout)] == ["web"]
    finally:
        process.stop()


async def attach(files: dict[str, str], server: str, address: str) -> None:
    """Tenant acme's node web on server s1 (its credential `server`), given `address`."""
    url, ca_file = files["url"], Path(files["ca file"])
    admin_token = Path(files["admin token"]).read_text().strip()
    async with DirectoryClient(url, admin_token, ca_file=ca_file) as admin:
        await admin.create_tenant("acme")
        await admin.create_network("acme", "front", "10.0.0.0/24")
        token = (await admin.create_token("acme")).token
    async with DirectoryClient(url, server, tenant_token=token, ca_file=ca_file) as s1:
        await s1.create_node("acme", "web", kind="vm", network="front", locator="198.51.100.65")
        await s1.attach_floating("acme", "web", address)


def test_operator_cli_enrolls_servers_and_reads_the_audit_log(tmp_path: Path) -> None:
    from nvi.lab.directories import ServiceProcess, free_port

    port = free_port()
    init = nvi("directory", "init", str(tmp_path / "dir"), "--port", str(port), "-o", "json")
    files = json.loads(init.stdout)[0]
    process = ServiceProcess(Path(files["config"]), port)
    process.start()
    try:
        env = {
            "NVI_DIRECTORY": files["url"],
            "NVI_TOKEN_FILE": files["admin token"],
            "NVI_CA_FILE": files["ca file"],
        }
        credential = tmp_path / "s1.token"
        enrolled = nvi(
            "directory", "server", "enroll", "s1", "--pool", "198.51.100.64/27",
            "--pool", "198.51.100.200-198.51.100.210", "--floating", "203.0.113.0/28",
            "--credential-file", str(credential), "-o", "json", env=env,
        )  # fmt: skip
        assert enrolled.returncode == 0, enrolled.stderr
        assert json.loads(enrolled.stdout)[0]["pools"] == [
            "198.51.100.64-198.51.100.95",
            "198.51.100.200-198.51.100.210",
        ]
        assert json.loads(enrolled.stdout)[0]["floating"] == ["203.0.113.0-203.0.113.15"]
        assert oct(credential.stat().st_mode & 0o777) == "0o600"
        whoami = f"{files['url']}/v1/whoami"
        request = urllib.request.Request(
            whoami, headers={"Authorization": f"Bearer {credential.read_text().strip()}"}
        )
        tls = client_context(process.ca_file)
        with urllib.request.urlopen(request, timeout=5, context=tls) as reply:
            assert json.loads(reply.read())["server"] == "s1"
        overlapping = nvi(
            "directory", "server", "enroll", "s2", "--pool", "198.51.100.90/31", env=env
        )
        assert overlapping.returncode == 1
        assert overlapping.stderr.strip() == (
            "nvi: pool 198.51.100.90-198.51.100.91 overlaps pool "
            "198.51.100.64-198.51.100.95 of server 's1'"
        )
        listed = nvi("directory", "server", "list", "-o", "json", env=env)
        assert [s["name"] for s in json.loads(listed.stdout)] == ["s1"]
        shown = nvi("directory", "server", "show", "s1", env=env)
        assert shown.returncode == 0 and "198.51.100.64-198.51.100.95" in shown.stdout
        assert "203.0.113.0-203.0.113.15" in shown.stdout

        asyncio.run(attach(files, credential.read_text().strip(), "203.0.113.5"))
        attached = nvi("directory", "floating", "list", "-o", "json", env=env)
        assert json.loads(attached.stdout) == [
            {"address": "203.0.113.5", "tenant": "acme", "node": "web", "server": "s1"}
        ]
        table = nvi("directory", "floating", "list", "--server", "s1", env=env)
        assert table.returncode == 0 and "203.0.113.5" in table.stdout and "web" in table.stdout
        other = nvi("directory", "floating", "list", "--server", "s2", "-o", "json", env=env)
        assert json.loads(other.stdout) == []
        detached = nvi("directory", "floating", "detach", "acme", "web", env=env)
        assert detached.returncode == 0 and "detached" in detached.stdout, detached.stderr
        assert json.loads(nvi("directory", "floating", "list", "-o", "json", env=env).stdout) == []
        missing = nvi("directory", "floating", "detach", "acme", "ghost", env=env)
        assert (missing.returncode, missing.stderr.strip()) == (
            1,
            "nvi: tenant 'acme' has no node 'ghost'",
        )
        assert nvi("directory", "server", "revoke", "s1", env=env).returncode == 0
        missing = nvi("directory", "server", "show", "s1", env=env)
        assert (missing.returncode, missing.stderr.strip()) == (1, "nvi: no server 's1'")

        audit = nvi("directory", "audit", "--config", files["config"], "-o", "json")
        assert audit.returncode == 0, audit.stderr
        assert [(e["operation"], e["status"]) for e in json.loads(audit.stdout)] == [
            ("enroll_server", 201),
            ("enroll_server", 409),
            ("create_tenant", 201),
            ("create_network", 201),
            ("create_token", 201),
            ("create_node", 201),
            ("attach_floating", 200),
            ("detach_floating", 204),
            ("detach_floating", 404),
            ("revoke_server", 200),
        ]
        refused = nvi("directory", "audit", "--config", files["config"], "--refused")
        assert refused.returncode == 0 and "409" in refused.stdout and "admin" in refused.stdout
    finally:
        process.stop()
