"""Fuzz every operation of the running directory from its own OpenAPI document (schemathesis,
every check): first as a server acting for a tenant (the only caller that reaches node
publishing and moves; its pool is all of IPv4, so any IPv4 locator passes the pool check and
the rules behind it are reached), then as the operator (who may delete what the first run
needs), the paths pointed at records that exist.

One operation-scoped allowance, and why: "schema-valid data is accepted" also takes 422 from
`create_network` and `enroll_server`, whose documented 422 includes arithmetic between values
that JSON Schema cannot state (the gateway is a host address of the cidr, the cidr has no
host bits set, a pool range does not end before it starts, two pools do not overlap). Every
other rule is in the schema, and every other operation answers schema-valid data with no 422
(what only the stored records decide is a 404 or 409; docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

from federation.client import DirectoryClient
from federation.config import StorageConfig
from nvi.core.tls import client_context
from nvi.lab.directories import Credentials, ServiceProcess, http_json, write_config
from tests.conftest import REPO

pytest_plugins = ["integration.directory_fixtures"]

POSITIVE = '["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422"]'
CONFIG = f"""
[parameters]
tenant = "acme"
network = "net"
server = "s1"

[[operations]]
include-operation-id = ["create_network", "enroll_server"]
checks.positive_data_acceptance.expected-statuses = {POSITIVE}
"""


def fuzz(process: ServiceProcess, config: Path, headers: list[str]) -> str:
    """Run schemathesis with every check; the report, asserting it found nothing."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    arguments = [arg for header in headers for arg in ("--header", header)]
    run = subprocess.run(
        [
            st,
            "--config-file",
            str(config),
            "run",
            f"{process.url}/v1/openapi.json",
            "--tls-verify",
            str(process.ca_file),
            *arguments,
            "--checks",
            "all",
            "--max-examples",
            "20",
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    report = run.stdout[-8000:]
    assert run.returncode == 0, report
    return report


async def acme_with_a_server(process: ServiceProcess, credentials: Credentials) -> tuple[str, str]:
    """Tenant acme with network net, and server s1 holding every IPv4 locator: (its
    credential, acme's token)."""
    async with DirectoryClient(process.url, credentials.admin, ca_file=process.ca_file) as admin:
        await admin.create_tenant("acme")
        await admin.create_network("acme", "net", "10.0.0.0/24")
        token = (await admin.create_token("acme", "fuzz")).token
        server = (await admin.enroll_server("s1", ["0.0.0.0/0"])).token
    return server, token


def test_fuzzing_the_api_finds_no_server_error_and_no_schema_disagreement(tmp_path: Path) -> None:
    credentials = Credentials()
    storage = StorageConfig(backend="sqlite", path=tmp_path / "directory.db")
    config = tmp_path / "directory.toml"
    port = write_config(config, credentials, storage, max_wait=0.2)
    process = ServiceProcess(config, port)
    fuzz_config = tmp_path / "schemathesis.toml"
    fuzz_config.write_text(CONFIG)
    process.start()
    try:
        server, tenant_token = asyncio.run(acme_with_a_server(process, credentials))
        as_server = fuzz(
            process,
            fuzz_config,
            [f"Authorization: Bearer {server}", f"X-Tenant-Token: {tenant_token}"],
        )
        as_operator = fuzz(process, fuzz_config, [f"Authorization: Bearer {credentials.admin}"])
    finally:
        process.stop()
    shipped = json.loads((Path(__file__).parents[2] / "docs/api/directory.json").read_text())
    operations = sum(len(path) for path in shipped["paths"].values())
    for report in (as_operator, as_server):
        assert f"{operations}/{operations}" in report and f"Tested: {operations}" in report, report
    log = config.with_suffix(".log").read_text()
    assert "unexpected failure" not in log, log[-3000:]  # the service's own 500 path


def test_the_running_directory_answers_the_shipped_document(
    service_process: tuple[ServiceProcess, Credentials],
) -> None:
    """docs/api/directory.json is what a real directory serves, but for `servers` (its URL)."""
    process, _ = service_process
    process.start()
    live = http_json(f"{process.url}/v1/openapi.json", client_context(process.ca_file))
    assert live is not None
    assert live.pop("servers") == [{"url": process.url}]
    shipped = json.loads((REPO / "docs" / "api" / "directory.json").read_text())
    shipped.pop("servers")
    assert live == shipped, "docs/api/directory.json is stale: regenerate it with scripts/openapi"
