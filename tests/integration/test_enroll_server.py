"""scripts/enroll-server, the operator's step for a new server (the Vagrant lab's triggers run
it on the directory VM), against a real `nvi directory serve`: it prints a credential the
directory takes for that server and no other, and re-enrolling a server whose credential was
lost revokes the old one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from federation.client import DirectoryClient
from federation.config import StorageConfig
from federation.errors import Unauthorized
from nvi.lab.directories import Credentials, ServiceProcess, write_config
from tests.conftest import REPO


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    """A directory whose state dir holds admin.token, as provision-directory leaves it."""
    credentials = Credentials()
    (tmp_path / "admin.token").write_text(credentials.admin + "\n")
    storage = StorageConfig(backend="sqlite", path=tmp_path / "directory.db")
    service = ServiceProcess(tmp_path / "directory.toml", 0)
    service.port = write_config(service.config_path, credentials, storage)
    service.start()
    yield service
    service.stop()


def enroll(
    service: ServiceProcess, name: str, pool: str, *floating: str
) -> subprocess.CompletedProcess:
    state = str(service.config_path.parent)
    return subprocess.run(
        [str(REPO / "scripts/enroll-server"), "--name", name, "--pool", pool]
        + [arg for each in floating for arg in ("--floating", each)]
        + ["--url", service.url, "--state-dir", state],
        env={**os.environ, "NVI_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def floating_pools(service: ServiceProcess, name: str) -> list[str]:
    admin = (service.config_path.parent / "admin.token").read_text().strip()
    async with DirectoryClient(service.url, admin, ca_file=service.ca_file) as client:
        return (await client.get_server(name)).floating


async def whoami(service: ServiceProcess, token: str) -> str | None:
    async with DirectoryClient(service.url, token, ca_file=service.ca_file) as client:
        try:
            identity = await client.whoami()
        except Unauthorized:
            return None
    return f"{identity.role} {identity.server}"


def test_enroll_server_prints_only_that_servers_credential(service: ServiceProcess) -> None:
    first = enroll(service, "s1", "10.250.1.0/24")
    assert first.returncode == 0, first.stderr
    s1 = first.stdout.strip()
    assert first.stdout == s1 + "\n", "stdout is the credential and nothing else"
    assert asyncio.run(whoami(service, s1)) == "server s1"
    second = enroll(service, "s2", "10.250.2.0/24", "203.0.113.0/28", "203.0.113.16/28")
    s2 = second.stdout.strip()
    assert second.returncode == 0 and s2 != s1
    assert asyncio.run(whoami(service, s2)) == "server s2"
    assert asyncio.run(floating_pools(service, "s2")) == [
        "203.0.113.0-203.0.113.15",
        "203.0.113.16-203.0.113.31",
    ]
    assert asyncio.run(floating_pools(service, "s1")) == []
    for overlapping in (
        enroll(service, "s3", "10.250.2.128/25"),
        enroll(service, "s3", "10.250.3.0/24", "203.0.113.8/29"),  # s2's floating pool
    ):
        assert overlapping.returncode != 0 and overlapping.stdout == ""
        assert "overlaps" in overlapping.stderr
    again = enroll(service, "s1", "10.250.1.0/24")  # s1's credential was lost
    assert again.returncode == 0, again.stderr
    assert "revoked" in again.stderr
    assert asyncio.run(whoami(service, s1)) is None
    assert asyncio.run(whoami(service, again.stdout.strip())) == "server s1"
