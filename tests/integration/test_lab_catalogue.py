"""The lab's catalogue, from this machine's root namespace through the access link: every
lab agent is listed alive with its cloud; a tenant, with its token from the lab's
client.toml and the lab's CA, reaches an agent at the URL the catalogue gives and creates a
node there, then with only the profile and the `nvi` command places, watches and deletes a
VM; and after all that work no server ever read (or tried to read) the catalogue.
`lab up` again changes nothing; `lab down` removes the access link."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyroute2 import IPRoute

from federation.models import CatalogueEntry
from hostagent.client import AgentClient
from nvi.core.tls import client_context
from nvi.lab import access
from nvi.lab.nodes import tenant_token, with_directory
from nvi.lab.populate import token_path
from nvi.lab.spec import parse_lab
from tests.conftest import example_lab_text, readdressed
from tests.integration.hostagent_fixtures import setup_vm
from tests.integration.test_dataplane import running_lab

pytestmark = pytest.mark.root


async def _get(url: str, ca_file: Path, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=client_context(ca_file))
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, await response.text()


def catalogue(profile: dict) -> list[CatalogueEntry]:
    """Read as the profile's holder, from here (the root namespace), as the CLI would."""
    token = Path(profile["token_file"]).read_text().strip()
    status, body = asyncio.run(
        _get(profile["directory"][0] + "/v1/catalogue", Path(profile["ca_file"]), token)
    )
    assert status == 200, body
    return [CatalogueEntry.model_validate(e) for e in json.loads(body)]


def directory_metrics(url: str, ca_file: Path) -> dict[tuple[str, tuple], float]:
    status, text = asyncio.run(_get(url + "/metrics", ca_file))
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def nvi(env: dict[str, str], *args: str) -> Any:
    """`nvi ARGS` from this machine as the profile's holder; the JSON it prints, if any."""
    done = subprocess.run(
        [sys.executable, "-m", "nvi", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "-o" in args else None


def root_routes_via(link: str) -> list[str]:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=link)
        if not found:
            return []
        return sorted(
            f"{r.get_attr('RTA_DST')}/{r['dst_len']}"
            for r in ipr.get_routes(family=2, table=254)
            if r.get_attr("RTA_OIF") == found[0] and r.get_attr("RTA_GATEWAY")
        )


def test_users_reach_the_lab_catalogue_and_agents_from_this_machine(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    setup_vm()  # the lab's agents run VMs when the machine can (a fresh CI machine: now)
    own = parse_lab(tomllib.loads(readdressed(example_lab_text("x"), "198.18.1", "198.18.2")))
    addresses = {key: getattr(own, key) for key in ("clouds", "routers", "servers", "directory")}
    with running_lab(tmp_path_factory, **addresses) as net:
        link = net.access
        assert link is not None and access.state(link) is not None
        # Host routes to the directory and the agents only, never the clouds' whole subnets.
        public = ["198.18.1.2", "198.18.1.11", "198.18.1.12", "198.18.2.13"]
        assert root_routes_via(link.root_end) == sorted(f"{ip}/32" for ip in public)
        assert access.routed(link) == root_routes_via(link.root_end)

        async def tenant(client) -> str:  # noqa: ANN001
            await client.create_tenant("red")
            await client.create_network("red", "net", "10.0.0.0/24")
            return await tenant_token(net, client, "red")

        token = with_directory(net, tenant)
        profiles = tomllib.loads(net.client_config.read_text())
        red = profiles["profiles"][f"{net.lab.name}-red"]
        admin = profiles["profiles"][f"{net.lab.name}-admin"]
        assert profiles["default"] == f"{net.lab.name}-red"
        assert Path(red["token_file"]) == token_path(net, "red")
        assert Path(red["token_file"]).read_text().strip() == token
        assert stat.S_IMODE(Path(red["token_file"]).stat().st_mode) == 0o600
        assert red["directory"] == admin["directory"] == [net.lab.directory.url]
        assert Path(red["ca_file"]) == net.ca_file

        deadline = time.monotonic() + 20
        while not (entries := catalogue(red)) or not all(e.alive for e in entries):
            assert time.monotonic() < deadline, entries
            time.sleep(0.2)
        assert {(e.server, e.cloud, e.agent_url) for e in entries} == {
            (s.name, s.cloud, f"https://{s.address}:7490") for s in net.lab.servers
        }
        assert [e.server for e in catalogue(admin)] == ["s1", "s2", "s3"]

        s3 = next(e for e in entries if e.server == "s3")  # across the router, in cloud west

        async def use_agent() -> list[str]:
            async with AgentClient(s3.agent_url, tenant_token=token, ca_file=net.ca_file) as agent:
                node = await agent.create(name="web", tenant="red", network="net")
                assert node.ready or node.phase == "ready"
                return [n.name for n in await agent.list()]

        assert asyncio.run(use_agent()) == ["web"]
        records = with_directory(net, lambda client: client.list_nodes("red"))
        assert [(n.name, n.server) for n in records] == [("web", "s3")]

        after = catalogue(red)
        s3_after = next(e for e in after if e.server == "s3")
        assert s3_after.free.locators == s3.free.locators - 1

        # A VM, with nothing but the profile: placed in cloud west, watched until it has
        # booted, listed with its live state, deleted with its record.
        env = {
            **os.environ,
            "NVI_CONFIG": str(net.client_config),
            "NVI_PROFILE": f"{net.lab.name}-red",
        }
        create = ["node", "create", "vm1", "-n", "net", "--kind", "vm", "--memory", "192"]
        created = nvi(env, *create, "--cloud", "west", "-o", "json")
        assert [(n["name"], n["server"], n["ready"]) for n in created] == [("vm1", "s3", True)]
        listed = {n["name"]: n for n in nvi(env, "node", "list", "-o", "json")}
        assert set(listed) == {"web", "vm1"}
        assert (listed["vm1"]["kind"], listed["vm1"]["state"]) == ("vm", "running")
        assert "locator" not in listed["vm1"]
        nvi(env, "node", "delete", "vm1")
        records = with_directory(net, lambda client: client.list_nodes("red"))
        assert [n.name for n in records] == ["web"]

        counted = directory_metrics(net.lab.directory.url, net.ca_file)
        assert counted[("nvi_directory_catalogue_reads_total", (("role", "server"),))] == 0
        assert counted[("nvi_directory_catalogue_refused_total", ())] == 0
        assert counted[("nvi_directory_catalogue_reads_total", (("role", "tenant"),))] >= 2
        # The servers did work: published with the tenant's token, followed changes, renewed.
        assert counted[("nvi_directory_catalogue_announcements_total", (("kind", "new"),))] >= 3
        assert counted[("nvi_directory_catalogue_announcements_total", (("kind", "renewal"),))]
        published = ("nvi_http_requests_total", (("method", "POST"), ("route", "/v1/tenants/{tenant}/nodes"), ("status", "201")))  # fmt: skip
        assert counted[published] == 2  # web and vm1, each published once

        assert net.up() == []  # the access link, certificates and agents are all in place
    assert access.state(link) is None
    assert root_routes_via(link.root_end) == []
