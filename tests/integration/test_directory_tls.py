"""The directory speaks HTTPS only: clients verify its certificate, a wrong CA is one line
naming the URL, plain HTTP gets nowhere, and `nvi directory init` makes what it needs."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from federation.client import DirectoryClient
from federation.errors import Unavailable
from nvi.core.errors import NviError
from nvi.core.tls import ensure_ca
from nvi.lab.directories import Credentials, ServiceProcess

pytest_plugins = ["integration.directory_fixtures"]


def nvi(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from nvi.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **env},
        timeout=60,
    )


@pytest.fixture
def running(service_process: tuple[ServiceProcess, Credentials]) -> tuple[ServiceProcess, str]:
    process, credentials = service_process
    process.start()
    return process, credentials.admin


def test_the_cli_verifies_with_its_ca_file(running: tuple[ServiceProcess, str]) -> None:
    process, admin = running
    env = {"NVI_DIRECTORY": process.url, "NVI_TOKEN": admin}
    listed = nvi(
        "directory",
        "tenant",
        "list",
        "-o",
        "json",
        env={**env, "NVI_CA_FILE": str(process.ca_file)},
    )
    assert (listed.returncode, json.loads(listed.stdout or "null")) == (0, []), listed.stderr
    flag = nvi("directory", "health", "--ca-file", str(process.ca_file), env=env)
    assert flag.returncode == 0, flag.stderr


@pytest.mark.parametrize("ca", ["another CA", "system trust"])
def test_a_wrong_ca_is_one_line_naming_the_url(
    running: tuple[ServiceProcess, str], tmp_path: Path, ca: str
) -> None:
    process, admin = running
    env = {"NVI_DIRECTORY": process.url, "NVI_TOKEN": admin}
    if ca == "another CA":
        env["NVI_CA_FILE"] = str(ensure_ca(tmp_path / "other")[0].cert_file)
    refused = nvi("directory", "tenant", "list", env=env)
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        f"nvi: directory at {process.url}: certificate does not verify "
        "(unable to get local issuer certificate): pass its CA with --ca-file\n"
    )


async def test_the_client_raises_on_a_wrong_ca(
    running: tuple[ServiceProcess, str], tmp_path: Path
) -> None:
    process, admin = running
    other = ensure_ca(tmp_path / "other")[0].cert_file
    async with DirectoryClient(process.url, admin, ca_file=other) as client:
        with pytest.raises(Unavailable, match=rf"^directory at {process.url}: certificate does"):
            await client.list_tenants()
    async with DirectoryClient(process.url, admin, ca_file=process.ca_file) as client:
        assert await client.list_tenants() == []


async def test_plain_http_gets_nowhere(running: tuple[ServiceProcess, str]) -> None:
    process, admin = running
    plain = process.url.replace("https://", "http://")
    with pytest.raises(NviError, match="speaks only https://"):
        DirectoryClient(plain, admin)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain + "/v1/health") as reply:
                await reply.read()


def test_init_makes_a_ca_and_a_certificate_for_the_host(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    init = nvi(
        "directory",
        "init",
        str(folder),
        "--host",
        "0.0.0.0",
        "--cert-name",
        "198.51.100.5",
        "--cert-name",
        "dir.example",
        "-o",
        "json",
        env={},
    )
    assert init.returncode == 0, init.stderr
    files = json.loads(init.stdout)[0]
    assert files["ca file"] == str(folder / "ca.crt")
    assert files["url"] == "https://198.51.100.5:7480"
    cert = x509.load_pem_x509_certificate((folder / "directory.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("198.51.100.5")]
    assert names.get_values_for_type(x509.DNSName) == ["dir.example"]
    for key in ("ca.key", "directory.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600
    assert (
        '[tls]\ncert_file = "directory.crt"\nkey_file = "directory.key"'
        in (folder / "directory.toml").read_text()
    )
