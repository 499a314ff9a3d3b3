"""The agent's OpenAPI document, checked against a real agent over its HTTPS listener (in the
server's namespace, with the real directory, Docker engine and OVS behind it): it serves
docs/api/agent.json, and schemathesis with every check finds nothing, once as a tenant with
its own token and once as the server's operator acting for that tenant (X-Tenant-Token).

One operation-scoped allowance, as the directory's fuzz test has: "schema-valid data is
accepted" also takes 422 from `create_node` and `publish_ports`, whose published ports must
name each host port and protocol once. JSON Schema's `uniqueItems` compares whole items, so
two items with one host port and different node ports pass the schema; the rule between
items is the documented 422 (docs/decisions.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from nvi.core.tls import client_context
from tests.conftest import REPO
from tests.integration.hostagent_fixtures import Site

pytest_plugins = ["tests.integration.hostagent_fixtures"]
pytestmark = pytest.mark.root

POSITIVE = '["2xx", "3xx", "401", "403", "404", "409", "429", "5xx", "422"]'
CONFIG = f"""
[parameters]
tenant = "acme"
network = "web"

[[operations]]
include-operation-id = ["create_node", "publish_ports"]
checks.positive_data_acceptance.expected-statuses = {POSITIVE}
"""


def test_the_running_agent_answers_the_shipped_document(site: Site) -> None:
    """As served, but for `servers` (the agent's own URL)."""

    async def fetch() -> dict:
        context = client_context(site.config.directory.ca_file)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{site.url}/v1/openapi.json", ssl=context) as answer:
                return await answer.json()

    live = site.over_tcp(fetch)
    assert live.pop("servers") == [{"url": site.url}]
    shipped = json.loads((REPO / "docs" / "api" / "agent.json").read_text())
    shipped.pop("servers")
    assert live == shipped, "docs/api/agent.json is stale: regenerate it with scripts/openapi"


def fuzz(site: Site, config: Path, headers: list[str]) -> str:
    """Schemathesis with every check, run in the server's namespace; its report."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    arguments = [arg for header in headers for arg in ("--header", header)]
    run = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            site.ns,
            st,
            "--config-file",
            str(config),
            "run",
            f"{site.url}/v1/openapi.json",
            "--tls-verify",
            str(site.config.directory.ca_file),
            *arguments,
            "--checks",
            "all",
            "--max-examples",
            "10",
            "--seed",
            "1",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = run.stdout[-8000:]
    assert run.returncode == 0, report
    return report


def test_fuzzing_the_agent_finds_no_server_error_and_no_schema_disagreement(
    clean: Site, tmp_path: Path
) -> None:
    site = clean
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    operations = len(
        [
            op
            for ops in json.loads((REPO / "docs/api/agent.json").read_text())["paths"].values()
            for op in ops
        ]
    )
    as_tenant = fuzz(site, config, [f"Authorization: Bearer {site.acme.token}"])
    as_operator = fuzz(
        site,
        config,
        [f"Authorization: Bearer {site.operator_token}", f"X-Tenant-Token: {site.acme.token}"],
    )
    for report in (as_tenant, as_operator):
        assert f"Tested: {operations}" in report, report
    assert "unexpected failure" not in site.agent.log.read_text()  # the agent's own 500 path
