"""A lab file that declares tenants and nodes comes up populated, through the host agents."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hostagent.client import AgentClient
from nvi.lab import links
from nvi.lab.agents import docker_url, lab_docker_root
from nvi.lab.net import LabNet
from nvi.lab.spec import load_lab
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import DockerEngine

pytestmark = pytest.mark.root

POPULATED = REPO / "examples" / "labs" / "populated.toml"


def nvi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nvi", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )


def test_declared_nodes_are_created_once_and_reach_each_other(tmp_path: Path) -> None:
    name = "t" + uuid.uuid4().hex[:7]
    lab_file = tmp_path / "lab.toml"
    lab_file.write_text(POPULATED.read_text().replace('name = "pop"', f'name = "{name}"'))
    env = {**os.environ, "NVI_RUN_DIR": str(tmp_path / "run")}
    net = LabNet(load_lab(lab_file), root=tmp_path / "run" / "labs")
    try:
        first = nvi("lab", "up", str(lab_file), env=env)
        assert first.returncode == 0, first.stderr
        for created in (
            "created tenant red",
            "created network blue/net (10.0.0.0/24)",
            "created container red/web on s1 (10.0.0.10)",
            "created container blue/db on s3 (10.0.0.20)",
        ):
            assert created in first.stdout, first.stdout
        again = nvi("lab", "up", str(lab_file), "-o", "json", env=env)
        assert again.returncode == 0 and '"changes": []' in again.stdout, again.stdout

        engine = DockerEngine(docker_url(lab_docker_root(name) / "exec"))

        def container_pid(server: str, tenant: str, node: str) -> int:
            token = (net.rundir / "tenants" / f"{tenant}.token").read_text().strip()

            async def show() -> str:
                async with AgentClient(
                    str(net.rundir / server / "agent.sock"), tenant_token=token
                ) as agent:
                    return (await agent.show(tenant, node)).id

            node_id = asyncio.run(show())
            return engine.call(lambda d: _pid(d, node_id))

        def pings(pid: int, ip: str) -> bool:
            argv = ["nsenter", "-t", str(pid), "-n", "ping", "-c", "3", "-W", "1", "-w", "4", ip]
            return subprocess.run(argv, capture_output=True).returncode == 0

        red_web, blue_web = container_pid("s1", "red", "web"), container_pid("s2", "blue", "web")
        assert pings(red_web, "10.0.0.20"), "red web (s1) -> red db (s3), across the router"
        assert pings(blue_web, "10.0.0.20"), "blue web (s2) -> blue db (s3)"
        assert not pings(red_web, "10.0.0.30"), "nothing else answers in red's network"

        # s3 leaves the lab (with the nodes the file placed on it): its agent drains it first.
        smaller = tmp_path / "smaller.toml"
        smaller.write_text(_without_server(lab_file.read_text(), "s3"))
        shrink = nvi("lab", "up", str(smaller), env=env)
        assert shrink.returncode == 0, shrink.stderr
        for change in ("drained container red/db", "drained container blue/db"):
            assert change in shrink.stdout, shrink.stdout
        admin = {**env, "NVI_TOKEN": net.admin_token()}
        for tenant in ("red", "blue"):
            listed = nvi(
                "lab",
                "exec",
                str(smaller),
                "s1",
                "--",
                sys.executable,
                "-m",
                "nvi",
                "directory",
                "nodes",
                tenant,
                "--directory",
                "https://198.51.100.2:7480",
                "--ca-file",
                str(net.ca_file),
                "-o",
                "json",
                env=admin,
            )
            assert listed.returncode == 0, listed.stderr
            assert '"db"' not in listed.stdout and '"web"' in listed.stdout, listed.stdout
        assert len(engine.containers(f"nvi.lab={name}")) == 2, "only s1's and s2's containers"
    finally:
        down = nvi("lab", "down", str(lab_file), env=env)
    assert down.returncode == 0, down.stderr
    assert [ns for ns in links.list_netns() if ns.startswith(net.prefix)] == []
    assert not lab_docker_root(name).exists()


async def _pid(docker, node_id: str) -> int:  # noqa: ANN001 - aiodocker.Docker
    return (await docker.containers.container(f"nvi-{node_id}").show())["State"]["Pid"]


def _without_server(lab_text: str, server: str) -> str:
    """The lab file's text without one [[servers]] entry and the [[nodes]] placed on it."""
    blocks = lab_text.split("\n\n")
    return "\n\n".join(
        block
        for block in blocks
        if f'name = "{server}"' not in block and f'server = "{server}"' not in block
    )
